"""Conformance with MLC's model-library ABI, checked the way MLC's runtimes use a library.

Written from MLC's sources (facts, not copies): `cpp/metadata/model.cc` (what `_metadata` must hold),
`cpp/serve/function_table.cc` (functions looked up by name, TIR kernels through the library's
imports), `python/mlc_llm/compiler_pass/attach_*.py` (argument shapes and semantics) and WebLLM's
`LLMChatPipeline` (`src/llm_chat.ts`: parameters by name from TVM's tensor cache, a paged KV cache from
`create_tir_paged_kv_cache`, temperature clamped to 1e-6, softmax → argsort → sample_with_top_p).
Every library `make test` builds for a family and scheme is driven through those functions here, and
each logit-processor and sampler function is compared with a numpy statement of MLC's semantics.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcbuild.compiler.abi import abi_functions

WEBLLM_REQUIRED = (
    "embed",
    "create_tir_paged_kv_cache",
    "softmax_with_temperature",
    "apply_bitmask_inplace",
    "apply_penalty_inplace",
    "apply_logit_bias_inplace",
    "sample_with_top_p",
    "argsort_probs",
)
MLC_ENGINE = (
    "embed",
    "prefill",
    "decode",
    "batch_prefill",
    "batch_decode",
    "batch_verify",
    "alloc_embedding_tensor",
    "multinomial_from_uniform",
    "renormalize_by_top_p",
    "sampler_take_probs",
    "sampler_verify_draft_tokens",
    "gather_probs",
    "scatter_probs",
    "gather_hidden_states",
    "scatter_hidden_states",
)
FLOAT32_MIN = np.finfo(np.float32).min

try:
    from conftest import TINY_FAMILIES
except ImportError:
    from tests.conftest import TINY_FAMILIES

CASES = [(family, quant) for family in TINY_FAMILIES for quant in ("q0f32", "q4f16_1")]


def mlc_metadata_problems(md: dict[str, Any]) -> list[str]:
    """What `ModelMetadata::FromJSON` (MLC's C++ parser) would refuse, as a list of reasons."""
    problems = []

    def need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> None:
        if key not in obj:
            problems.append(f"{where}{key}: missing")
        elif not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            problems.append(f"{where}{key}: {type(obj[key]).__name__}")

    for key in ("model_type", "quantization"):
        need(md, key, str)
    for key in ("context_window_size", "prefill_chunk_size", "max_batch_size", "tensor_parallel_shards"):
        need(md, key, int)
    for key in ("sliding_window_size", "attention_sink_size", "pipeline_parallel_stages"):
        if key in md:
            need(md, key, int)
    if md.get("kv_state_kind", "kv_cache") not in ("kv_cache", "rnn_state", "hybrid", "none"):
        problems.append(f"kv_state_kind: {md.get('kv_state_kind')!r}")
    if md.get("kv_state_kind", "kv_cache") in ("kv_cache", "hybrid"):
        need(md, "kv_cache", dict)
        for key in ("num_hidden_layers", "head_dim", "num_attention_heads", "num_key_value_heads"):
            need(md.get("kv_cache") or {}, key, int, "kv_cache.")
    need(md, "memory_usage", dict)
    for name, value in (md.get("memory_usage") or {}).items():
        if not isinstance(value, int):
            problems.append(f"memory_usage.{name}: {value!r}")
    need(md, "params", list)
    for i, p in enumerate(md.get("params") or []):
        where = f"params[{i}]."
        need(p, "name", str, where)
        need(p, "dtype", str, where)
        need(p, "shape", list, where)
        need(p, "preprocs", list, where)
        if not all(isinstance(d, int) and d >= 0 or isinstance(d, str) for d in p.get("shape") or []):
            problems.append(f"{where}shape: {p.get('shape')}")
        if "pipeline_stages" in p and not all(isinstance(s, int) for s in p["pipeline_stages"]):
            problems.append(f"{where}pipeline_stages: {p['pipeline_stages']}")
    return problems


class MLCStyleLibrary:
    """A library opened as MLC's runtimes open one: no mlcbuild runtime code involved."""

    def __init__(self, lib: Path, model_dir: Path):
        import tvm
        from tvm import relax

        self.tvm = tvm
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), self.dev)
        self.metadata = json.loads(str(self.vm["_metadata"]()))
        names = [p["name"] for p in self.metadata["params"]]
        tvm.get_global_func("vm.builtin.tensor_cache.load")(str(model_dir), self.dev.dlpack_device_type(), self.dev.index)
        self.params = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")(names)
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
        self.config = json.loads((model_dir / "mlc-chat-config.json").read_text())

    def fn(self, name: str) -> Any:
        return self.vm.module.get_function(name, query_imports=True)

    def t(self, array: Any, dtype: str) -> Any:
        return self.tvm.runtime.tensor(np.ascontiguousarray(array, dtype=dtype), self.dev)

    def greedy_webllm(self, prompt: list[int], n: int) -> list[int]:
        """WebLLM's loop: prefill in chunks, then decode; sampling on the library at temperature 1e-6."""
        tvm, shape = self.tvm, self.tvm.runtime.ShapeTuple
        chunk = int(self.metadata["prefill_chunk_size"])
        sliding = int(self.metadata.get("sliding_window_size", -1))
        window = sliding if sliding > 0 else int(self.config["context_window_size"])
        kv = self.fn("create_tir_paged_kv_cache")(shape([1]), shape([window]), shape([chunk]), shape([16]), shape([int(sliding > 0)]))
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, 0)
        if sliding > 0:
            sink = int(self.metadata.get("attention_sink_size", 0))
            tvm.get_global_func("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")(kv, 0, sliding, sink)
        begin, end = tvm.get_global_func("vm.builtin.kv_state_begin_forward"), tvm.get_global_func("vm.builtin.kv_state_end_forward")

        def forward(fn: str, ids: list[int]) -> Any:
            embed = self.fn("embed")(self.t(ids, "int32"), self.params)
            embed = embed._create_view((1, len(ids), int(embed.shape[-1]))) if fn == "prefill" else embed._create_view((1, 1, int(embed.shape[-1])))
            begin(kv, shape([0]), shape([len(ids)]))
            logits, _ = self.fn(fn)(embed, kv, self.params)
            end(kv)
            return logits

        for start in range(0, len(prompt), chunk):
            logits = forward("prefill", prompt[start : start + chunk])
        out = []
        for _ in range(n):
            vocab = int(logits.shape[-1])
            probs = self.fn("softmax_with_temperature")(logits._create_view((1, 1, vocab)), self.t([1e-6], "float32"))
            sorted_probs, sorted_idx = self.fn("argsort_probs")(probs._create_view((1, vocab)))
            token = int(
                self.fn("sample_with_top_p")(sorted_probs, sorted_idx, self.t([0.5], "float32"), self.t([0], "int32"), self.t([1.0], "float32")).numpy()[0]
            )
            out.append(token)
            logits = forward("decode", [token])
        return out


