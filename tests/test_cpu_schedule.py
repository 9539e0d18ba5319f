"""mlcbuild's llvm schedule rules (mlcbuild/compiler/cpu_schedule.py).

The matmul kernels of a real model library are parallel and vectorized and the library still
computes what transformers does (the session's compiled tiny models: no extra compile), gelu's erf
included (topi's vectorizable polynomial, not libm); the rules leave kernels they do not understand
alone; the float32 form of the float16 dequantize is bit-identical to float16 arithmetic for every scale.
"""
from __future__ import annotations

import numpy as np
import pytest

try:
    from test_compile import EXACT_TOL, FP16_TOL, _tokens, reference_logits
except ImportError:
    from tests.test_compile import EXACT_TOL, FP16_TOL, _tokens, reference_logits

ONE_DIGIT_TOL = 0.15
"""llama.cpp's one-digit activations: |error| ≤ d/2 per activation (0.061 on these logits, decode only)."""


def _prompt_and_reference(built, quantization: str = "q4f16_1") -> tuple[list[int], np.ndarray]:
    """28 tokens (the first 20 a prompt: prefill chunks of 16 and 4, the second against cached pages;
    then 8 decoded) and transformers' logits for the 9 positions `logits_for(ids[:20], ids[20:])` returns."""
    ids = _tokens(28, seed=3)
    return ids, reference_logits(built.hf_dir, built.model_dir, "gpt_neox", quantization, ids)[19:]


def _llvm() -> object:
    import tvm

    from mlcbuild.targets import resolve_target

    return tvm.target.Target(resolve_target("llvm", None).tvm_target_config())


def scheduled_kernels(model_dir, options: dict | None = None) -> dict[str, str]:
    """name -> TVMScript of every PrimFunc the llvm library of `model_dir` is compiled from."""
    import json

    import tvm
    from tvm import tirx

    from mlcbuild.compiler.build import export_model
    from mlcbuild.compiler.options import CompileOptions
    from mlcbuild.compiler.pipeline import schedule_passes, variable_bounds

    config = json.loads((model_dir / "mlc-chat-config.json").read_text())
    target = _llvm()
    mod, _, _ = export_model(config, target)
    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(schedule_passes(target, CompileOptions.from_json(options), variable_bounds(config), config))(mod)
    return {gv.name_hint: f.script() for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["q4f16_1", "q0f32"])
def test_matmul_kernels_are_parallel_vectorized_and_match_transformers(compiled_model, quantization: str) -> None:
    from mlcbuild.runtime.engine import Engine

    built = compiled_model("gpt_neox", quantization)
    kernels = scheduled_kernels(built.model_dir)
    matmuls = {name: text for name, text in kernels.items() if "NT_matmul" in name}
    # q4f16_1 matmuls, decode's and prefill's, are integer dot products (compiler/int8_gemv.py)
    gemvs = [name for name in kernels if name.startswith("q4_q8_gemv")]
    gemms = [name for name in kernels if name.startswith("q4_q8_gemm")]
    if quantization == "q0f32":
        assert len(matmuls) >= 8 and not gemvs and not gemms, sorted(kernels)
    else:
        assert len(gemvs) >= 4 and len(gemms) >= 4, sorted(kernels)
        assert not [name for name in matmuls if "dequantize" in name], sorted(kernels)
        # decode streams weights from DRAM and prefetches them ahead; prefill's GEMM reuses each tile
        assert all("llvm.prefetch" in kernels[name] for name in gemvs) and not any("llvm.prefetch" in kernels[name] for name in gemms)
    for name, text in matmuls.items():
        assert "T.parallel(" in text and "T.vectorized(" in text, name
    assert "T.parallel(" in kernels["temperature_softmax"]
    # attention: the vector kernels (compiler/cpu_attention_kernels.py), one (query, head) per parallel
    # task, scores in float32x8 lanes; decode prefetches the rows it streams; sliding windows keep TVM's
    for name in ("batch_decode_paged_kv_cpu", "batch_prefill_paged_kv_cpu", "batch_prefill_ragged_kv"):
        assert "for task in T.parallel(" in kernels[name] and "float32x8" in kernels[name], name
        assert ("llvm.prefetch" in kernels[name]) == name.startswith("batch_decode"), name
    assert "for h_qo in T.parallel(" in kernels["batch_decode_paged_kv_cpu_sliding_window"]
    gelus = [text for name, text in kernels.items() if name.endswith("gelu") or "_gelu" in name]
    assert gelus, sorted(kernels)
    for text in gelus:  # erf is libm's scalar call; the polynomial vectorizes with the epilogue
        assert "T.erf(" not in text and "T.vectorized(" in text

    engine = Engine.load(built.model_dir, built.lib)
    ids, ref = _prompt_and_reference(built, quantization)
    ours = engine.logits_for(ids[:20], ids[20:])
    assert np.abs(ours - ref).max() <= (EXACT_TOL if quantization == "q0f32" else FP16_TOL)


