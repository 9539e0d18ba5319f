"""phi3 family (Phi-3, Phi-3.5, Phi-4-mini): config mapping, convert plan vs nn module, and compiled
(llvm) forwards through the paged KV cache against transformers.

LongRoPE semantics (MLC's, from TVM's paged KV cache; transformers differs past
original_max_position_embeddings = O):
- up to O tokens both use the short factors: logits match transformers (≤ 1e-4 in q0f32);
- one prefill call holding more than O tokens uses the long factors for all of them, as
  transformers does for a sequence longer than O: it matches transformers too;
- decode steps (1 token per call) always use the short factors, whatever the position, while
  transformers switches to the long factors (and `generate` recomputes the cache) past O. Past O
  decode therefore equals transformers run with long_factor := short_factor, not transformers.
"""
from __future__ import annotations

import json
import shutil
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
    from tiny_models import _init, _save, compile_llvm, hf_logits
except ImportError:
    from tests.tiny_models import _init, _save, compile_llvm, hf_logits

ORIG = 64  # original_max_position_embeddings of the tiny models (max_position_embeddings 256)
# the model's own exports (the compiler adds the rest of MLC's ABI)
EXPORTED = {"embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_tir_paged_kv_cache"}


def _factors(seed: int, n: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    short = [round(float(x), 4) for x in 1.0 + 0.8 * rng.random(n)]
    long = [round(float(x), 4) for x in 2.0 + 6.0 * rng.random(n)]
    return short, long


def make_tiny_phi3(path: Path, *, seed: int = 0, longrope: bool = True, legacy_config: bool = False, **overrides: Any) -> Path:
    """Tiny Phi3ForCausalLM, with longrope unless told otherwise. `legacy_config` rewrites config.json
    in the transformers-4 shape (rope_scaling with `type` or null, top-level rope_theta and
    partial_rotary_factor)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    prf = overrides.pop("partial_rotary_factor", 1.0)
    theta = overrides.pop("rope_theta", 10000.0)
    heads = overrides.get("num_attention_heads", 4)
    rotary = int(64 // heads * prf)
    short, long = _factors(seed, rotary // 2)
    kwargs = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        "vocab_size": 256,
        "max_position_embeddings": 256,
        "original_max_position_embeddings": ORIG,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf},
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        **overrides,
    }
    if longrope:
        kwargs["rope_parameters"].update(rope_type="longrope", short_factor=short, long_factor=long)
    config = Phi3Config(**kwargs)
    config.architectures = ["Phi3ForCausalLM"]
    _save(_init(Phi3ForCausalLM(config), seed, 0.15), path, 1, "safetensors", "float32")
    if legacy_config:
        hf = json.loads((path / "config.json").read_text())
        hf.pop("rope_parameters")
        hf.pop("partial_rotary_factor", None)
        hf["rope_theta"] = theta
        if prf != 1.0:
            hf["partial_rotary_factor"] = prf
        hf["rope_scaling"] = {"type": "longrope", "short_factor": short, "long_factor": long} if longrope else None
        (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    return path


CASES: dict[str, Callable[[Path], Path]] = {
    # Phi-4-mini-like: GQA 4/2, head_dim 16, partial_rotary_factor 0.75 (rotary_dim 12), tied head
    "phi4_gqa_tied_partial": lambda p: make_tiny_phi3(p, partial_rotary_factor=0.75, tie_word_embeddings=True),
    # Phi-3-mini-4k-like, transformers-4 config.json: no rope scaling, 8 heads of 8, MHA, untied head
    "phi3_mha_untied_plain_legacy": lambda p: make_tiny_phi3(
        p, seed=1, longrope=False, legacy_config=True, num_attention_heads=8, num_key_value_heads=8, rope_theta=250000.0, tie_word_embeddings=False
    ),
}


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("phi3")
    return {name: make(base / name) for name, make in CASES.items()}


def _hf(src: Path) -> dict[str, Any]:
    return json.loads((src / "config.json").read_text())


def _cfg(src: Path, overrides: dict[str, Any] | None = None) -> Any:
    hf = _hf(src)
    return MODELS[detect_model_type(hf)].config_from_hf(hf, overrides or {})


# ---- config ----------------------------------------------------------------------------------

BASE_HF: dict[str, Any] = {
    "model_type": "phi3",
    "architectures": ["Phi3ForCausalLM"],
    "hidden_size": 3072,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "intermediate_size": 8192,
    "vocab_size": 200064,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}
SHORT48, LONG48 = [1.0 + i / 100 for i in range(48)], [2.0 + i / 10 for i in range(48)]


def _phi4_mini(shape: str, **rope_extra: Any) -> dict[str, Any]:
    """Phi-4-mini's config.json in the transformers-4 or -5 shape."""
    if shape == "tf4":
        rope = {"type": "longrope", "short_factor": SHORT48, "long_factor": LONG48, **rope_extra}
        return {**BASE_HF, "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "rope_scaling": rope}
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "short_factor": SHORT48, "long_factor": LONG48, **rope_extra}
    return {**BASE_HF, "rope_parameters": rope}


def test_config_both_shapes_and_round_trip() -> None:
    family = MODELS["phi3"]
    tf4 = family.config_from_hf(_phi4_mini("tf4"), {"prefill_chunk_size": 1024})
    tf5 = family.config_from_hf(_phi4_mini("tf5"), {"prefill_chunk_size": 1024})
    assert tf4 == tf5
    c = tf4
    assert (c.head_dim, c.rotary_dim, c.num_key_value_heads, c.tie_word_embeddings) == (128, 96, 8, True)
    assert (c.position_embedding_base, c.original_max_position_embeddings) == (10000.0, 4096)
    assert (c.context_window_size, c.prefill_chunk_size) == (131072, 1024)
    assert c.rope_scaling == {
        "type": "longrope",
        "rope_type": "longrope",
        "long_factor": LONG48,
        "short_factor": SHORT48,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
    }
    assert c.rope_ext_factors() == LONG48 + SHORT48  # TVM's table: long half first
    for cfg in (tf4, tf5):
        js = json.loads(json.dumps(cfg.to_json()))
        assert type(cfg).from_json(js) == cfg
        assert js["model_type"] == "phi3" and js["partial_rotary_factor"] == 0.75

    # Phi-3 "su" (early checkpoints) is longrope; Phi-3-mini-4k has no scaling at all
    su = family.config_from_hf({**_phi4_mini("tf4"), "rope_scaling": {"type": "su", "short_factor": SHORT48, "long_factor": LONG48}}, {})
    assert su.rope_scaling == tf4.rope_scaling
    plain = family.config_from_hf({**BASE_HF, "rope_scaling": None, "max_position_embeddings": 4096, "tie_word_embeddings": False}, {})
    assert plain.rope_scaling is None and plain.rope_ext_factors() is None and plain.rotary_dim == 128
    assert type(plain).from_json(json.loads(json.dumps(plain.to_json()))) == plain
    # explicit factor / attention_factor equal to what the kernel derives are accepted
    ok = family.config_from_hf(_phi4_mini("tf5", factor=32.0), {})
    assert ok.rope_scaling == tf4.rope_scaling


def test_tiny_configs(sources: dict[str, Path]) -> None:
    a = _cfg(sources["phi4_gqa_tied_partial"])
    assert (a.head_dim, a.rotary_dim, a.num_key_value_heads, a.tie_word_embeddings) == (16, 12, 2, True)
    assert len(a.rope_scaling["long_factor"]) == 6 and a.rope_scaling["original_max_position_embeddings"] == ORIG
    b = _cfg(sources["phi3_mha_untied_plain_legacy"])
    assert (b.head_dim, b.rotary_dim, b.num_key_value_heads, b.tie_word_embeddings) == (8, 8, 8, False)
    assert b.position_embedding_base == 250000.0 and b.rope_scaling is None and b.rope_ext_factors() is None
    legacy = _hf(sources["phi3_mha_untied_plain_legacy"])
    assert legacy["rope_scaling"] is None and "rope_parameters" not in legacy


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
        ({"rope_scaling": {"type": "longrope", "short_factor": SHORT48[:40], "long_factor": LONG48}}, "short_factor: has 40 entries"),
        ({"rope_scaling": {"type": "longrope", "short_factor": SHORT48}}, "long_factor: longrope needs a list"),
        ({"rope_scaling": {"type": "longrope", "short_factor": SHORT48, "long_factor": LONG48, "attention_factor": 1.0}}, "attention_factor 1.0 is not supported"),
        ({"partial_rotary_factor": 0.5703125}, "rotary_dim 73; it must be even"),
        ({"partial_rotary_factor": 1.5}, "must be ≤ 1"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"head_dim": 96}, "head_dim"),
        ({"num_key_value_heads": 7}, "not a multiple"),
    ],
)
def test_config_rejects_unsupported_values(change: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        MODELS["phi3"].config_from_hf({**_phi4_mini("tf4"), **change}, {})
    assert "\n" not in str(err.value)
    if change.keys() & {"partial_rotary_factor", "head_dim"}:
        assert isinstance(err.value, ConfigValueError)


def test_detect_model_type() -> None:
    assert detect_model_type({"model_type": "phi3"}) == "phi3"
    assert detect_model_type({"model_type": "phi3_custom", "architectures": ["Phi3ForCausalLM"]}) == "phi3"


# ---- convert plan vs nn module ----------------------------------------------------------------


@pytest.mark.parametrize("quant", sorted(SCHEMES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_outputs_equal_module_params(sources: dict[str, Path], case: str, quant: str) -> None:
    family = MODELS["phi3"]
    cfg = _cfg(sources[case])
    from tvm.relax.frontend import nn

    model = family.create_model(cfg, quant)
    spec = model.get_default_spec()
    if quant != "q0f32":  # the parameters do not depend on the methods: skip building the KV cache kernels
        keep = [i for i, name in enumerate(spec.method_names) if name in ("embed", "decode")]
        spec = nn.spec.ModuleSpec(model, [spec.method_names[i] for i in keep], [spec.method_specs[i] for i in keep])
    mod, named = model.export_tvm(spec=spec)
    from_model = [(n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named]
    plan = family.weight_plan(cfg, quant)
    assert from_model == [(o.name, tuple(o.shape), o.dtype) for o in plan.all_outputs()]  # MLC's order too
    if quant == "q0f32":
        assert EXPORTED <= {gv.name_hint for gv in mod.get_global_vars()}
    assert ("lm_head.weight" in plan.hf_shapes()) == (not cfg.tie_word_embeddings)


# ---- compiled forwards ------------------------------------------------------------------------


@dataclass
class Compiled:
    vm: Any
    params: list[Any]
    source: Path
    vocab_size: int

    def kv(self) -> Any:
        import tvm

        s = tvm.runtime.ShapeTuple
        kv = self.vm["create_tir_paged_kv_cache"](s([1]), s([256]), s([128]), s([16]), s([0]))
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, 0)
        return kv

    def step(self, kv: Any, fn: str, ids: np.ndarray, *extra: Any) -> np.ndarray:
        import tvm

        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(kv, tvm.runtime.ShapeTuple([0]), tvm.runtime.ShapeTuple([len(ids)]))
        emb = self.vm["embed"](tvm.runtime.tensor(ids.astype(np.int32)), self.params).numpy()[None]
        if fn == "decode":
            emb = emb.reshape(len(ids), 1, -1)
        logits, _ = self.vm[fn](tvm.runtime.tensor(emb), *extra, kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(kv)
        return logits.numpy()

    def all_logits(self, ids: np.ndarray) -> np.ndarray:
        """One batch_prefill call over the whole sequence, logits at every position."""
        import tvm

        return self.step(self.kv(), "batch_prefill", ids, tvm.runtime.tensor(np.arange(len(ids), dtype=np.int32)))[0]

    def prefill_then_decode(self, ids: np.ndarray, n_prompt: int) -> np.ndarray:
        """Logits at positions n_prompt-1 .. end: prefill(prompt), then one decode call per token."""
        kv = self.kv()
        out = [self.step(kv, "prefill", ids[:n_prompt])[0, -1]]
        for t in range(n_prompt, len(ids)):
            out.append(self.step(kv, "decode", ids[t : t + 1])[0, -1])
        return np.stack(out)

    def greedy(self, prompt: np.ndarray, n_new: int) -> list[int]:
        kv = self.kv()
        logits = self.step(kv, "prefill", prompt)[0, -1]
        out: list[int] = []
        for _ in range(n_new):
            out.append(int(logits.argmax()))
            logits = self.step(kv, "decode", np.array(out[-1:], np.int32))[0, -1]
        return out


@pytest.fixture(scope="session")
def compiled(sources: dict[str, Path]) -> Callable[[str, str], Compiled]:
    """Compile each (case, quantization) once per session."""
    cache: dict[tuple[str, str], Compiled] = {}

    def get(case: str, quant: str) -> Compiled:
        if (case, quant) not in cache:
            vm, params, cfg = compile_llvm(sources[case], quant)
            cache[(case, quant)] = Compiled(vm, params, sources[case], cfg.vocab_size)
        return cache[(case, quant)]

    return get


def _ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 256, n).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_q0f32_matches_transformers_within_original_window(compiled: Callable[[str, str], Compiled], case: str) -> None:
    model = compiled(case, "q0f32")
    ids = _ids(48, seed=0)  # 48 ≤ ORIG: short factors everywhere, in both
    want = hf_logits(model.source, ids)
    assert np.abs(model.all_logits(ids) - want).max() <= 1e-4
    assert np.abs(model.prefill_then_decode(ids, 16) - want[15:]).max() <= 1e-4


def test_q0f32_beyond_original_window(compiled: Callable[[str, str], Compiled], tmp_path: Path) -> None:
    """Past O: a single prefill of the whole sequence equals transformers (long factors); decode
    steps equal transformers with long_factor := short_factor (MLC's decode uses short factors)."""
    model = compiled("phi4_gqa_tied_partial", "q0f32")
    ids = _ids(96, seed=1)
    want = hf_logits(model.source, ids)
    assert np.abs(model.all_logits(ids) - want).max() <= 1e-4

    short_only = tmp_path / "short_only"
    shutil.copytree(model.source, short_only)
    hf = _hf(short_only)
    hf["rope_parameters"]["long_factor"] = hf["rope_parameters"]["short_factor"]
    (short_only / "config.json").write_text(json.dumps(hf))
    want_short = hf_logits(short_only, ids)
    got = model.prefill_then_decode(ids, 48)  # positions 47 .. 95
    assert np.abs(got - want_short[47:]).max() <= 1e-4
    # transformers, token by token: short factors up to O, then (cache recomputed) long ones
    assert np.abs(got[: ORIG - 47] - hf_logits(model.source, ids[:ORIG])[47:]).max() <= 1e-4
    assert np.abs(got[ORIG - 47 :] - want[ORIG:]).max() > 1e-2


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generation_matches_transformers(compiled: Callable[[str, str], Compiled], case: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = compiled(case, "q0f32")
    prompt = _ids(16, seed=2)  # 16 + 32 ≤ ORIG
    hf = AutoModelForCausalLM.from_pretrained(str(model.source), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf.generate(torch.as_tensor(prompt[None].astype(np.int64)), do_sample=False, max_new_tokens=32, min_new_tokens=32, pad_token_id=0)
    assert model.greedy(prompt, 32) == out[0, 16:].tolist()


def test_q4f16_1_matches_transformers_on_dequantized_weights(compiled: Callable[[str, str], Compiled]) -> None:
    model = compiled("phi4_gqa_tied_partial", "q4f16_1")
    ids = _ids(64, seed=3)
    got = model.all_logits(ids)
    want = hf_logits(model.source, ids, quantization="q4f16_1")
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= 0.1
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