@pytest.fixture(scope="module")
def library(compiled_model):
    opened: dict[tuple[str, str], MLCStyleLibrary] = {}

    def get(family: str, quant: str) -> tuple[MLCStyleLibrary, Any]:
        built = compiled_model(family, quant)
        if (family, quant) not in opened:
            opened[(family, quant)] = MLCStyleLibrary(built.lib, built.model_dir)
        return opened[(family, quant)], built

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family,quant", CASES)
def test_library_loads_and_generates_the_way_mlc_runtimes_do(library, family: str, quant: str) -> None:
    lib, built = library(family, quant)
    assert mlc_metadata_problems(lib.metadata) == []
    assert [p["preprocs"] for p in lib.metadata["params"]] == [[] for _ in lib.metadata["params"]]
    for name in (*WEBLLM_REQUIRED, *MLC_ENGINE, *abi_functions("llvm")):
        assert lib.fn(name) is not None, name
    prompt = [5, 17, 99, 3, 42]
    tokens = lib.greedy_webllm(prompt, 10)  # 15 tokens: inside every tiny model's sliding window

    from mlcbuild.runtime.engine import Engine

    engine = Engine.load(built.model_dir, built.lib)
    logits = engine.logits_for(prompt, tokens[:-1])
    assert tokens == [int(t) for t in logits.argmax(-1)]
    if quant == "q0f32":
        import torch
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(built.hf_dir), dtype=torch.float32).eval()
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)[0, len(prompt) :].tolist()
        assert tokens == want


