"""`mlcbuild build --check`: rebuild cached nodes in scratch space, compare with the cache byte
for byte, exit 1 naming the file when a step is not reproducible; the cache and dist stay untouched."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mlcbuild.execute.check import FileDifference, compare_outputs, first_difference
from mlcbuild.store.cas import Store

try:
    from test_build import mlcbuild, write_recipe
except ImportError:
    from tests.test_build import mlcbuild, write_recipe

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "recipes" / "models" / "tiny-redpajama"

NONDETERMINISTIC_DRIVER = '''
"""mlcbuild with a gen-config step that stamps the time into its output (a classic reproducibility bug).
Registered by import path, so the step's child process (which imports this file as a module) runs it too."""
import time

import mlcbuild.steps as steps
from mlcbuild.steps.gen_config import GenConfigStep


class StampingGenConfig(GenConfigStep):
    def run(self, ctx):
        super().run(ctx)
        (ctx.out / "build-stamp.txt").write_text(f"built at {time.time_ns()}\\n")

    def declares(self, params, rel):
        return rel == "build-stamp.txt" or super().declares(params, rel)


steps.register_step("gen-config", "stamping_mlcbuild:StampingGenConfig")

if __name__ == "__main__":
    import sys

    from mlcbuild.cli.main import main

    sys.exit(main())
'''


def built_from_shared_cache(cache: Path, tmp_path: Path) -> SimpleNamespace:
    """conftest's `cache` (a private copy of the shared cache: the tiny q0f32 llvm recipe, built once
    per session) and the same recipe materialized from it into a fresh dist: no step runs."""
    recipe = write_recipe(tmp_path / "r")
    done = mlcbuild("build", str(recipe), cache=cache)
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    return SimpleNamespace(recipe=recipe, cache=cache, dist=recipe.parent / "dist", run=lambda *a: mlcbuild(*a, cache=cache))


def run(cache: Path, *args: str, driver: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(driver)] if driver else [sys.executable, "-m", "mlcbuild"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder with (size, mtime_ns): what --check must leave exactly as it was."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_check_passes_on_the_tiny_recipe_and_touches_nothing(cache: Path, tmp_path: Path) -> None:
    built = built_from_shared_cache(cache, tmp_path)
    before_cache, before_dist = snapshot(built.cache), snapshot(built.dist)
    checked = built.run("build", str(built.recipe), "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert all(line.startswith("same: ") for line in lines[:-1]) and len(lines) >= 5, checked.stdout
    assert "same: compile tiny q0f32 llvm (1 file identical" in checked.stdout
    assert "same: convert tiny q0f32 (2 files identical" in checked.stdout
    assert lines[-1] == f"check: {len(lines) - 1} identical, 0 differ, 0 not cached, 0 failed"
    assert snapshot(built.cache) == before_cache
    assert snapshot(built.dist) == before_dist


def test_check_fails_naming_the_file_of_a_nondeterministic_step(tmp_path: Path) -> None:
    driver = tmp_path / "stamping_mlcbuild.py"
    driver.write_text(NONDETERMINISTIC_DRIVER)
    cache = tmp_path / "cache"
    recipe = tmp_path / "r" / "recipe.yaml"
    recipe.parent.mkdir()
    shutil.copytree(DEMO_MODEL, recipe.parent / "model")
    recipe.write_text(yaml.safe_dump({
        "name": "tiny",
        "source": {"path": "model"},
        "quantizations": ["q0f32", "q4f16_1"],
        "targets": ["llvm"],
        "conv_template": "redpajama_chat",
        "output": "dist",
    }))

    never_built = run(cache, "build", str(recipe), "--check", "--only", "gen-config", driver=driver)
    assert never_built.returncode == 1
    assert "NOT CHECKED: gen-config tiny q0f32: not in the cache: build it first" in never_built.stdout

    built = run(cache, "build", str(recipe), "--only", "gen-config", driver=driver)
    assert built.returncode == 0, built.stderr + built.stdout
    assert list(cache.glob("ac/*/*.json"))
    checked = run(cache, "build", str(recipe), "--check", "--only", "gen-config", "-q", "q0f32", driver=driver)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == f"DIFFERS: gen-config tiny q0f32 (key {lines[0].split('key ')[1][:12]})"
    match = re.fullmatch(r"  build-stamp\.txt: (\d+) bytes, first difference at byte (\d+) \(0x[0-9a-f]+\)", lines[1])
    assert match and 9 <= int(match.group(2)) < int(match.group(1)), lines
    assert "q4f16_1" not in checked.stdout and "mlc-chat-config.json" not in checked.stdout
    assert lines[-1] == "check: 0 identical, 1 differ, 0 not cached, 0 failed"

    honest = run(cache, "build", str(recipe), "--check", "--only", "local model (config")
    assert honest.returncode == 0 and honest.stdout.startswith("same: local model (config, tokenizer)"), honest.stdout

    unknown = run(cache, "build", str(recipe), "--check", "--only", "no-such-node")
    assert unknown.returncode == 2 and "--only: unknown cell 'no-such-node'" in unknown.stderr


def test_difference_in_a_shared_library_names_its_section(tmp_path: Path) -> None:
    """A real ELF file (this Python's binary) with one byte flipped in .text."""
    from mlcbuild.compiler.elf import sections

    original = Path(os.path.realpath(sys.executable)).read_bytes()
    text = next(s for s in sections(original) if s.name == ".text")
    flipped = bytearray(original)
    where = text.offset + text.size // 2
    flipped[where] ^= 0xFF
    store = Store(tmp_path / "cache")
    src = tmp_path / "src"
    src.mkdir()
    (src / "lib.so").write_bytes(original)
    (src / "same.txt").write_text("same")
    manifest = store.put_dir(src)
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    (rebuilt / "lib.so").write_bytes(bytes(flipped))
    (rebuilt / "same.txt").write_text("same")
    (rebuilt / "extra.bin").write_bytes(b"x")
    diffs = compare_outputs(store, manifest, rebuilt)
    assert diffs == [
        FileDifference("extra.bin", None, 1),
        FileDifference("lib.so", len(original), len(original), where, ".text"),
    ]
    assert f"first difference at byte {where} (0x{where:x}, section .text)" in diffs[1].describe()
    assert first_difference(src / "same.txt", rebuilt / "same.txt") is None
