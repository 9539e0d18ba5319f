"""`run`/`chat`/`serve` given the wrong kind of path: recognised, and one line naming what to pass."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.runtime.spec import resolve_spec

ROOT = Path(__file__).resolve().parent.parent


def built(dist: Path, *names: str) -> None:
    for name in names:
        (dist / f"{name}-MLC").mkdir(parents=True)
        (dist / f"{name}-MLC" / "mlc-chat-config.json").write_text("{}")
    (dist / "libs").mkdir(parents=True, exist_ok=True)


def test_a_library_beside_its_one_model_folder_loads_both(tmp_path: Path) -> None:
    built(tmp_path, "tiny-q0f32", "tiny-q4f16_1")
    lib = tmp_path / "libs" / "tiny-q4f16_1-llvm-x86_64.so"
    lib.write_bytes(b"\x7fELF")
    spec = resolve_spec(lib)
    assert (spec.model_dir, spec.model_lib, spec.recipe) == (tmp_path / "tiny-q4f16_1-MLC", lib, None)


def test_a_library_alone_names_model_dir_and_model_lib(tmp_path: Path) -> None:
    lib = tmp_path / "x.so"
    lib.write_bytes(b"\x7fELF" + bytes(1000))
    with pytest.raises(UserError, match=r"x.so is a model library; .*MODEL_DIR --model-lib"):
        resolve_spec(lib)


def test_the_chat_config_is_its_model_folder(tmp_path: Path) -> None:
    built(tmp_path, "m-q0f32")
    config = tmp_path / "m-q0f32-MLC" / "mlc-chat-config.json"
    assert resolve_spec(config).model_dir == config.parent


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: (p / "lib.wasm").write_bytes(b"\0asm") and p / "lib.wasm", "WebGPU library"),
        (lambda p: (p / "c.json").write_text("{}") and p / "c.json", "JSON file, not a recipe"),
        (lambda p: (p / "hf").mkdir() or (p / "hf" / "config.json").write_text("{}") and p / "hf", "Hugging Face checkpoint.*mlcbuild init"),
        (lambda p: "mlc-ai/Llama-3-8B-Instruct-q4f16_1-MLC", "Hugging Face repo id.*mlcbuild init mlc-ai/"),
    ],
)
def test_other_paths_say_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=expected):
        resolve_spec(make(tmp_path))


def test_run_with_a_library_is_one_line_exit_2(tmp_path: Path) -> None:
    lib = tmp_path / "model.so"
    lib.write_bytes(os.urandom(4096))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLCBUILD_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "mlcbuild", "run", str(lib)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "is a model library" in out.stderr and "bytes" not in out.stderr