@pytest.mark.slow
def test_embedding_allocator_and_out_of_range_ids(library) -> None:
    lib, _ = library("llama", "q0f32")
    buf = lib.fn("alloc_embedding_tensor")()
    hidden = int(lib.metadata["kv_cache"]["num_attention_heads"] * lib.metadata["kv_cache"]["head_dim"])
    assert tuple(buf.shape) == (lib.metadata["prefill_chunk_size"], hidden) and str(buf.dtype) == "float32"
    vocab = lib.metadata["vocab_size"]
    rows = lib.fn("embed")(lib.t([vocab - 1, 99999999, -1, 0], "int32"), lib.params).numpy()
    assert np.array_equal(rows[1], rows[0]) and np.array_equal(rows[2], rows[3])


# ---- each logit-processor and sampler function against MLC's semantics ----------------------


@pytest.fixture(scope="module")
def funcs(library):
    return library("llama", "q4f16_1")[0]


@pytest.mark.slow
def test_apply_logit_bias_inplace(funcs) -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 300)).astype(np.float32)
    pos2seq, tokens, bias = [0, 2, 2, 1, 5, 0], [7, 0, 299, 7, 3, 300], [1.5, -2.0, 0.25, 3.0, 9.0, 9.0]
    dev = funcs.t(logits, "float32")
    funcs.fn("apply_logit_bias_inplace")(dev, funcs.t(pos2seq, "int32"), funcs.t(tokens, "int32"), funcs.t(bias, "float32"))
    want = logits.copy()
    for s, tok, b in zip(pos2seq[:4], tokens[:4], bias[:4]):
        want[s, tok] += b
    np.testing.assert_array_equal(dev.numpy(), want)  # the last two (row 5, token 300) are out of range: skipped


@pytest.mark.slow
def test_apply_penalty_inplace(funcs) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 64)).astype(np.float32)
    seq_ids = [3, 1]
    penalties = np.array([[0.5, 0.25, 1.3], [0.0, 0.0, 2.0]], np.float32)
    pos2seq, tokens, counts = [0, 0, 1, 1], [5, 9, 5, 63], [1, 3, 0, 2]
    dev = funcs.t(logits, "float32")
    funcs.fn("apply_penalty_inplace")(
        dev, funcs.t(seq_ids, "int32"), funcs.t(pos2seq, "int32"), funcs.t(tokens, "int32"), funcs.t(counts, "int32"), funcs.t(penalties, "float32")
    )
    want = logits.copy()
    for p, tok, cnt in zip(pos2seq, tokens, counts):
        presence, frequency, repetition = penalties[p]
        v = want[seq_ids[p], tok] - (presence + cnt * frequency)
        want[seq_ids[p], tok] = v * repetition if v < 0 else v / repetition
    np.testing.assert_allclose(dev.numpy(), want, rtol=1e-6)


@pytest.mark.slow
def test_apply_bitmask_inplace(funcs) -> None:
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 70)).astype(np.float32)
    bits = rng.integers(0, 2, (2, 96)).astype(bool)
    words = np.array([[int("".join("1" if b else "0" for b in row[w * 32 : w * 32 + 32][::-1]), 2) for w in range(3)] for row in bits], dtype=np.uint32)
    dev = funcs.t(logits, "float32")
    funcs.fn("apply_bitmask_inplace")(dev, funcs.t([1], "int32"), funcs.t(words.view(np.int32), "int32"))
    want = logits.copy()
    want[1, ~bits[1, :70]] = FLOAT32_MIN
    np.testing.assert_array_equal(dev.numpy(), want)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