def _te_matmul(k: int):
    from tvm import te

    a = te.placeholder((1, k), "float32", name="A")
    w = te.placeholder((16, k), "float32", name="W")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((1, 16), lambda i, n: te.sum(a[i, r] * w[n, r], axis=r), name="NT_matmul")
    return te.create_prim_func([a, w, c])


def _te_softmax_like():
    from tvm import te

    a = te.placeholder((4, 64), "float32", name="A")
    r = te.reduce_axis((0, 64), name="k")
    m = te.compute((4,), lambda i: te.max(a[i, r], axis=r), name="max")
    out = te.compute((4, 64), lambda i, j: a[i, j] - m[i], name="sub")
    return te.create_prim_func([a, out])


def test_rules_schedule_what_they_understand_and_pass_on_the_rest() -> None:
    import tvm
    from tvm.script import tirx as T

    from mlcbuild.compiler.cpu_schedule import Injective, Matmul

    @T.prim_func(s_tir=True)
    def scatter(idx: T.Buffer((64,), "int32"), src: T.Buffer((64, 8), "float32"), dst: T.Buffer((64, 8), "float32")):
        for i, j in T.grid(64, 8):
            with T.sblock("scatter"):
                vi, vj = T.axis.remap("SS", [i, j])
                dst[idx[vi], vj] = src[vi, vj]

    llvm, cuda = _llvm(), tvm.target.Target("cuda")
    assert "T.parallel(" in Matmul().apply(_te_matmul(64), llvm, False).mod["main"].script()
    assert Matmul().apply(_te_matmul(64), cuda, False) is None
    assert Matmul().apply(_te_matmul(12), llvm, False) is None  # K not a multiple of the 8 lanes
    assert Matmul().apply(_te_softmax_like(), llvm, False) is None
    assert Matmul().apply(scatter, llvm, False) is None
    assert Injective().apply(scatter, llvm, False) is None  # parallel writes through idx could race
    assert Injective().apply(_te_softmax_like(), llvm, False) is None
    assert Injective().apply(_te_matmul(64), llvm, False) is None


