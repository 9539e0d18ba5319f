"""Compiled llvm libraries run prefill + decode with the paged KV cache and match transformers.

Coverage (budget: ~7 llvm compiles of ~8 s each): GPT-NeoX in all five quantizations, Llama
(GQA) in q0f32 and q4f16_1. The reference is transformers (float32) loaded with exactly the
weights the library computes with: the converted tensor cache, dequantized and mapped back to HF
names. So the comparison checks the compiled graph, KV cache and runtime, not quantization error.

Tolerances on logits (scale ~5): q0f32 and q4f32_1 ≤ 1e-4 max abs. float16 schemes keep
activations in float16 (matmuls accumulate in float32) where transformers runs float32: ≤ 0.02
max abs (measured ≤ 0.0075) and the same top-1 token on ≥ 95 % of positions.
"""
from __future__ import annotations

import numpy as np
import pytest

PROMPT = 10
DECODE = 10
EXACT_TOL = 1e-4
FP16_TOL = 0.02

CASES = [("gpt_neox", q) for q in ("q0f32", "q0f16", "q4f16_1", "q4f32_1", "q3f16_1")] + [
    ("llama", "q0f32"),
    ("llama", "q4f16_1"),
]


def reference_weights(hf_dir, model_dir, family: str, quantization: str) -> dict[str, np.ndarray]:
    """HF-named float32 weights equal to what the library computes with: the converted tensor
    cache, dequantized, mapped back through the family's weight plan (fused/regrouped rows are
    traced by running the plan's layout transform on arrays that hold their own row ids)."""
    import json

    from safetensors.numpy import load_file

    from mlcbuild.models import get_family
    from mlcbuild.quantization import get_scheme
    from mlcbuild.quantization.numpy_quant import group_dequantize
    from mlcbuild.artifact.tensor_cache import load_tensor_cache

    fam = get_family(family)
    plan = fam.weight_plan(fam.config_from_hf(json.loads((hf_dir / "config.json").read_text()), {}), quantization)
    hf = {plan.canonical(k): v for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    cache = load_tensor_cache(model_dir)
    scheme = get_scheme(quantization)
    ids = {name: i for i, name in enumerate(sorted(hf))}
    names = {i: name for name, i in ids.items()}
    out = {name: arr.astype(np.float32).copy() for name, arr in hf.items()}
    for p in plan.params:
        markers = []
        for name, shape in zip(p.hf_names, p.hf_shapes):
            rows = np.arange(shape[0], dtype=np.float64) + ids[name] * 100_000
            markers.append(np.broadcast_to(rows.reshape(-1, *([1] * (len(shape) - 1))), shape).astype(np.float64))
        traced = np.asarray(p.combine(markers))
        if plan.is_quantized(p):
            value = group_dequantize(cache[f"{p.prefix()}.q_weight"], cache[f"{p.prefix()}.q_scale"], traced.shape[1], scheme)
        else:
            value = cache[p.name].astype(np.float32)
        source = traced.reshape(traced.shape[0], -1)[:, 0].astype(np.int64)
        for r, marker in enumerate(source):
            out[names[int(marker // 100_000)]][int(marker % 100_000)] = value[r]
    return out


def reference_logits(hf_dir, model_dir, family: str, quantization: str, input_ids) -> np.ndarray:
    """transformers float32 logits [seq, vocab] run with `reference_weights`."""
    import torch
    from transformers import AutoModelForCausalLM

    weights = reference_weights(hf_dir, model_dir, family, quantization)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    state = dict(model.state_dict())
    for name in ("embed_out.weight", "lm_head.weight"):
        if name in weights and name not in state:
            state[name] = model.get_output_embeddings().weight
    assert set(weights) <= set(state), sorted(set(weights) - set(state))
    with torch.no_grad():
        for name, tensor in state.items():
            if name in weights:
                tensor.copy_(torch.from_numpy(weights[name]))
        logits = model(torch.as_tensor(np.asarray(input_ids, dtype=np.int64))[None]).logits
    return logits[0].float().numpy()


def _tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("family,quantization", CASES, ids=[f"{f}-{q}" for f, q in CASES])
def test_llvm_library_matches_transformers(compiled_model, family: str, quantization: str) -> None:
    from mlcbuild.runtime.engine import Engine

    built = compiled_model(family, quantization)
    engine = Engine.load(built.model_dir, built.lib)
    ids = _tokens(PROMPT + DECODE)
    ours = engine.logits_for(ids[:PROMPT], ids[PROMPT:])
    ref = reference_logits(built.hf_dir, built.model_dir, family, quantization, ids)[PROMPT - 1 :]
    assert ours.shape == ref.shape == (DECODE + 1, 256)
    err = np.abs(ours - ref).max(axis=-1)
    if quantization in ("q0f32", "q4f32_1"):
        assert err.max() <= EXACT_TOL, f"per-step max abs error {err}"
    else:
        assert err.max() <= FP16_TOL, f"per-step max abs error {err}"
        assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


@pytest.mark.slow
def test_chunked_prefill_matches_transformers(compiled_model) -> None:
    """A 40-token prompt is prefilled in chunks of 16, then decoded; all against transformers."""
    from mlcbuild.runtime.engine import Engine

    built = compiled_model("llama", "q0f32")
    engine = Engine.load(built.model_dir, built.lib)
    assert engine.prefill_chunk_size == 16
    ids = _tokens(48, seed=1)
    ours = engine.logits_for(ids[:40], ids[40:])
    ref = reference_logits(built.hf_dir, built.model_dir, "llama", "q0f32", ids)[39:]
    assert np.abs(ours - ref).max() <= EXACT_TOL


@pytest.mark.slow
def test_metadata_describes_library(compiled_model) -> None:
    import json

    from mlcbuild.runtime.engine import Engine

    built = compiled_model("llama", "q4f16_1")
    engine = Engine.load(built.model_dir, built.lib)
    meta = engine.metadata
    assert meta == json.loads(json.dumps(built.metadata))
    assert meta["model_type"] == "llama" and meta["quantization"] == "q4f16_1"
    assert meta["context_window_size"] == 128 and meta["prefill_chunk_size"] == 16
    assert meta["sliding_window_size"] == -1 and meta["tensor_parallel_shards"] == 1
    assert meta["kv_state_kind"] == "kv_cache"
    assert meta["kv_cache"] == {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    cache = json.loads((built.model_dir / "tensor-cache.json").read_text())
    records = {r["name"]: r for shard in cache["records"] for r in shard["records"]}
    assert [p["name"] for p in meta["params"]] and {p["name"] for p in meta["params"]} == set(records)
    for p in meta["params"]:
        assert p["shape"] == records[p["name"]]["shape"] and p["dtype"] == records[p["name"]]["dtype"]
    assert any(p["dtype"] == "uint32" for p in meta["params"])
    assert meta["memory_usage"]["prefill"] > 0 and meta["memory_usage"]["decode"] > 0
    for name in ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "create_tir_paged_kv_cache", "softmax_with_temperature"):
        engine.vm[name]


@pytest.mark.slow
def test_wrong_quantization_weights_fail_before_running(compiled_model) -> None:
    from mlcbuild.runtime import WeightsMismatchError
    from mlcbuild.runtime.engine import Engine

    q4 = compiled_model("llama", "q4f16_1")
    q0_dir = compiled_model.model_dir("llama", "q0f32")
    with pytest.raises(WeightsMismatchError) as info:
        Engine.load(q0_dir, q4.lib)
    message = str(info.value)
    assert "\n" not in message
    assert "quantization" in message and "q4f16_1" in message


@pytest.mark.slow
def test_weights_mismatch_names_first_bad_parameter(compiled_model, tmp_path) -> None:
    import json
    import shutil

    from mlcbuild.runtime import WeightsMismatchError
    from mlcbuild.runtime.engine import Engine

    built = compiled_model("llama", "q4f16_1")
    bad = tmp_path / "bad"
    shutil.copytree(built.model_dir, bad)
    cache = json.loads((bad / "tensor-cache.json").read_text())
    first = cache["records"][0]["records"][0]
    first["nbytes"] = first["nbytes"] // first["shape"][0] * (first["shape"][0] + 1)
    first["shape"] = [first["shape"][0] + 1, *first["shape"][1:]]
    (bad / "tensor-cache.json").write_text(json.dumps(cache))
    with pytest.raises(WeightsMismatchError, match=first["name"].replace(".", r"\.")) as info:
        Engine.load(bad, built.lib)
    assert "library expects" in str(info.value)