def test_softmax_with_temperature_is_greedy_below_1e_5(funcs) -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 1, 256)).astype(np.float32)
    logits[3, 0, [10, 20]] = 50.0
    temps = np.array([0.5, 2.0, 1e-6, 0.0], np.float32)
    got = funcs.fn("softmax_with_temperature")(funcs.t(logits, "float32"), funcs.t(temps, "float32")).numpy()
    np.testing.assert_allclose(got[:2], _softmax(logits[:2] / temps[:2, None, None]), rtol=1e-5, atol=1e-7)
    assert not np.isnan(got).any()
    assert got[2, 0].argmax() == logits[2, 0].argmax() and got[2, 0].max() == 1.0 and got[2, 0].sum() == 1.0
    assert got[3, 0, 10] == got[3, 0, 20] == 0.5 and got[3, 0].sum() == 1.0


@pytest.mark.slow
def test_argsort_and_sample_with_top_p(funcs) -> None:
    from mlcbuild.runtime.sampling import sample_from_probs

    rng = np.random.default_rng(4)
    probs = _softmax(rng.standard_normal((3, 256)).astype(np.float32) * 3).astype(np.float32)
    sorted_probs, sorted_idx = funcs.fn("argsort_probs")(funcs.t(probs, "float32"))
    sp, si = sorted_probs.numpy(), sorted_idx.numpy()
    assert (np.diff(sp, axis=1) <= 0).all()
    np.testing.assert_array_equal(np.take_along_axis(probs, si.astype(np.int64), 1), sp)
    uniforms = rng.random(6).astype(np.float32)
    rows = np.array([0, 0, 1, 2, 2, 1], np.int32)
    top_p = np.array([0.5, 0.9, 1.0], np.float32)
    got = funcs.fn("sample_with_top_p")(sorted_probs, sorted_idx, funcs.t(uniforms, "float32"), funcs.t(rows, "int32"), funcs.t(top_p, "float32")).numpy()
    want = [sample_from_probs(probs[r], float(top_p[r]), float(u)) for r, u in zip(rows, uniforms)]
    assert got.tolist() == want


@pytest.mark.slow
def test_multinomial_from_uniform(funcs) -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    uniforms = np.array([0.05, 0.25, 0.99, 0.65, 0.75], np.float32)
    rows = np.array([0, 0, 0, 1, 1], np.int32)
    got = funcs.fn("multinomial_from_uniform")(funcs.t(probs, "float32"), funcs.t(uniforms, "float32"), funcs.t(rows, "int32")).numpy()
    want = [int(np.searchsorted(np.cumsum(probs[r]), u, side="right")) for r, u in zip(rows, uniforms)]
    assert got.tolist() == want == [0, 1, 3, 0, 1]


