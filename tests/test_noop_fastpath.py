"""The stat-only no-op (execute/noop.py): taken only when nothing a build stood on moved."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_build import mlcbuild, write_recipe

FAST = "(stat check)"

SETTLED = "import mlcbuild.execute.noop as noop\nnoop.RACY_WINDOW_NS = 0\n"
"""Run as if RACY_WINDOW_NS had passed since the last write (instead of sleeping 2 s): files written
within the window are not trusted by their stat, and back-dating them with os.utime would move
their ctime, which the cache's and the output folder's stat records hold."""


def settled_build(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """`mlcbuild build ...` once the racy window of everything written before has passed."""
    code = SETTLED + f"from mlcbuild.cli.main import main\nraise SystemExit(main(['build', *{list(args)!r}]))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "200"}, timeout=900)


def built(tmp_path: Path, cache: Path) -> Path:
    recipe = write_recipe(tmp_path / "r")
    assert mlcbuild("build", str(recipe), cache=cache).returncode == 0
    second = settled_build(str(recipe), cache=cache)
    assert second.returncode == 0 and FAST not in second.stdout, second.stdout  # the first wrote no stamp; this one does
    return recipe


def test_noop_after_a_stamped_build_plans_nothing(tmp_path: Path, cache: Path) -> None:
    recipe = built(tmp_path, cache)
    probe = (
        "import sys\n"
        "from mlcbuild.cli.main import main\n"
        f"code = main(['--cache-dir', {str(cache)!r}, 'build', {str(recipe)!r}])\n"
        "assert code == 0, code\n"
        "heavy = ('mlcbuild.plan', 'mlcbuild.recipe', 'mlcbuild.store.cas', 'yaml', 'rich', 'tvm', 'multiprocessing')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "MLCBUILD_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert FAST in result.stdout and result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_anything_that_moved_takes_the_full_build(tmp_path: Path, cache: Path) -> None:
    recipe = built(tmp_path, cache)
    dist = tmp_path / "r" / "dist"
    config = dist / "tiny-q0f32-MLC" / "mlc-chat-config.json"
    good = config.read_bytes()

    config.write_bytes(b"{}")  # an edited output is restored
    again = mlcbuild("build", str(recipe), cache=cache)
    assert again.returncode == 0 and FAST not in again.stdout and config.read_bytes() == good

    (tmp_path / "r" / "model" / "notes.txt").write_text("new file in the source folder")
    assert FAST not in mlcbuild("build", str(recipe), cache=cache).stdout

    write_recipe(tmp_path / "r", conv_template="chatml")  # a recipe edit reaches gen-config
    changed = mlcbuild("build", str(recipe), cache=cache)
    assert changed.returncode == 0 and "built gen-config" in changed.stderr, changed.stderr

    assert FAST not in settled_build(str(recipe), cache=cache).stdout  # writes a new stamp
    assert FAST in mlcbuild("build", str(recipe), cache=cache).stdout
    assert FAST not in mlcbuild("build", str(recipe), "-q", "q0f32", cache=cache).stdout  # another command
    assert FAST not in mlcbuild("build", str(recipe), "--force", cache=cache).stdout

    for result in cache.glob("ac/*/*.json"):
        result.unlink()  # results gone (gc): the build runs the steps again
        break
    assert FAST not in mlcbuild("build", str(recipe), cache=cache).stdout


def plan_in_process(cache: Path, recipe: Path, settled: bool = False) -> tuple[str, list[str]]:
    """`plan` run by main() in a fresh interpreter: its output and the heavy modules it imported
    (`settled`: as if the racy window had passed)."""
    probe = (
        (SETTLED if settled else "") + "import sys\n"
        "from mlcbuild.cli.main import main\n"
        f"code = main(['--cache-dir', {str(cache)!r}, 'plan', {str(recipe)!r}])\n"
        "assert code == 0, code\n"
        "heavy = ('mlcbuild.plan', 'mlcbuild.recipe', 'rich', 'tvm')\n"
        "print('\\x00' + repr(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text, _, modules = result.stdout.rpartition("\x00")
    return text, eval(modules)


def test_plan_of_an_unchanged_cached_graph_is_replayed_and_recomputed_when_anything_moves(tmp_path: Path, cache: Path) -> None:
    recipe = built(tmp_path, cache)
    first, imported = plan_in_process(cache, recipe, settled=True)
    assert "cached" in first and "to run" not in first and imported, first  # computed; stamped
    replayed, imported = plan_in_process(cache, recipe)
    assert replayed == first and imported == [], imported

    write_recipe(tmp_path / "r", conv_template="chatml")
    edited, imported = plan_in_process(cache, recipe)
    assert imported and "to run" in edited and "gen-config" in edited, edited
    pending, _ = plan_in_process(cache, recipe, settled=True)
    again, imported = plan_in_process(cache, recipe, settled=True)  # work to show: never replayed
    assert again == pending and imported


def test_cache_gc_removes_stamps_that_no_longer_hold(tmp_path: Path, cache: Path) -> None:
    shutil.rmtree(cache / "noop", ignore_errors=True)  # stamps other tests left in the shared cache
    built(tmp_path, cache)
    assert len(list((cache / "noop").glob("*.json"))) == 1
    kept = mlcbuild("cache", "gc", cache=cache)
    assert kept.returncode == 0 and "0 stale no-op stamps" in kept.stdout, kept.stdout
    assert len(list((cache / "noop").glob("*.json"))) == 1
    gone = mlcbuild("cache", "gc", "--older-than", "0", cache=cache)
    assert gone.returncode == 0 and "1 stale no-op stamps" in gone.stdout, gone.stdout
    assert not list((cache / "noop").glob("*.json"))
