"""Qwen2 (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen) and Qwen3 families: config mapping, parameter
agreement between convert and the nn module (MLC's names: c_attn, gate_up_proj, q_norm, k_norm), and
compiled (llvm) forward passes and greedy generation through the paged KV cache against transformers.

Tolerances are those of tests/test_models_forward.py: q0f32 ≤ 1e-4 max abs error; q4f16_1 against
transformers on the scheme's dequantized weights ≤ 0.1 and the same top-1 on ≥ 95 % of positions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mlcbuild.errors import UserError
from mlcbuild.models import MODELS, detect_model_type
from mlcbuild.quantization import SCHEMES

try:
    from test_models_forward import Compiled, _ids
    from tiny_models import compile_llvm, hf_logits
    from tiny_qwen import make_tiny_qwen2, make_tiny_qwen3
except ImportError:
    from tests.test_models_forward import Compiled, _ids
    from tests.tiny_models import compile_llvm, hf_logits
    from tests.tiny_qwen import make_tiny_qwen2, make_tiny_qwen3

MODEL_FUNCTIONS = {"embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_tir_paged_kv_cache"}
"""What the family's module exports (compile adds the rest of MLC's function set)."""

QWEN25_SLIDING_OFF = {"use_sliding_window": False, "sliding_window": 64, "max_window_layers": 1}
"""As Qwen2.5 / DeepSeek-R1-Distill-Qwen ship it: a window size that is not used."""

CASES: dict[str, Callable[[Path], Path]] = {
    "qwen2_gqa_tied": lambda p: make_tiny_qwen2(p, num_key_value_heads=2, tie_word_embeddings=True, config_json=QWEN25_SLIDING_OFF),
    "qwen3_hd32_untied_bias": lambda p: make_tiny_qwen3(p, seed=1, head_dim=32, tie_word_embeddings=False, attention_bias=True),
}

# config.json of the released models (transformers-4 style: top-level rope_theta / rope_scaling)
QWEN25_1_5B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 1536,
    "intermediate_size": 8960, "max_position_embeddings": 32768, "max_window_layers": 21, "num_attention_heads": 12,
    "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
}
QWEN3_0_6B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960,
    "max_window_layers": 28, "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}


def _hf(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def _config(hf: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    return MODELS[detect_model_type(hf)].config_from_hf(hf, overrides or {})


@pytest.fixture(scope="session")
def qwen_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("qwen")
    return {name: make(base / name) for name, make in CASES.items()}


# ---- config mapping ------------------------------------------------------------------------------


def test_config_mapping_and_round_trip(qwen_sources: dict[str, Path]) -> None:
    q2 = _config(_hf(qwen_sources["qwen2_gqa_tied"]), {"prefill_chunk_size": 32})
    assert type(q2).__name__ == "Qwen2Config"
    assert (q2.num_attention_heads, q2.num_key_value_heads, q2.head_dim, q2.tie_word_embeddings) == (4, 2, 16, True)
    assert (q2.rope_theta, q2.sliding_window_size, q2.context_window_size, q2.prefill_chunk_size) == (1e6, -1, 128, 32)
    q3 = _config(_hf(qwen_sources["qwen3_hd32_untied_bias"]))
    assert type(q3).__name__ == "Qwen3Config"
    assert (q3.head_dim, q3.num_key_value_heads, q3.attention_bias, q3.tie_word_embeddings) == (32, 2, True, False)
    real2, real3 = _config(QWEN25_1_5B), _config(QWEN3_0_6B)
    assert (real2.rope_theta, real2.head_dim, real2.sliding_window_size, real2.context_window_size, real2.prefill_chunk_size) == (
        1e6, 128, -1, 32768, 2048,
    )
    assert (real3.head_dim, real3.attention_bias, real3.rope_theta, real3.context_window_size) == (128, False, 1e6, 40960)
    # MLC's field names, so MLC's runtimes read the model_config
    assert {"rope_theta", "head_dim", "tie_word_embeddings"} <= real2.to_json().keys()
    assert "attention_bias" in real3.to_json() and "position_embedding_base" not in real3.to_json()
    for cfg in (q2, q3, real2, real3):
        assert type(cfg).from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_qwen3_head_dim_defaults_like_transformers() -> None:
    hf = {k: v for k, v in QWEN3_0_6B.items() if k != "head_dim"}
    assert _config(hf).head_dim == 128  # transformers' Qwen3Config default, not 1024 / 16


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, "rope_scaling type 'yarn'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}, "rope_scaling type 'dynamic'"),
        ({"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 21}, "window on 7 of 28 layers, from layer 21"),
        ({"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 0}, "window on all layers"),
        ({"use_sliding_window": True, "sliding_window": 4096, "layer_types": ["full_attention", "sliding_attention"] * 14}, "14 of 28 layers, from layer 1"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"num_key_value_heads": 5}, "not a multiple"),
    ],
)
def test_unsupported_configs_are_one_line_user_errors(change: dict[str, Any], message: str) -> None:
    for base in (QWEN25_1_5B, QWEN3_0_6B):
        with pytest.raises(UserError, match=message) as info:
            _config({**base, **change})
        assert "\n" not in str(info.value)


def test_sliding_window_that_covers_no_layer_is_accepted() -> None:
    """transformers slides only layers ≥ max_window_layers: with all 28 below it, attention is full."""
    cfg = _config({**QWEN25_1_5B, "use_sliding_window": True, "max_window_layers": 28})
    assert cfg.sliding_window_size == -1


# ---- parameter agreement (export only) ------------------------------------------------------------


def _two_layers(hf: dict[str, Any]) -> dict[str, Any]:
    return {**hf, "num_hidden_layers": 2, "max_window_layers": 2}


REAL_WIDTHS = {"qwen2.5-1.5b-widths": QWEN25_1_5B, "qwen3-0.6b-widths": QWEN3_0_6B}
"""Released widths (2 layers) in the group-quantized schemes, whose packed shapes depend on them."""


@pytest.mark.parametrize(
    "case, quant",
    [(c, q) for c in CASES for q in sorted(SCHEMES)] + [(c, q) for c in REAL_WIDTHS for q in ("q3f16_1", "q4f16_1")],
)
def test_weight_plan_equals_nn_module_params(qwen_sources: dict[str, Path], case: str, quant: str) -> None:
    hf = _two_layers(REAL_WIDTHS[case]) if case in REAL_WIDTHS else _hf(qwen_sources[case])
    family = MODELS[detect_model_type(hf)]
    cfg = family.config_from_hf(hf, {})
    model = family.create_model(cfg, quant)
    mod, named = model.export_tvm(spec=model.get_default_spec())
    from_model = sorted((n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named)
    from_plan = sorted((o.name, tuple(o.shape), o.dtype) for o in family.weight_plan(cfg, quant).all_outputs())
    assert from_model == from_plan
    assert MODEL_FUNCTIONS <= {gv.name_hint for gv in mod.get_global_vars()}
    names = {n for n, _, _ in from_model}
    dtype = SCHEMES[quant].model_dtype
    assert cfg.qkv_bias == ("model.layers.0.self_attn.c_attn.bias" in names)
    assert cfg.o_proj_bias == ("model.layers.0.self_attn.o_proj.bias" in names)
    if cfg.qkv_bias:  # biases stay in the model dtype (MLC), also when the weights are quantized
        assert ("model.layers.0.self_attn.c_attn.bias", ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim,), dtype) in from_model
    assert (family.name == "qwen3") == ("model.layers.1.self_attn.k_norm.weight" in names)
    assert cfg.tie_word_embeddings == (not any(n.startswith("lm_head.") for n in names))


def test_detect_model_type_from_config_json(qwen_sources: dict[str, Path], tmp_path: Path) -> None:
    """No recipe model_type: the family comes from config.json (model_type, else architectures)."""
    from mlcbuild.steps.gen_config import build_config

    for case, family in (("qwen2_gqa_tied", "qwen2"), ("qwen3_hd32_untied_bias", "qwen3")):
        hf = _hf(qwen_sources[case])
        assert detect_model_type(hf) == family
        assert detect_model_type({k: v for k, v in hf.items() if k != "model_type"}) == family
        out = tmp_path / case
        out.mkdir()
        chat = build_config(qwen_sources[case], out, {"quantization": "q4f16_1", "conv_template": "chatml"})
        assert chat.model_type == family
        assert MODELS[family].config_from_json(chat.model_config) == _config(hf)


# ---- compiled forward passes and generation --------------------------------------------------------


@pytest.fixture(scope="session")
def qwen_compiled(qwen_sources: dict[str, Path]) -> Callable[[str, str], Compiled]:
    """Convert and compile each (case, quantization) once per session (llvm)."""
    cache: dict[tuple[str, str], Compiled] = {}

    def get(case: str, quant: str) -> Compiled:
        if (case, quant) not in cache:
            vm, params, cfg = compile_llvm(qwen_sources[case], quant)
            cache[(case, quant)] = Compiled(vm, params, qwen_sources[case], cfg.vocab_size)
        return cache[(case, quant)]

    return get


def _greedy(model: Compiled, prompt: np.ndarray, n: int) -> list[int]:
    """prefill(prompt), then decode the argmax token n-1 times: n generated tokens."""
    kv = model._kv()
    logits = model._step(kv, "prefill", prompt)[0, -1]
    out = [int(logits.argmax())]
    while len(out) < n:
        out.append(int(model._step(kv, "decode", np.array(out[-1:], np.int32))[0, -1].argmax()))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_q0f32_matches_transformers(qwen_compiled: Callable[[str, str], Compiled], case: str) -> None:
    model = qwen_compiled(case, "q0f32")
    ids = _ids(model.vocab_size, 48)
    want = hf_logits(model.source, ids)
    got = model.all_logits(ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    stepped = model.prefill_then_decode(ids, 16)
    assert np.abs(stepped - want[15:]).max() <= 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_matches_transformers(qwen_compiled: Callable[[str, str], Compiled], case: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = qwen_compiled(case, "q0f32")
    prompt = _ids(model.vocab_size, 8, seed=5)
    hf = AutoModelForCausalLM.from_pretrained(str(model.source), dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(
            torch.as_tensor(prompt[None].astype(np.int64)),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
            eos_token_id=None,
            pad_token_id=0,
        )
    want = out[0, len(prompt) :].tolist()
    assert len(want) == 32
    assert _greedy(model, prompt, 32) == want


@pytest.mark.parametrize("case", list(CASES))
def test_q4f16_1_matches_transformers_on_dequantized_weights(qwen_compiled: Callable[[str, str], Compiled], case: str) -> None:
    model = qwen_compiled(case, "q4f16_1")
    ids = _ids(model.vocab_size, 64, seed=1)
    got = model.all_logits(ids)
    assert np.isfinite(got).all()
    want = hf_logits(model.source, ids, quantization="q4f16_1")
    assert np.abs(got - want).max() <= 0.1
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    unquantized = hf_logits(model.source, ids)
    assert np.corrcoef(got.reshape(-1), unquantized.reshape(-1))[0, 1] >= 0.8
