"""Gemma 2 and Gemma 3 (text): config mapping (transformers 4 and 5 shapes), parameter agreement
between convert and the nn module, and compiled (llvm) runs through the paged KV cache against
transformers on tiny random float32 checkpoints.

Tiny shapes are odd on purpose: GQA, head_dim (32) != hidden / heads (16), query_pre_attn_scalar !=
head_dim, a 16-token sliding window on alternate layers shorter than the 48-token test sequence,
tied heads, final logit soft-capping (Gemma 2), linear RoPE scaling and a local RoPE base different
from the global one (Gemma 3).

What is compared exactly (q0f32, ≤ 1e-4): every position of a 48-token sequence prefilled in
16-token chunks (the config caps prefill_chunk_size at the window), prefill-then-decode, and greedy
generation. The tiny Gemma 2 checkpoint has attn_logit_softcapping=None: the paged KV cache cannot
soft-cap attention logits, so a Gemma 2 checkpoint with it (all real ones, cap 50) runs without it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mlcbuild.errors import UserError
from mlcbuild.models import MODELS, detect_model_type
from mlcbuild.models.config_base import ConfigValueError
from mlcbuild.quantization import SCHEMES

try:
    from tiny_models import _save, compile_llvm, hf_logits
except ImportError:
    from tests.tiny_models import _save, compile_llvm, hf_logits

WINDOW = 16
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "head_dim": 32,
    "intermediate_size": 96,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "sliding_window": WINDOW,
}


def _init_gemma(model: Any, seed: int, std: float = 0.1) -> Any:
    """Seeded weights; Gemma norms hold w of (1 + w), so they get small values around 0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            scale = 0.2 if name.endswith("norm.weight") else std
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_tiny_gemma2(path: Path, seed: int = 0, **overrides: Any) -> Path:
    """Tiny Gemma2ForCausalLM: 3 layers (sliding, full, sliding), 2 KV heads, final soft-cap 3."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    kwargs = {
        **TINY,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "query_pre_attn_scalar": 24,
        "final_logit_softcapping": 3.0,
        "attn_logit_softcapping": None,
        "attn_implementation": "eager",
        **overrides,
    }
    config = Gemma2Config(**kwargs)
    config.architectures = ["Gemma2ForCausalLM"]
    return _save(_init_gemma(Gemma2ForCausalLM(config), seed), Path(path), 1, "safetensors", "float32")


def make_tiny_gemma3(path: Path, seed: int = 1, **overrides: Any) -> Path:
    """Tiny Gemma3ForCausalLM: 4 layers alternating sliding/full, 1 KV head, per-type RoPE."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    kwargs = {
        **TINY,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "query_pre_attn_scalar": 48,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
        },
        "attn_implementation": "eager",
        **overrides,
    }
    config = Gemma3TextConfig(**kwargs)
    config.architectures = ["Gemma3ForCausalLM"]
    return _save(_init_gemma(Gemma3ForCausalLM(config), seed), Path(path), 1, "safetensors", "float32")


CASES: dict[str, Callable[[Path], Path]] = {"gemma2": make_tiny_gemma2, "gemma3": make_tiny_gemma3}

# config.json of google/gemma-2-2b (transformers 4.42) and google/gemma-3-1b-it (transformers 4.50)
GEMMA2_2B_T4 = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
    "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
    "torch_dtype": "float32", "use_cache": True, "vocab_size": 256000,
}
GEMMA3_1B_T4 = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "vocab_size": 262144,
}


@pytest.fixture(scope="session")
def gemma_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gemma")
    return {name: make(base / name) for name, make in CASES.items()}


def _hf(source: Path) -> dict[str, Any]:
    return json.loads((source / "config.json").read_text())


def _cfg(hf: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    return MODELS[detect_model_type(hf)].config_from_hf(hf, overrides or {})


# ---- (1) config mapping, (6) detection ------------------------------------------------------------


def test_detect_model_type(gemma_sources: dict[str, Path]) -> None:
    assert detect_model_type(_hf(gemma_sources["gemma2"])) == "gemma2"
    assert detect_model_type(_hf(gemma_sources["gemma3"])) == "gemma3"
    assert detect_model_type(GEMMA2_2B_T4) == "gemma2"
    assert detect_model_type(GEMMA3_1B_T4) == "gemma3"
    assert detect_model_type({"architectures": ["Gemma3ForCausalLM"]}) == "gemma3"
    with pytest.raises(UserError, match="gemma2, gemma3"):
        detect_model_type({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]})