def test_float32_dequantize_is_float16_arithmetic_bit_for_bit() -> None:
    """Every finite float16 scale times every 4-bit value, minus 7: the llvm form (float32, one
    rounding) against numpy's float16 arithmetic."""
    import tvm
    from tvm import te

    from mlcbuild.quantization import get_scheme
    from mlcbuild.quantization.nn_quant import _dequantize_te

    scheme = get_scheme("q4f16_1")
    bits = np.arange(1 << 16, dtype=np.uint16)
    scales = bits.view(np.float16)[np.isfinite(bits.view(np.float16))]
    nibbles = np.tile(np.arange(16, dtype=np.uint32), 2)  # one group of 32 per row
    words = (nibbles.reshape(4, 8) << (4 * np.arange(8, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    q_weight = np.tile(words, (scales.size, 1))
    target = _llvm()
    w = te.placeholder(q_weight.shape, "uint32", name="w")
    s = te.placeholder((scales.size, 1), "float16", name="s")
    with target:
        out = _dequantize_te(w, s, 32, scheme)
    assert "float32" in str(out.op.body)
    lib = tvm.compile(te.create_prim_func([w, s, out]), target=target)
    got = tvm.runtime.tensor(np.zeros((scales.size, 32), np.float16))
    lib(tvm.runtime.tensor(q_weight), tvm.runtime.tensor(scales.reshape(-1, 1)), got)
    with np.errstate(over="ignore"):  # the largest scales overflow to inf, in both
        want = (nibbles.astype(np.float16) - np.float16(7))[None, :] * scales[:, None]
    np.testing.assert_array_equal(got.numpy().view(np.uint16), want.view(np.uint16))


MODEL_ON_AARCH64 = """
import sys
import numpy as np
from mlcbuild.runtime.engine import Engine
model_dir, lib, out = sys.argv[1:4]
ids = [int(t) for t in sys.argv[4].split(",")]
np.save(out, Engine.load(model_dir, lib).logits_for(ids[:20], ids[20:]))
"""


@pytest.mark.slow
def test_aarch64_dotprod_library_runs_under_qemu_near_transformers(compiled_model, aarch64_python, tmp_path) -> None:
    """llvm:aarch64_dotprod is built here (TVM cross-compiles, aarch64-linux-gnu-gcc links) into an
    AArch64 shared object whose decode GEMVs use sdot, and it runs: our engine in an aarch64 Python on
    TVM's aarch64 runtime under qemu-user (conftest `aarch64_python`) prefills 20 tokens (chunks of 16
    and 4) and decodes 8, within the q4f16_1 tolerance of transformers, as the x86 library does."""
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64-linux-gnu-gcc (`make tools` installs gcc-aarch64-linux-gnu)")
    built = compiled_model("gpt_neox", "q4f16_1", "llvm:aarch64_dotprod")
    header = built.lib.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # ELF64
    assert int.from_bytes(header[16:18], "little") == 3  # ET_DYN: a linked shared object
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    import subprocess

    # the decode GEMVs are NEON dot products (compiler/int8_gemv.py); decode's prefetches (the GEMVs'
    # weights, attention's rows) are prfm pldl1keep; objdump comes with the cross gcc
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(built.lib)], capture_output=True, text=True, check=True).stdout
    assert "\tsdot\t" in disassembly and "pldl1keep" in disassembly
    ids, ref = _prompt_and_reference(built)
    run = aarch64_python(MODEL_ON_AARCH64, str(built.model_dir), str(built.lib), str(tmp_path / "logits.npy"), ",".join(map(str, ids)))
    assert run.returncode == 0, run.stderr[-3000:]
    ours = np.load(tmp_path / "logits.npy")
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= FP16_TOL


def test_attention_rewrite_leaves_other_kernels_alone() -> None:
    from mlcbuild.compiler.cpu_attention import parallel_heads

    assert parallel_heads(_te_matmul(64)) is None


@pytest.mark.parametrize("quantization", ["q3f16_1", "q4f32_1"])
def test_other_schemes_keep_the_float_decode_path(compiled_model, quantization: str) -> None:
    """The integer GEMV reads q4f16_1 only: q3f16_1's shapes equal q4f16_1's at K = 64 and 128, so the
    scheme is taken from the dequantize kernel, never from shapes."""
    kernels = scheduled_kernels(compiled_model.model_dir("gpt_neox", quantization))
    assert not [name for name in kernels if name.startswith("q4_q8_gemv")]
    assert any("dequantize" in name and "NT_matmul" in name for name in kernels)


@pytest.mark.slow
def test_one_digit_library_prefills_and_decodes_in_integers_near_transformers(compiled_model) -> None:
    """`cpu_int8_digits: 1` (llama.cpp's numerics): every q4f16_1 matmul, prefill's included, multiplies
    one-digit int8 activations; the library still runs the model, within that rounding of transformers."""
    from mlcbuild.runtime.engine import Engine

    try:
        from test_compile import DECODE, PROMPT
    except ImportError:
        from tests.test_compile import DECODE, PROMPT

    built = compiled_model("gpt_neox", "q4f16_1", options={"cpu_int8_digits": 1})
    ids = _tokens(PROMPT + DECODE)
    ours = Engine.load(built.model_dir, built.lib).logits_for(ids[:PROMPT], ids[PROMPT:])
    ref = reference_logits(built.hf_dir, built.model_dir, "gpt_neox", "q4f16_1", ids)[PROMPT - 1 :]
    err = np.abs(ours - ref).max(axis=-1)
    assert err.max() <= ONE_DIGIT_TOL, f"per-step max abs error {err}"
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert err.max() > FP16_TOL / 10, "the one-digit rounding shows: the integer path ran"


def test_native_library_runs_the_512_bit_gemm_near_transformers(compiled_model) -> None:
    """`llvm:znver4` (AVX-512 VNNI): prefill's GEMM takes 16 rows of W per task in 512-bit dot products
    with each token's digits broadcast from memory; the library matches transformers as the portable one
    does (20 prompt tokens: chunks of 16 and 4 rows)."""
    import subprocess

    from mlcbuild.runtime.engine import Engine
    from mlcbuild.steps.smoke import missing_cpu_features
    from mlcbuild.targets import target_params

    missing = missing_cpu_features(target_params("llvm", "znver4"))
    if missing:
        pytest.skip(f"this CPU cannot run an llvm:znver4 library: {missing}")
    built = compiled_model("gpt_neox", "q4f16_1", target="llvm:znver4")
    disassembly = subprocess.run(["objdump", "-d", str(built.lib)], capture_output=True, text=True, check=True).stdout
    assert any("vpdpbusd" in line and "{1to16}" in line and "%zmm" in line for line in disassembly.splitlines())
    ids, ref = _prompt_and_reference(built)
    ours = Engine.load(built.model_dir, built.lib).logits_for(ids[:20], ids[20:])
    assert np.abs(ours - ref).max() <= FP16_TOL


@pytest.mark.parametrize("digits, kernels_expected", [(1, True), (0, False)])
def test_int8_digits_option(compiled_model, digits: int, kernels_expected: bool) -> None:
    """`compile: {cpu_int8_digits: 1}` is llama.cpp's one-digit Q8_0 activation (64 int8 per row of
    the tiny model's 64 activations, not 128), for prefill's matmuls too (q4_q8_gemm); 0 keeps the
    float path; anything else is one line."""
    from mlcbuild.errors import UserError
    from mlcbuild.steps.compile import CompileStep
    from mlcbuild.targets import target_params

    kernels = scheduled_kernels(compiled_model.model_dir("gpt_neox", "q4f16_1"), {"cpu_int8_digits": digits})
    assert any(name.startswith("q4_q8_gemv") for name in kernels) == kernels_expected
    assert any(name.startswith("q4_q8_gemm") for name in kernels) == kernels_expected
    if kernels_expected:  # every q4f16_1 matmul is integer: no dequantize + NT_matmul kernel is left
        assert not [name for name in kernels if "dequantize" in name and "NT_matmul" in name], sorted(kernels)
    if kernels_expected:
        assert '(m, 64), "int8")' in kernels["quantize_q8"]
    with pytest.raises(UserError, match="cpu_int8_digits: must be 0 .* got 3"):
        CompileStep().check({"quantization": "q4f16_1", "target": target_params("llvm"), "options": {"cpu_int8_digits": 3}})
