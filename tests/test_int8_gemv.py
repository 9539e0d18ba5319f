"""The decode GEMV on q4f16_1 weights as integer dot products (mlcbuild/compiler/int8_gemv.py).

Micro-kernels only (no model compile): the kernels compute a numpy statement of the same math on
random data (x86 here, aarch64 under qemu-user), the compiled code holds the integer dot-product
instructions the target has, and targets without them keep the float path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _target(variant: str):
    import tvm

    from mlcbuild.targets import resolve_target

    return tvm.target.Target(resolve_target("llvm", variant).tvm_target_config())


def _build(n: int, k: int, variant: str, levels: int, out_dtype: str = "float32", isa: str | None = None):
    import tvm

    from mlcbuild.compiler.int8_gemv import Isa, gemm_func, gemv_func, quantize_func

    target = _target(variant)
    isa = isa or Isa.of(target).name
    mod = tvm.IRModule({
        "quantize_q8": quantize_func(k, "float16", levels).with_attr("global_symbol", "quantize_q8"),
        "gemv": gemv_func(n, k, out_dtype, isa, levels).with_attr("global_symbol", "gemv"),
        "gemm": gemm_func(n, k, out_dtype, isa, levels).with_attr("global_symbol", "gemm"),
    })
    return tvm.compile(mod, target=target)


def _nibbles(w: np.ndarray) -> np.ndarray:
    """MLC's q4f16_1 words → [N, K] integers 0..15 (element j of a word in bits 4j..4j+3)."""
    return ((w[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).astype(np.int64).reshape(w.shape[0], -1)


def _dequantized(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    n = w.shape[0]
    return ((_nibbles(w) - 7).reshape(n, -1, 32) * s.astype(np.float64)[:, :, None]).reshape(n, -1)


def _problem(m: int, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random activations x[m, k] (row 1's first group all zero: scale 0, no division by zero), q4f16_1
    words w[n, k/8] and scales s[n, k/32]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float16)
    x[1, :32] = 0
    w = rng.integers(0, 2**32, (n, k // 8), dtype=np.uint64).astype(np.uint32)
    s = (rng.random((n, k // 32)) * 0.02).astype(np.float16)
    return x, w, s


def numpy_q4_q8_gemv(x: np.ndarray, w: np.ndarray, s: np.ndarray, levels: int) -> np.ndarray:
    """The integer path's math: x per group of 32 as base-256 int8 digits of x/d (d = max|x|/127),
    exact integer dot products with the nibbles, minus 7·Σx, times scale · d."""
    m, k = x.shape
    n = w.shape[0]
    xg = x.astype(np.float32).reshape(m, k // 32, 32)
    amax = np.abs(xg).max(-1)
    inv = np.where(amax > 0, np.float32(127) / np.maximum(amax, np.float32(1e-30)), np.float32(0)).astype(np.float32)
    scaled = (xg * inv[..., None]).astype(np.float32)
    first = np.rint(scaled)
    digits = first.astype(np.int64)
    unit = 127
    if levels == 2:
        rest = np.clip(np.rint((scaled - first) * np.float32(256)), -127, 127).astype(np.int64)
        digits = digits * 256 + rest
        unit = 127 * 256
    d = amax / np.float32(unit)
    nib = _nibbles(w).reshape(n, k // 32, 32)
    isum = np.einsum("ngj,mgj->mng", nib - 7, digits)
    return (isum * (s.astype(np.float32)[None] * d[:, None, :]).astype(np.float64)).sum(-1)


@pytest.mark.parametrize("variant, isa", [("x86_64", None), ("znver4", None), ("znver4", "vnni"), ("x86_64", "reference")])
@pytest.mark.parametrize("k", [64, 512])
@pytest.mark.parametrize("levels", [1, 2])
def test_integer_gemv_computes_the_numpy_statement(variant: str, isa: str | None, k: int, levels: int) -> None:
    """On x86: AVX2, AVX-512 VNNI (the GEMM on 512 bits), AVX-VNNI's 256-bit form (`vnni`), and the NEON
    kernel's split into 16-byte sdot halves with sdot's semantics written in plain TIR (`reference`;
    the aarch64 kernels themselves run under qemu below)."""
    import tvm

    needs = {"x86_64": {"avx2", "f16c"}, "znver4": {"avx512_vnni", "avx512vl", "avx512bw"}}[variant]
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    m, n = 70, 44  # 70 rows: three token blocks of the GEMM, the last short
    x, w, s = _problem(m, n, k, seed=k + levels)
    lib = _build(n, k, variant, levels, isa=isa)
    dev = tvm.cpu()
    xq = tvm.runtime.empty((m, levels * k), "int8", dev)
    zc = tvm.runtime.empty((m, k // 8), "int32", dev)
    xd = tvm.runtime.empty((m, k // 32), "float32", dev)
    y = tvm.runtime.empty((m, n), "float32", dev)
    lib["quantize_q8"](tvm.runtime.tensor(x, dev), xq, zc, xd)
    want = numpy_q4_q8_gemv(x, w, s, levels)
    exact = x.astype(np.float64) @ _dequantized(w, s).T
    for kernel in ("gemv", "gemm"):  # decode's rows one by one; prefill's 8 rows of W per task, N = 44 ends mid-tile
        lib[kernel](xq, zc, xd, tvm.runtime.tensor(w, dev), tvm.runtime.tensor(s, dev), y)
        out = y.numpy()
        assert np.abs(out - want).max() <= 1e-5 * np.abs(want).max(), kernel
        # one int8 digit is llama.cpp's Q8_0 error; two digits leave float32 rounding only
        assert np.abs(out - exact).max() <= (3e-2 if levels == 1 else 5e-4) * np.abs(exact).max(), kernel


@pytest.mark.parametrize("variant", ["x86_64", "znver4"])
def test_long_rows_prefetch_into_l2_and_give_the_same_bits(variant: str, monkeypatch) -> None:
    """Rows whose activation digits fill L1 (K = 8192, two digits: 20 KB) prefetch their weights into L2
    only (prefetcht1), shorter ones into L1 (prefetcht0); the locality changes no arithmetic, so the
    output is the same bit for bit, and the numpy statement's."""
    import tvm

    from mlcbuild.compiler import int8_gemv

    needs = {"x86_64": {"avx2", "f16c"}, "znver4": {"avx512_vnni", "avx512vl", "avx512bw"}}[variant]
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    m, n, k = 2, 32, 8192
    rng = np.random.default_rng(5)
    x = rng.standard_normal((m, k)).astype(np.float16)
    w = rng.integers(0, 2**32, (n, k // 8), dtype=np.uint64).astype(np.uint32)
    s = (rng.random((n, k // 32)) * 0.02).astype(np.float16)
    outputs = []
    for in_l1, used, unused in ((int8_gemv.ROW_BYTES_IN_L1, "prefetcht1", "prefetcht0"), (1 << 30, "prefetcht0", "prefetcht1")):
        monkeypatch.setattr(int8_gemv, "ROW_BYTES_IN_L1", in_l1)
        lib = _build(n, k, variant, 2)
        asm = lib.mod.inspect_source("asm")  # the GEMV is the module's only kernel that prefetches
        assert used in asm and unused not in asm
        dev = tvm.cpu()
        xq, zc, xd = (tvm.runtime.empty(shape, dtype, dev) for shape, dtype in (((m, 2 * k), "int8"), ((m, k // 8), "int32"), ((m, k // 32), "float32")))
        y = tvm.runtime.empty((m, n), "float32", dev)
        lib["quantize_q8"](tvm.runtime.tensor(x, dev), xq, zc, xd)
        lib["gemv"](xq, zc, xd, tvm.runtime.tensor(w, dev), tvm.runtime.tensor(s, dev), y)
        outputs.append(y.numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    want = numpy_q4_q8_gemv(x, w, s, 2)
    assert np.abs(outputs[0] - want).max() <= 1e-5 * np.abs(want).max()


KERNELS_ON_AARCH64 = """
import sys
import numpy as np
import tvm
folder, dev = sys.argv[1], tvm.cpu()
x, w, s = (np.load(f"{folder}/{name}.npy") for name in ("x", "w", "s"))
m, k, n = x.shape[0], x.shape[1], w.shape[0]
for levels in (1, 2):
    lib = tvm.runtime.load_module(f"{folder}/kernels{levels}.so")
    xq, zc, xd = tvm.runtime.empty((m, levels * k), "int8", dev), tvm.runtime.empty((m, k // 8), "int32", dev), tvm.runtime.empty((m, k // 32), "float32", dev)
    lib["quantize_q8"](tvm.runtime.tensor(x, dev), xq, zc, xd)
    for kernel in ("gemv", "gemm"):
        y = tvm.runtime.empty((m, n), "float32", dev)
        lib[kernel](xq, zc, xd, tvm.runtime.tensor(w, dev), tvm.runtime.tensor(s, dev), y)
        np.save(f"{folder}/y_{kernel}{levels}.npy", y.numpy())
"""


def test_aarch64_kernels_run_under_qemu_and_compute_the_numpy_statement(aarch64_python, tmp_path: Path) -> None:
    """The llvm:aarch64_dotprod kernels run: cross-compiled and linked here, loaded by TVM's aarch64
    runtime in an aarch64 Python under qemu-user (conftest `aarch64_python`), the activation quantizer,
    decode's GEMV and prefill's GEMM (NEON sdot) compute the numpy statement with one and two digits, as
    the x86 kernels do: 70 rows (three GEMM token blocks, the last short) × N = 44."""
    import shutil

    from tvm.support import cc

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64-linux-gnu-gcc (`make tools` installs gcc-aarch64-linux-gnu)")
    m, n, k = 70, 44, 512
    x, w, s = _problem(m, n, k, seed=11)
    for name, array in (("x", x), ("w", w), ("s", s)):
        np.save(tmp_path / f"{name}.npy", array)
    for levels in (1, 2):
        _build(n, k, "aarch64_dotprod", levels).export_library(str(tmp_path / f"kernels{levels}.so"), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    run = aarch64_python(KERNELS_ON_AARCH64, str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    for levels in (1, 2):
        want = numpy_q4_q8_gemv(x, w, s, levels)
        for kernel in ("gemv", "gemm"):
            out = np.load(tmp_path / f"y_{kernel}{levels}.npy")
            assert np.abs(out - want).max() <= 1e-5 * np.abs(want).max(), (kernel, levels)


@pytest.mark.parametrize(
    "variant, wanted, unwanted",
    [
        ("x86_64", ("vpmaddubsw", "vpmaddwd", "vcvtph2ps"), ("vpdpbusd",)),
        ("znver4", ("vpdpbusd", "vcvtph2ps"), ("vpmaddubsw",)),
        ("aarch64_dotprod", ("sdot\t", "fcvtl"), ()),
    ],
)
def test_compiled_gemv_uses_integer_dot_products(variant: str, wanted: tuple[str, ...], unwanted: tuple[str, ...]) -> None:
    lib = _build(64, 512, variant, 2, "float16")
    asm = lib.mod.imports[0].inspect_source("asm") if lib.mod.imports else lib.mod.inspect_source("asm")
    for instr in wanted:
        assert instr in asm, instr
    for instr in unwanted:
        assert instr not in asm, instr
    if variant == "znver4":  # the prefill GEMM's lanes are 16 of W's rows: each token's 4 digits broadcast from memory
        assert any("vpdpbusd" in line and "{1to16}" in line and "%zmm" in line for line in asm.splitlines())


def test_targets_without_integer_dot_products_keep_the_float_path() -> None:
    from mlcbuild.compiler.int8_gemv import Isa

    assert Isa.of(_target("x86_64")).name == "avx2"
    assert Isa.of(_target("znver4")).name == "vnni512"
    assert Isa.of(_target("x86_64_baseline")) is None
    assert Isa.of(_target("aarch64_dotprod")).name == "neon"
    assert Isa.of(_target("aarch64")) is None  # NEON without the dot-product extension


def test_decode_kernels_keep_their_state_out_of_the_workspace_allocator() -> None:
    """The quantizer's and the GEMV's per-task accumulators are stack arrays (`cpu_schedule.TASK_SCOPE`),
    not a TVMBackendAllocWorkspace call and free per task of 16 rows (480 per qkv GEMV of the 3B shape)."""
    import tvm

    from mlcbuild.compiler.int8_gemv import gemv_func, quantize_func

    mod = tvm.IRModule({
        "quantize_q8": quantize_func(256, "float16", 2).with_attr("global_symbol", "quantize_q8"),
        "gemv": gemv_func(64, 256, "float16", "avx2", 2).with_attr("global_symbol", "gemv"),
    })
    assert "TVMBackendAllocWorkspace" not in tvm.compile(mod, target=_target("x86_64")).mod.inspect_source("ll")