def test_config_tiny_transformers5(gemma_sources: dict[str, Path]) -> None:
    g2 = _cfg(_hf(gemma_sources["gemma2"]))
    assert (g2.head_dim, g2.num_key_value_heads, g2.query_pre_attn_scalar, g2.sm_scale) == (32, 2, 24.0, 24.0**-0.5)
    assert g2.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (g2.sliding_window, g2.sliding_window_size, g2.attention_sink_size) == (WINDOW, -1, 0)
    assert (g2.context_window_size, g2.prefill_chunk_size) == (128, WINDOW)
    assert (g2.final_logit_softcapping, g2.attn_logit_softcapping) == (3.0, None)
    g3 = _cfg(_hf(gemma_sources["gemma3"]), {"prefill_chunk_size": 64})
    assert (g3.position_embedding_base, g3.rope_local_base_freq, g3.rope_scaling) == (5000.0, 100.0, {"rope_type": "linear", "factor": 4.0})
    assert g3.attn_kinds() == ["mha_sliding", "mha", "mha_sliding", "mha"]
    assert (g3.prefill_chunk_size, g3.num_key_value_heads, g3.final_logit_softcapping) == (WINDOW, 1, None)
    for c in (g2, g3):
        assert type(c).from_json(json.loads(json.dumps(c.to_json()))) == c


