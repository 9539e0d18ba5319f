"""A weight folder in MLC's own published layout runs in mlcbuild, token for token as our conversion.

MLC-published folders (e.g. the `*-MLC` repos WebLLM downloads) differ from what convert writes in
ways a loader must honour: float32 tensors stored `f32-to-bf16` (bf16 bits, the record still says
float32), the index named `ndarray-cache.json` (folders converted before late 2025), and MLC's own
mlc-chat-config.json. The fixture is written by TVM's `dump_tensor_cache` (what MLC's convert calls),
from a checkpoint whose float32 weights are bf16-exact, so both folders hold the same numbers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from tiny_models import make_tiny_llama
except ImportError:
    from tests.tiny_models import make_tiny_llama

PROMPT = "w5 w17 w99 w3"


def _word_tokenizer(folder: Path, vocab: int = 256) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


def _bf16_exact_checkpoint(path: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    make_tiny_llama(path, seed=11)
    weights = load_file(str(path / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).to(torch.float32) for k, v in weights.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    _word_tokenizer(path)
    return path


def _mlc_published(ours: Path, dest: Path) -> Path:
    """`ours` rewritten as MLC publishes it: f32-to-bf16 records, ndarray-cache.json, MLC's config."""
    from tvm.contrib import tvmjs

    from mlcbuild.artifact.tensor_cache import TensorCacheIndex

    index = TensorCacheIndex.read(ours)
    arrays = index.to_numpy()
    dest.mkdir(parents=True)
    tvmjs.dump_tensor_cache(((name, arrays[name]) for name in index.records), str(dest), encode_format="f32-to-bf16", show_progress=False)
    (dest / "tensor-cache.json").rename(dest / "ndarray-cache.json")
    config = json.loads((ours / "mlc-chat-config.json").read_text())
    config.pop("active_vocab_size", None)
    config["model_task"] = "chat"
    config["conv_template"] = {**config["conv_template"], "function_string": "", "use_function_calling": False}
    (dest / "mlc-chat-config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(ours / "tokenizer.json", dest / "tokenizer.json")
    return dest


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from mlcbuild.compiler.build import build_model_lib
    from mlcbuild.compiler.pipeline import CompileOptions
    from mlcbuild.steps.convert import convert_checkpoint
    from mlcbuild.steps.gen_config import build_config
    from mlcbuild.targets import resolve_target

    root = tmp_path_factory.mktemp("mlc-published")
    hf = _bf16_exact_checkpoint(root / "hf")
    ours = root / "ours"
    ours.mkdir()
    convert_checkpoint(hf, ours, "q0f32")
    params = {"quantization": "q0f32", "conv_template": "LM", "model_type": "llama", "overrides": {"context_window_size": 128, "prefill_chunk_size": 16}}
    (ours / "mlc-chat-config.json").write_bytes(build_config(hf, ours, params).dumps())
    lib = build_model_lib(json.loads((ours / "mlc-chat-config.json").read_text()), resolve_target("llvm", None), CompileOptions(), root / "lib").path
    return ours, _mlc_published(ours, root / "mlc"), lib


@pytest.mark.slow
def test_mlc_layout_is_what_mlc_writes(folders: tuple[Path, Path, Path]) -> None:
    _, mlc, _ = folders
    index = json.loads((mlc / "ndarray-cache.json").read_text())
    records = [r for shard in index["records"] for r in shard["records"]]
    assert not (mlc / "tensor-cache.json").exists()
    assert records and {r["format"] for r in records if r["dtype"] == "float32"} == {"f32-to-bf16"}
    assert all(r["nbytes"] == 2 * int(np.prod(r["shape"])) for r in records if r["dtype"] == "float32")


@pytest.mark.slow
def test_mlc_published_folder_gives_the_same_tokens(folders: tuple[Path, Path, Path]) -> None:
    from mlcbuild.runtime.engine import Engine
    from mlcbuild.runtime.sampling import SamplingParams

    ours, mlc, lib = folders
    greedy = SamplingParams(temperature=0.0)
    prompt = [5, 17, 99, 3]
    want = list(Engine.load(ours, lib).generate_tokens(prompt, 16, greedy, stop=False))
    engine = Engine.load(mlc, lib)
    assert list(engine.generate_tokens(prompt, 16, greedy, stop=False)) == want
    np.testing.assert_array_equal(engine.logits_for(prompt, want[:4]), Engine.load(ours, lib).logits_for(prompt, want[:4]))


@pytest.mark.slow
def test_mlcbuild_run_loads_an_mlc_published_folder(folders: tuple[Path, Path, Path]) -> None:
    ours, mlc, lib = folders
    env = {**os.environ, "COLUMNS": "200"}

    def run(folder: Path) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "mlcbuild", "run", str(folder), "--model-lib", str(lib), "--raw", "--temperature", "0", "--max-tokens", "12", "--prompt", PROMPT]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)

    got, want = run(mlc), run(ours)
    assert got.returncode == 0, got.stderr
    assert want.returncode == 0, want.stderr
    assert got.stdout == want.stdout and got.stdout.strip()
