"""The command line itself: --version, help, option placement, argument checks (no compile)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlcbuild

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo.yaml"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLCBUILD_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=120
    )


def test_version_matches_the_package_metadata() -> None:
    out = cli("--version")
    assert out.returncode == 0
    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and out.stdout.strip() == f"mlcbuild {declared.group(1)}" == f"mlcbuild {mlcbuild.__version__}"


def test_every_run_option_and_jobs_have_help() -> None:
    from mlcbuild.cli.main import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if name == "run" or action.dest == "jobs":
                assert action.help, f"mlcbuild {name} {action.option_strings or action.dest} has no help"
    text = cli("run", "--help").stdout
    for option in ("--prompt", "--max-tokens", "--temperature", "--top-p", "--seed", "--quant", "--target", "--device"):
        assert option in text
    assert "steps at once" in cli("build", "--help").stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_cache_dir_is_accepted_before_and_after_the_subcommand(tmp_path: Path, where: str) -> None:
    cache = tmp_path / f"cache-{where}"
    args = ["--cache-dir", str(cache)]
    out = cli(*args, "cache", "du") if where == "before" else cli("cache", "du", *args)
    assert out.returncode == 0, out.stderr
    assert f"in{cache};" in "".join(out.stdout.split())
    out = cli("plan", str(DEMO), *args)
    assert out.returncode == 0, out.stderr


def test_option_after_the_subcommand_does_not_erase_the_one_before(tmp_path: Path) -> None:
    from mlcbuild.cli.main import _parser

    args = _parser().parse_args(["--cache-dir", str(tmp_path), "--debug", "targets"])
    assert args.cache_dir == tmp_path and args.debug
    args = _parser().parse_args(["targets", "--cache-dir", str(tmp_path)])
    assert args.cache_dir == tmp_path and not args.debug


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-tokens", "-5"], "argument --max-tokens: must be ≥ 1, got -5"),
        (["--max-tokens", "lots"], "argument --max-tokens: expected a whole number, got 'lots'"),
        (["--temperature", "-1"], "argument --temperature: must be in [0, 2] (got -1)"),
        (["--temperature", "nan"], "argument --temperature: must be a finite number (got nan)"),
        (["--temperature", "inf"], "argument --temperature: must be a finite number (got inf)"),
        (["--top-p", "0"], "argument --top-p: must be in (0, 1] (got 0)"),
        (["--top-p", "1.5"], "argument --top-p: must be in (0, 1] (got 1.5)"),
    ],
)
def test_run_rejects_bad_numbers_in_one_line(args: list[str], message: str) -> None:
    out = cli("run", str(DEMO), *args)
    assert out.returncode == 2
    assert out.stderr.strip() == f"mlcbuild run: error: {message} (see `mlcbuild run --help`)"


def test_run_names_the_targets_a_recipe_has(tmp_path: Path) -> None:
    out = cli("run", str(DEMO), "-t", "cuda", "--cache-dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == f"mlcbuild: error: {DEMO}: targets: the recipe has no target cuda (it has: llvm)"
    out = cli("run", str(DEMO), "-t", "llvm:aarch64", "--cache-dir", str(tmp_path))
    assert "has no target llvm:aarch64 (it has: llvm)" in out.stderr


def test_run_before_a_build_says_to_build(tmp_path: Path) -> None:
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(DEMO.read_text().replace("path: models/tiny-talker", f"path: {ROOT / 'recipes/models/tiny-talker'}"))
    out = cli("run", str(recipe), "-t", "llvm:x86_64", "--cache-dir", str(tmp_path / "c"))
    assert out.returncode == 2
    assert "tiny-talker-q4f16_1-MLC does not exist; run `mlcbuild build" in out.stderr
