"""bench/decode.py's GGUF writer: llama.cpp must see the same model as transformers, or the
llama.cpp row of the decode benchmark compares against a different network."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.tiny_models import make_tiny_gpt_neox


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from bench.decode import write_gguf

    model = make_tiny_gpt_neox(tmp_path_factory.mktemp("neox") / "m")
    path = write_gguf(model)
    return model, {t.name: t for t in gguf.GGUFReader(str(path)).tensors}, gguf.GGUFReader(str(path))


def _dequantized(tensor) -> np.ndarray:
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def test_qkv_regrouped_from_per_head_to_llama_cpp_layout(written):
    model, tensors, _ = written
    cfg = json.loads((model / "config.json").read_text())
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    d = hidden // heads
    hf = load_file(str(model / "model.safetensors"))["gpt_neox.layers.1.attention.query_key_value.weight"]
    ours = _dequantized(tensors["blk.1.attn_qkv.weight"])
    assert tensors["blk.1.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert ours.shape == hf.shape
    per_head = hf.reshape(heads, 3, d, hidden)
    expected = np.concatenate([per_head[:, i].reshape(hidden, hidden) for i in range(3)])
    tolerance = np.abs(hf).max() / 7
    assert np.abs(ours - expected).max() < tolerance
    assert np.abs(ours - hf).max() > tolerance, "HF's per-head layout was written unchanged"
    bias = load_file(str(model / "model.safetensors"))["gpt_neox.layers.1.attention.query_key_value.bias"]
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.bias"].data, bias.reshape(heads, 3, d).transpose(1, 0, 2).reshape(-1))


def test_every_tensor_named_and_hyperparameters_from_config(written):
    model, tensors, reader = written
    cfg = json.loads((model / "config.json").read_text())
    assert len(tensors) == len(load_file(str(model / "model.safetensors")))
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.ffn_down.weight"} <= set(tensors)

    def field(name: str):
        f = reader.fields[name]
        return f.parts[f.data[0]].tolist()[0]

    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rotary = cfg.get("rotary_pct") or cfg["rope_parameters"]["partial_rotary_factor"]
    assert field("gptneox.rope.dimension_count") == int(rotary * head_dim)
    assert bool(field("gptneox.use_parallel_residual")) is cfg["use_parallel_residual"]
    assert field("gptneox.block_count") == cfg["num_hidden_layers"]
