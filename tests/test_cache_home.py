"""Where the cache lives: --cache-dir / $MLCBUILD_CACHE_DIR, else the recipe's project cache (the
nearest .mlcbuild or .git above it), else ${XDG_CACHE_HOME:-~/.cache}/mlcbuild."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.store import cache_home

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("MLCBUILD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_project_marker_above_the_recipe_picks_its_cache(no_env: Path) -> None:
    project = no_env / "proj"
    (project / ".mlcbuild").mkdir(parents=True)
    (project / "recipes" / "deep").mkdir(parents=True)
    home = cache_home([project / "recipes" / "deep" / "r.yaml"])
    assert home.path == project / "cache" and ".mlcbuild" in home.why


def test_no_marker_is_the_user_cache_and_the_env_wins(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_env / "loose").mkdir()
    assert cache_home([no_env / "loose" / "r.yaml"]).path == no_env / "xdg" / "mlcbuild"
    monkeypatch.setenv("MLCBUILD_CACHE_DIR", str(no_env / "mine"))
    assert cache_home([no_env / "loose" / "r.yaml"]).path == no_env / "mine"


def test_recipes_of_two_projects_are_one_line_asking_for_cache_dir(no_env: Path) -> None:
    for name in ("a", "b"):
        (no_env / name / ".git").mkdir(parents=True)
    with pytest.raises(UserError, match="different caches.*--cache-dir"):
        cache_home([no_env / "a" / "r.yaml", no_env / "b" / "r.yaml"])


def _cli(*args: str, cwd: Path, xdg: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(xdg), "COLUMNS": "200"}
    env.pop("MLCBUILD_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_build_from_another_folder_reuses_the_projects_cache(tmp_path: Path) -> None:
    """The same recipe built from its project and from an unrelated folder: one cache, the second all cached."""
    try:
        from test_build import write_recipe
    except ImportError:
        from tests.test_build import write_recipe

    project = tmp_path / "proj"
    (project / ".mlcbuild").mkdir(parents=True)
    recipe = write_recipe(project / "recipes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = _cli("build", "recipes/recipe.yaml", "--only", "weights", cwd=project, xdg=tmp_path / "xdg")
    assert first.returncode == 0, first.stderr
    assert f"cache: {project / 'cache'}" in first.stderr
    assert (project / "cache" / ".gitignore").read_text().endswith("\n*\n")  # git never sees a cache it made
    second = _cli("build", str(recipe), "--only", "weights", cwd=elsewhere, xdg=tmp_path / "xdg")
    assert second.returncode == 0 and second.stdout.startswith("up to date"), second.stdout + second.stderr
    plan = _cli("plan", str(recipe), "--only", "weights", cwd=elsewhere, xdg=tmp_path / "xdg")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith(f"cache: {project / 'cache'} (project cache of {project} (has .mlcbuild))")
    rows = [line for line in plan.stdout.splitlines() if "tiny" in line]
    assert rows and all(" cached " in line for line in rows), plan.stdout
    assert not (elsewhere / "cache").exists() and not (tmp_path / "xdg" / "mlcbuild" / "ac").exists()
