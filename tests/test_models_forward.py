"""Model families: HF config mapping, parameter agreement between convert and the nn module, and
compiled (llvm) forward passes through the paged KV cache that match transformers.

q0f32: max abs error ≤ 1e-4 against transformers.
q4f16_1: compared with transformers running the scheme's dequantized weights (so the check sees our
kernels and packing, not the quantization noise itself): max abs error ≤ 0.1 on logits of magnitude
~5 (the fp16 compute), same top-1 on ≥ 95 % of positions. Against the unquantized model the logits
must still correlate (r ≥ 0.8): random tiny models are far more sensitive to 4-bit noise than real ones.
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
from mlcbuild.quantization import SCHEMES

try:
    from tiny_models import compile_llvm, hf_logits, make_tiny_gpt_neox, make_tiny_llama, make_tiny_mistral
except ImportError:
    from tests.tiny_models import compile_llvm, hf_logits, make_tiny_gpt_neox, make_tiny_llama, make_tiny_mistral

EXPORTED = {"embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_tir_paged_kv_cache"}
"""The model's own functions; the rest of MLC's ABI is added at compile time (tests/test_mlc_abi.py)."""

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


CASES: dict[str, Callable[[Path], Path]] = {
    "neox_parallel": lambda p: make_tiny_gpt_neox(p, rotary_pct=0.5, use_parallel_residual=True),
    "neox_sequential": lambda p: make_tiny_gpt_neox(p, seed=1, rotary_pct=0.25, use_parallel_residual=False),
    "llama_gqa_tied_llama3": lambda p: make_tiny_llama(p, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=LLAMA3),
    "mistral_sliding": make_tiny_mistral,
}


# ---- fast: config mapping and parameter agreement (no compile) --------------------------------


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {name: make(base / name) for name, make in CASES.items()}


def test_config_mapping(sources: dict[str, Path]) -> None:
    def cfg(case: str) -> Any:
        hf = json.loads((sources[case] / "config.json").read_text())
        return MODELS[detect_model_type(hf)].config_from_hf(hf, {"prefill_chunk_size": 32, "temperature": 0.5})

    neox = cfg("neox_sequential")
    assert (neox.rotary_dim, neox.use_parallel_residual, neox.head_dim) == (4, False, 16)
    assert (neox.context_window_size, neox.prefill_chunk_size) == (128, 32)
    llama = cfg("llama_gqa_tied_llama3")
    assert (llama.num_key_value_heads, llama.tie_word_embeddings, llama.position_embedding_base) == (2, True, 500000.0)
    assert llama.rope_scaling["rope_type"] == "llama3" and llama.rope_scaling["original_max_position_embeddings"] == 32
    mistral = cfg("mistral_sliding")
    assert (mistral.sliding_window_size, mistral.context_window_size, mistral.attention_sink_size) == (16, -1, 4)
    for c in (neox, llama, mistral):
        assert type(c).from_json(json.loads(json.dumps(c.to_json()))) == c


def test_unsupported_model_type_names_supported_ones() -> None:
    with pytest.raises(UserError, match="supported: ") as info:
        detect_model_type({"model_type": "bert", "architectures": ["BertModel"]})
    for name in ("gpt_neox", "llama", "mistral", "qwen2", "qwen3"):
        assert name in str(info.value)


def test_registry_imports_no_tvm() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlcbuild.models as m, mlcbuild.quantization;"
        "f = m.MODELS['llama']; f.config_cls;"
        "bad = [x for x in sys.modules if x.split('.')[0] in ('tvm', 'torch', 'transformers', 'numpy')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("quant", sorted(SCHEMES))
@pytest.mark.parametrize("case", ["neox_parallel", "llama_gqa_tied_llama3"])
def test_convert_plan_and_nn_module_agree(sources: dict[str, Path], case: str, quant: str) -> None:
    hf = json.loads((sources[case] / "config.json").read_text())
    family = MODELS[detect_model_type(hf)]
    cfg = family.config_from_hf(hf, {})
    model = family.create_model(cfg, quant)
    mod, named = model.export_tvm(spec=model.get_default_spec())
    from_model = [(n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named]
    from_plan = [(o.name, tuple(o.shape), o.dtype) for o in family.weight_plan(cfg, quant).all_outputs()]
    assert sorted(from_model) == sorted(from_plan)
    assert EXPORTED <= {gv.name_hint for gv in mod.get_global_vars()}


# ---- slow: compiled forward passes ------------------------------------------------------------


@dataclass
class Compiled:
    vm: Any
    params: list[Any]
    source: Path
    vocab_size: int
    sliding_window: int = 0

    def _kv(self) -> Any:
        import tvm

        s = tvm.runtime.ShapeTuple
        kv = self.vm["create_tir_paged_kv_cache"](s([1]), s([256]), s([128]), s([16]), s([1 if self.sliding_window else 0]))
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, 0)
        if self.sliding_window:
            tvm.get_global_func("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")(kv, 0, self.sliding_window, 0)
        return kv

    def _embed(self, ids: np.ndarray) -> Any:
        import tvm

        emb = self.vm["embed"](tvm.runtime.tensor(ids.astype(np.int32)), self.params).numpy()
        return tvm.runtime.tensor(emb[None])

    def _step(self, kv: Any, fn: str, ids: np.ndarray, *extra: Any) -> np.ndarray:
        import tvm

        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(kv, tvm.runtime.ShapeTuple([0]), tvm.runtime.ShapeTuple([len(ids)]))
        emb = self._embed(ids)
        if fn in ("decode", "batch_decode"):
            emb = tvm.runtime.tensor(emb.numpy().reshape(len(ids), 1, -1))
        logits, _ = self.vm[fn](emb, *extra, kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(kv)
        return logits.numpy()

    def all_logits(self, ids: np.ndarray) -> np.ndarray:
        """One batch_prefill over the whole sequence, logits at every position."""
        import tvm

        positions = tvm.runtime.tensor(np.arange(len(ids), dtype=np.int32))
        return self._step(self._kv(), "batch_prefill", ids, positions)[0]

    def prefill_then_decode(self, ids: np.ndarray, n_prompt: int) -> np.ndarray:
        """prefill(prompt) then decode one token at a time: logits at positions n_prompt-1 .. end."""
        kv = self._kv()
        out = [self._step(kv, "prefill", ids[:n_prompt])[0, -1]]
        for t in range(n_prompt, len(ids)):
            out.append(self._step(kv, "decode", ids[t : t + 1])[0, -1])
        return np.stack(out)


@pytest.fixture(scope="session")
def compiled(sources: dict[str, Path]) -> Callable[[str, str], Compiled]:
    """Compile each (case, quantization) once per session."""
    cache: dict[tuple[str, str], Compiled] = {}

    def get(case: str, quant: str) -> Compiled:
        if (case, quant) not in cache:
            vm, params, cfg = compile_llvm(sources[case], quant)
            cache[(case, quant)] = Compiled(vm, params, sources[case], cfg.vocab_size, max(cfg.sliding_window_size, 0))
        return cache[(case, quant)]

    return get


def _ids(vocab: int, n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["neox_parallel", "neox_sequential", "llama_gqa_tied_llama3"])
def test_q0f32_matches_transformers(compiled: Callable[[str, str], Compiled], case: str) -> None:
    model = compiled(case, "q0f32")
    ids = _ids(model.vocab_size)
    got = model.all_logits(ids)
    want = hf_logits(model.source, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("case", ["neox_parallel", "llama_gqa_tied_llama3"])
def test_q4f16_1_matches_transformers_on_dequantized_weights(compiled: Callable[[str, str], Compiled], case: str) -> None:
    model = compiled(case, "q4f16_1")
    ids = _ids(model.vocab_size, 64, seed=1)
    got = model.all_logits(ids)
    want = hf_logits(model.source, ids, quantization="q4f16_1")
    assert np.abs(got - want).max() <= 0.1
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    unquantized = hf_logits(model.source, ids)
    assert np.corrcoef(got.reshape(-1), unquantized.reshape(-1))[0, 1] >= 0.8


@pytest.mark.slow
def test_prefill_then_decode_matches_transformers(compiled: Callable[[str, str], Compiled]) -> None:
    model = compiled("llama_gqa_tied_llama3", "q0f32")
    ids = _ids(model.vocab_size, 24, seed=2)
    got = model.prefill_then_decode(ids, 16)
    want = hf_logits(model.source, ids)[15:]
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
def test_mistral_sliding_window(compiled: Callable[[str, str], Compiled]) -> None:
    """Within the window the model equals transformers; past it the paged KV cache evicts whole
    16-token pages (MLC's semantics: between W and W+15 tokens stay visible), so HF's exact
    per-token window is not reproduced there and only finiteness is checked."""
    model = compiled("mistral_sliding", "q0f32")
    ids = _ids(model.vocab_size, 40, seed=4)
    want = hf_logits(model.source, ids)
    got = model.prefill_then_decode(ids, 8)
    assert np.abs(got[: 16 - 7] - want[7:16]).max() <= 1e-4
    assert np.isfinite(got).all()