@pytest.mark.slow
def test_renormalize_by_top_p(funcs) -> None:
    probs = np.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25], [0.9, 0.05, 0.03, 0.02]], np.float32)
    top_p = np.array([0.6, 0.3, 1.0], np.float32)
    got = funcs.fn("renormalize_by_top_p")(funcs.t(probs, "float32"), funcs.t(top_p, "float32"), funcs.t(np.zeros((3, 3)), "float32")).numpy()
    want = np.array([[0, 4 / 7, 0, 3 / 7], [0.25, 0.25, 0.25, 0.25], [0.9, 0.05, 0.03, 0.02]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_sampler_take_probs(funcs) -> None:
    rng = np.random.default_rng(5)
    probs = _softmax(rng.standard_normal((2, 16))).astype(np.float32)
    sorted_idx = np.argsort(-probs, axis=1).astype(np.int32)
    sample_rows, results, offsets = np.array([0, 1], np.int32), np.array([3, 7], np.int32), np.array([0, 1, 16, 17, 999], np.int32)
    values, top_probs, top_idx = funcs.fn("sampler_take_probs")(
        funcs.t(probs, "float32"), funcs.t(sorted_idx, "int32"), funcs.t(sample_rows, "int32"), funcs.t(results, "int32"), funcs.t(offsets, "int32")
    )
    np.testing.assert_array_equal(values.numpy(), probs[sample_rows, results])
    want_idx = [sorted_idx[o // 16, o % 16] for o in offsets[:4]]
    assert top_idx.numpy().tolist() == [*want_idx, -1]
    np.testing.assert_array_equal(top_probs.numpy()[:4], [probs[o // 16, i] for o, i in zip(offsets[:4], want_idx)])


def _verify_reference(draft_probs, draft_tokens, model_probs, first_child, next_sibling, uniforms, parent_ptr):
    model_probs = model_probs.copy()
    parent_ptr = parent_ptr.copy()
    for b in range(len(parent_ptr)):
        parent = parent_ptr[b]
        child = first_child[parent]
        while child != -1:
            tok = draft_tokens[child]
            if model_probs[parent, tok] >= uniforms[child] * draft_probs[child, tok]:
                parent, child = child, first_child[child]
                continue
            residual = np.maximum(model_probs[parent] - draft_probs[child], 0)
            if residual.sum() < 1e-7:
                parent, child = child, first_child[child]
            else:
                model_probs[parent] = residual / residual.sum()
                child = next_sibling[child]
        parent_ptr[b] = parent
    return model_probs, parent_ptr


@pytest.mark.slow
def test_sampler_verify_draft_tokens(funcs) -> None:
    """Two token trees: root 0 → {1 → {3}, 2}; root 4 → {5}."""
    rng = np.random.default_rng(6)
    vocab = 8
    draft = _softmax(rng.standard_normal((6, vocab))).astype(np.float32)
    model = _softmax(rng.standard_normal((6, vocab))).astype(np.float32)
    draft[1] = _softmax(np.eye(vocab)[2] * 6)  # child 1 proposes token 2 far more often than the model would
    model[0] = _softmax(-np.eye(vocab)[2] * 3)
    tokens = np.array([0, 2, 5, 1, 0, 6], np.int32)
    first_child = np.array([1, 3, -1, -1, 5, -1], np.int32)
    next_sibling = np.array([-1, 2, -1, -1, -1, -1], np.int32)
    uniforms = np.array([0.0, 0.99, 0.1, 0.3, 0.0, 0.2], np.float32)
    parent = np.array([0, 4], np.int32)
    want_probs, want_parent = _verify_reference(draft, tokens, model, first_child, next_sibling, uniforms, parent)
    model_dev, parent_dev = funcs.t(model, "float32"), funcs.t(parent, "int32")
    funcs.fn("sampler_verify_draft_tokens")(
        funcs.t(draft, "float32"), funcs.t(tokens, "int32"), model_dev, funcs.t(first_child, "int32"), funcs.t(next_sibling, "int32"), funcs.t(uniforms, "float32"), parent_dev
    )
    assert parent_dev.numpy().tolist() == want_parent.tolist()
    np.testing.assert_allclose(model_dev.numpy(), want_probs, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(want_probs, model)  # the case exercises a rejection


@pytest.mark.slow
def test_gather_and_scatter(funcs) -> None:
    rng = np.random.default_rng(7)
    src = rng.standard_normal((5, 6)).astype(np.float32)
    idx = np.array([4, 0, 2], np.int32)
    dst = funcs.t(np.zeros((3, 6)), "float32")
    funcs.fn("gather_probs")(funcs.t(src, "float32"), funcs.t(idx, "int32"), dst)
    np.testing.assert_array_equal(dst.numpy(), src[idx])
    back = funcs.t(np.zeros((5, 6)), "float32")
    funcs.fn("scatter_probs")(funcs.t(src[:3], "float32"), funcs.t(idx, "int32"), back)
    want = np.zeros((5, 6), np.float32)
    want[idx] = src[:3]
    np.testing.assert_array_equal(back.numpy(), want)
    hidden = funcs.t(np.zeros((3, 6)), "float16")
    out = funcs.fn("gather_hidden_states")(funcs.t(src, "float16"), funcs.t(idx, "int32"), hidden)
    np.testing.assert_array_equal(out.numpy(), src.astype(np.float16)[idx])


# ---- WebGPU: TVM's GPU sort does not compile there, our bitonic sort does ---------------------


def test_bitonic_argsort_network_sorts_any_length() -> None:
    """The network WebGPU's argsort_probs runs, as serial loops on llvm: descending, ties by index."""
    import tvm

    from mlcbuild.compiler.abi.bitonic import bitonic_argsort

    llvm = tvm.target.Target({"kind": "llvm"})
    lib = tvm.compile(tvm.IRModule({"bitonic": bitonic_argsort(llvm).with_attr("global_symbol", "bitonic")}), target=llvm)
    rng = np.random.default_rng(8)
    for v in (1, 2, 3, 5, 16, 17, 100, 257, 1000):
        probs = rng.random((3, v)).astype(np.float32)
        probs[0, : v // 2] = 0.5
        values, indices = tvm.runtime.empty((3, v), "float32"), tvm.runtime.empty((3, v), "int32")
        lib["bitonic"](tvm.runtime.tensor(probs), values, indices)
        want = np.stack([np.lexsort((np.arange(v), -row)) for row in probs])
        np.testing.assert_array_equal(indices.numpy(), want)
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(probs, want, 1))


@pytest.mark.slow
def test_webgpu_library_generates_code_with_webllms_functions(compiled_model) -> None:
    """The whole pipeline for webgpu up to WGSL (linking the .wasm needs Emscripten, absent here):
    argsort_probs and sample_with_top_p are there, the int8-using sampler functions are not (as MLC)."""
    import tvm
    from tvm import relax

    from mlcbuild.compiler.build import export_model, make_tvm_target
    from mlcbuild.compiler.metadata import attach_metadata_pass, make_metadata
    from mlcbuild.compiler.pipeline import CompileOptions, build_pipeline, variable_bounds
    from mlcbuild.targets import resolve_target

    config = json.loads((compiled_model.model_dir("llama", "q4f16_1") / "mlc-chat-config.json").read_text())
    target = make_tvm_target(resolve_target("webgpu", None))
    mod, named, config_obj = export_model(config, target)
    metadata = make_metadata(config, named, config_obj=config_obj)
    usage: dict[str, int] = {}
    pipeline = build_pipeline(target, CompileOptions(), variable_bounds(metadata), usage, [attach_metadata_pass(metadata, usage)], metadata=metadata)
    with tvm.transform.PassContext(opt_level=3):
        text = relax.build(mod, target=target, relax_pipeline=pipeline, system_lib=True).as_text()
    assert "argsort_probs" in text and "sample_with_top_p" in text and "softmax_with_temperature" in text
    assert "multinomial_from_uniform" not in text and "sampler_take_probs" not in text


@pytest.mark.parametrize(
    "target, variant, prefix",
    [("metal", "ios", "qwen2_q4f16_1_"), ("opencl", "android", "qwen2_q4f16_1_"), ("vulkan", "android", "qwen2_q4f16_1_"),
     ("webgpu", None, ""), ("llvm", None, ""), ("metal", "macos", "")],
)
def test_system_lib_prefix_only_where_mlc_uses_one(target: str, variant: str | None, prefix: str) -> None:
    """MLC prefixes static libraries for iOS/macabi/Android apps (several models in one binary); TVM's
    JS runtime, which WebLLM uses, calls SystemLib() without a prefix."""
    from mlcbuild.compiler.build import system_lib_prefix
    from mlcbuild.targets import resolve_target

    assert system_lib_prefix({"model_type": "qwen2", "quantization": "q4f16_1"}, resolve_target(target, variant)) == prefix
