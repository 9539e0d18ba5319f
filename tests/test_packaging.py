"""`pip install .` (not editable) gives a working mlcbuild: built-in targets ship as package data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "models" / "tiny-redpajama"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built into a wheel and installed (--no-deps) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT / "mlcbuild", src / "mlcbuild", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"), str(src)], check=True, timeout=300)
    wheel = next((tmp / "wheel").glob("mlcbuild-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True, timeout=300)
    return tmp / "site"


def _mlcbuild(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLCBUILD_TARGETS_DIR", "MLCBUILD_CACHE_DIR")}
    env.update(PYTHONPATH=str(site), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_has_its_targets_and_plans_a_recipe(installed: Path, tmp_path: Path) -> None:
    where = _mlcbuild(installed, tmp_path, "--version")
    assert where.returncode == 0, where.stderr
    located = subprocess.run(
        [sys.executable, "-c", "import mlcbuild.targets as t; print(t.BUILTIN_DIR)"],
        env={**os.environ, "PYTHONPATH": str(installed)}, cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(installed), "the test ran the source tree, not the wheel"

    targets = _mlcbuild(installed, tmp_path, "targets")
    assert targets.returncode == 0, targets.stderr
    assert "cuda" in targets.stdout and "llvm" in targets.stdout and "sm_90a" in targets.stdout
    assert "nvcc 13.0 (pinned)" in targets.stdout, targets.stdout

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: tiny\nsource: {{path: {TINY}}}\nquantizations: [q4f16_1]\ntargets: [cuda, llvm]\n"
        "conv_template: redpajama_chat\nmodel_type: gpt_neox\noverrides: {context_window_size: 512}\n"
    )
    planned = _mlcbuild(installed, tmp_path, "plan", str(recipe), "--cache-dir", str(tmp_path / "cache"))
    assert planned.returncode == 0, planned.stderr
    assert "compile tiny q4f16_1 cuda" in planned.stdout and "compile tiny q4f16_1 llvm" in planned.stdout


def test_a_targets_folder_adds_and_overrides(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "mycpu.yaml").write_text(
        "name: mycpu\ndescription: my own CPU target\ntvm_target: {kind: llvm, mcpu: generic}\nhost: null\nsuffix: so\n"
    )
    (tmp_path / "targets" / "cuda.yaml").write_text(
        "name: cuda\ntvm_target: {kind: cuda}\nsuffix: so\ndefault_variant: sm_75\nvariants: {sm_75: {arch: sm_75}}\n"
    )
    listed = _mlcbuild(installed, tmp_path, "targets")
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    assert "mycpu" in text and "sm_75" in text and "sm_90a" not in text and "metal" in text