def test_config_real_transformers4() -> None:
    g2 = _cfg(GEMMA2_2B_T4)
    assert g2.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (g2.sliding_window, g2.context_window_size, g2.prefill_chunk_size) == (4096, 8192, 2048)
    assert (g2.attn_logit_softcapping, g2.final_logit_softcapping, g2.sm_scale) == (50.0, 30.0, 1 / 16)
    g3 = _cfg(GEMMA3_1B_T4)
    assert g3.layer_types.count("full_attention") == 4 and g3.layer_types[5] == "full_attention"
    assert (g3.position_embedding_base, g3.rope_local_base_freq, g3.rope_scaling) == (1e6, 1e4, {})
    assert (g3.sliding_window, g3.context_window_size, g3.prefill_chunk_size) == (512, 32768, 512)
    scaled = _cfg({**GEMMA3_1B_T4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert scaled.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    # the same model in transformers 5's shape maps to the same config
    t5 = {k: v for k, v in GEMMA3_1B_T4.items() if k not in ("rope_theta", "rope_local_base_freq", "rope_scaling", "sliding_window_pattern")}
    t5["rope_parameters"] = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    t5["layer_types"] = scaled.layer_types
    assert _cfg(t5) == scaled
    for c in (g2, g3, scaled):
        assert type(c).from_json(json.loads(json.dumps(c.to_json()))) == c


@pytest.mark.parametrize(
    "base, change, field",
    [
        (GEMMA3_1B_T4, {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        (GEMMA3_1B_T4, {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling.rope_type"),
        (GEMMA3_1B_T4, {"layer_types": ["sliding_attention"] * 3}, "layer_types"),
        (GEMMA2_2B_T4, {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        (GEMMA2_2B_T4, {"tie_word_embeddings": False}, "tie_word_embeddings"),
        (GEMMA2_2B_T4, {"hidden_activation": "relu"}, "hidden_activation"),
        (GEMMA2_2B_T4, {"sliding_window": None}, "sliding_window"),
    ],
)
def test_unsupported_config_values(base: dict[str, Any], change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigValueError) as err:
        _cfg({**base, **change})
    assert err.value.field == field and "\n" not in str(err.value)


def test_whole_model_sliding_window_override_is_refused() -> None:
    with pytest.raises(UserError, match="whole-model sliding window"):
        _cfg(GEMMA2_2B_T4, {"sliding_window_size": 4096})


# ---- (2) convert plan == nn module parameters ------------------------------------------------------


@pytest.mark.parametrize("quant", sorted(SCHEMES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_plan_and_nn_module_agree(gemma_sources: dict[str, Path], case: str, quant: str) -> None:
    hf = _hf(gemma_sources[case])
    family = MODELS[detect_model_type(hf)]
    cfg = family.config_from_hf(hf, {})
    model = family.create_model(cfg, quant)
    _, named = model.export_tvm(spec=model.get_default_spec())
    from_model = [(n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named]
    from_plan = [(o.name, tuple(o.shape), o.dtype) for o in family.weight_plan(cfg, quant).all_outputs()]
    assert sorted(from_model) == sorted(from_plan)
    names = {n for n, _, _ in from_plan}
    if case == "gemma3":  # MLC's names: language_model. prefix, separate q/k/v, per-head norms
        assert "language_model.model.layers.0.self_attn.q_norm.weight" in names
        assert not any("lm_head" in n or "qkv_proj" in n for n in names)
    else:
        assert not any("lm_head" in n or "q_proj" in n for n in names)


def test_norm_weights_are_stored_plus_one(gemma_sources: dict[str, Path], tmp_path: Path) -> None:
    """MLC's loaders add the 1 of (1 + w) at conversion; MLC's models use a plain RMSNorm."""
    from safetensors.numpy import load_file

    from mlcbuild.artifact.tensor_cache import load_tensor_cache
    from mlcbuild.steps.convert import convert_checkpoint

    src = gemma_sources["gemma3"]
    convert_checkpoint(src, tmp_path, "q0f32")
    got = load_tensor_cache(tmp_path)
    hf = load_file(str(src / "model.safetensors"))
    for name in ("model.layers.1.self_attn.k_norm.weight", "model.layers.0.post_feedforward_layernorm.weight", "model.norm.weight"):
        np.testing.assert_array_equal(got["language_model." + name], hf[name] + np.float32(1))
    np.testing.assert_array_equal(got["language_model.model.layers.0.self_attn.q_proj.weight"], hf["model.layers.0.self_attn.q_proj.weight"])


# ---- compiled runs ----------------------------------------------------------------------------------


@dataclass
class Runner:
    vm: Any
    params: list[Any]
    source: Path
    vocab_size: int
    chunk: int

    def kv(self) -> Any:
        import tvm

        s = tvm.runtime.ShapeTuple
        kv = self.vm["create_tir_paged_kv_cache"](s([1]), s([256]), s([128]), s([16]), s([0]))
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, 0)
        return kv

    def step(self, kv: Any, fn: str, ids: np.ndarray, *extra: Any) -> np.ndarray:
        import tvm

        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(kv, tvm.runtime.ShapeTuple([0]), tvm.runtime.ShapeTuple([len(ids)]))
        emb = self.vm["embed"](tvm.runtime.tensor(ids.astype(np.int32)), self.params).numpy()
        emb = emb.reshape(len(ids), 1, -1) if fn == "decode" else emb[None]
        logits, _ = self.vm[fn](tvm.runtime.tensor(emb), *extra, kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(kv)
        return logits.numpy()

    def prefill_all(self, kv: Any, ids: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """batch_prefill in chunks (what a runtime does with prefill_chunk_size): logits everywhere."""
        import tvm

        chunk = chunk or self.chunk
        out = []
        for i in range(0, len(ids), chunk):
            part = ids[i : i + chunk]
            out.append(self.step(kv, "batch_prefill", part, tvm.runtime.tensor(np.arange(len(part), dtype=np.int32)))[0])
        return np.concatenate(out)

    def prefill_then_decode(self, ids: np.ndarray, n_prompt: int) -> np.ndarray:
        kv = self.kv()
        out = [self.prefill_all(kv, ids[:n_prompt])[-1]]
        for t in range(n_prompt, len(ids)):
            out.append(self.step(kv, "decode", ids[t : t + 1])[0, -1])
        return np.stack(out)

    def greedy(self, prompt: np.ndarray, n: int) -> list[int]:
        kv = self.kv()
        logits = self.prefill_all(kv, prompt)[-1]
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = self.step(kv, "decode", np.array(out[-1:], np.int32))[0, -1]
        return out


@pytest.fixture(scope="session")
def gemma_compiled(gemma_sources: dict[str, Path]) -> Callable[[str, str], Runner]:
    """Convert and compile each (case, quantization) once per session."""
    cache: dict[tuple[str, str], Runner] = {}

    def get(case: str, quant: str) -> Runner:
        if (case, quant) not in cache:
            vm, params, cfg = compile_llvm(gemma_sources[case], quant)
            cache[(case, quant)] = Runner(vm, params, gemma_sources[case], cfg.vocab_size, cfg.prefill_chunk_size)
        return cache[(case, quant)]

    return get


def _ids(vocab: int, n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_q0f32_matches_transformers(gemma_compiled: Callable[[str, str], Runner], case: str) -> None:
    """(3) Every position of 48 tokens (3 windows), prefilled in window-sized chunks, then
    prefill-then-decode past the window: both within 1e-4 of transformers (eager attention)."""
    model = gemma_compiled(case, "q0f32")
    ids = _ids(model.vocab_size)
    want = hf_logits(model.source, ids)
    got = model.prefill_all(model.kv(), ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    got = model.prefill_then_decode(ids, 10)
    assert np.abs(got - want[9:]).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generation_matches_transformers(gemma_compiled: Callable[[str, str], Runner], case: str) -> None:
    """(4) 32 greedy tokens after a 12-token prompt equal transformers' generate(do_sample=False)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = gemma_compiled(case, "q0f32")
    prompt = _ids(model.vocab_size, 12, seed=5)
    hf = AutoModelForCausalLM.from_pretrained(str(model.source), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf.generate(torch.as_tensor(prompt[None].astype(np.int64)), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert model.greedy(prompt, 32) == out[0, len(prompt) :].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_prefill_longer_than_the_window_is_not_windowed(gemma_compiled: Callable[[str, str], Runner], case: str) -> None:
    """Why prefill_chunk_size is capped at the window: the KV cache attends a prefill chunk to
    itself with a plain causal mask, so a single 48-token prefill matches transformers only on the
    first window and differs after it."""
    model = gemma_compiled(case, "q0f32")
    ids = _ids(model.vocab_size)
    want = hf_logits(model.source, ids)
    got = model.prefill_all(model.kv(), ids, chunk=len(ids))
    assert np.abs(got[:WINDOW] - want[:WINDOW]).max() <= 1e-4
    assert np.abs(got[WINDOW:] - want[WINDOW:]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_q4f16_1_matches_transformers_on_dequantized_weights(gemma_compiled: Callable[[str, str], Runner], case: str) -> None:
    """(5) q4f16_1: finite, mostly the same top-1 as transformers running the dequantized weights."""
    model = gemma_compiled(case, "q4f16_1")
    ids = _ids(model.vocab_size, 48, seed=1)
    got = model.prefill_all(model.kv(), ids)
    want = hf_logits(model.source, ids, quantization="q4f16_1")
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= 0.1
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
