"""Files mlcbuild reads but does not fully control (an output folder's `.mlcbuild-placed.json`, the
no-op stamps in the cache) are parsed with a size and depth bound: a deeply nested one is no record
or no stamp, never a RecursionError (exit 70)."""
from __future__ import annotations

from pathlib import Path

from mlcbuild.execute import noop
from mlcbuild.store.placed import RECORD, Placed
from test_build import write_recipe

DEEP = b"[" * 200_000 + b"]" * 200_000


def test_a_deeply_nested_placed_record_is_no_record(tmp_path: Path, capsys) -> None:
    from mlcbuild.cli.main import main

    recipe = write_recipe(tmp_path / "r")
    stale = tmp_path / "r" / "dist" / "tiny-q4f16_1-MLC"  # a quantization the recipe no longer has
    stale.mkdir(parents=True)
    (stale / RECORD).write_bytes(DEEP)
    (stale / "params_shard_0.bin").write_bytes(b"w")
    assert Placed.load(stale).entries == {}
    assert main(["--cache-dir", str(tmp_path / "cache"), "clean", str(recipe)]) == 0
    captured = capsys.readouterr()
    assert "internal error" not in captured.err and (stale / "params_shard_0.bin").exists(), captured


def test_a_deeply_nested_noop_stamp_is_a_miss(tmp_path: Path) -> None:
    command = {"command": "build", "recipes": [str(tmp_path / "r.yaml")]}
    stamp = noop._stamp_file(tmp_path, command)
    stamp.parent.mkdir(parents=True)
    stamp.write_bytes(DEEP)
    assert noop.up_to_date(tmp_path, command) is None and noop.saved_plan(tmp_path, command) is None
    stamp.write_bytes(b"[1]")  # JSON, but not a stamp
    assert noop.up_to_date(tmp_path, command) is None
    assert noop.prune(tmp_path) == 1 and not stamp.exists()
