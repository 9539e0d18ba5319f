"""Group quantization in numpy: MLC's q*f*_1 math (schemes in quantization/scheme.py), fast enough to convert a 7B model in minutes.

Math (per row n of the HF [N, K] weight, per group of g along K):
    scale = model_dtype(max|w| / max_int)
    q     = clip(round_half_even(fl32(w * fl32(1/scale)) + max_int), 0, 2*max_int)
(the + max_int and the rounding are one exact step, as the magic-number trick below does it)
packed LSB-first into uint32 words (element j of a word in bits [bits*j, bits*(j+1))).
K is zero-padded to a multiple of g (q3f16_1 has g=40); padding quantizes to max_int (= 0.0).
`w * (1/scale)` uses the float32 reciprocal of the stored scale; it differs from a true division by
at most one float32 ulp, which never moves a value by more than scale/2 from its bucket.

Speed: numpy's float16→float32 cast is scalar (~5 ns/element), so fp16 input takes a bit-level
path (taken when every group's max|w| ≥ 2^-11, so the scale is a normal number and
|w/scale| ≤ max_int·(1+2^-10) needs no clipping): sign-extend the int16 pattern, shift by 13 and mask, which yields w·2^-112 as float32 exactly
(subnormals included), and the 2^112 is folded into the reciprocal. Rounding uses the 1.5·2^23
magic-number trick, so the integer is read from the low mantissa bits with no separate round/clip/cast.
For int4 the fp16 data is read as uint32 pairs, so even/odd elements decode with two arithmetic
shifts and land where the nibble packing wants them.
Work is done in row chunks that stay in L2 cache, and blocks of rows run on a small thread pool
(numpy releases the GIL inside ufuncs; MLCBUILD_QUANT_THREADS caps it, default: all cores).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mlcbuild.quantization.scheme import GroupQuantize, NoQuantize, QuantizationScheme

_MAGIC = np.float32(1.5 * 2**23)
_TWO_112 = np.float32(2.0**112)
_SIGN_EXP_MANT = np.int32(np.uint32(0x8FFFE000).view(np.int32))
_CHUNK_ELEMS = 1 << 18
_PARALLEL_MIN_ELEMS = 1 << 20

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("mlcbuild.quantization.numpy_quant assumes a little-endian host")


def np_dtype(name: str) -> np.dtype:
    """numpy dtype for a TVM/HF dtype name (bfloat16 via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class QuantizedShapes:
    """Shapes of X.q_weight / X.q_scale for an [N, K] weight: shared by numpy and the nn layers."""

    num_groups: int
    num_words: int

    @classmethod
    def of(cls, k: int, scheme: GroupQuantize) -> "QuantizedShapes":
        num_groups = -(-k // scheme.group_size)
        words_per_group = -(-scheme.group_size // scheme.per_word)
        return cls(num_groups, num_groups * words_per_group)


def quantized_shapes(shape: tuple[int, ...], scheme: GroupQuantize) -> tuple[tuple[int, int], tuple[int, int]]:
    """(q_weight shape, q_scale shape) for an HF [N, K] weight."""
    n, k = shape
    s = QuantizedShapes.of(k, scheme)
    return (n, s.num_words), (n, s.num_groups)


def _to_float32(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        return x
    if x.dtype.name == "bfloat16":
        return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def _group_absmax(x: np.ndarray, g: int) -> np.ndarray:
    """max|x| over consecutive groups of g elements (float, or fp16 bit patterns as uint16).

    reduceat is the fastest numpy reduction over many short contiguous segments.
    """
    flat = (x & np.uint16(0x7FFF)) if x.dtype == np.uint16 else np.abs(x)
    flat = flat.reshape(-1)
    return np.maximum.reduceat(flat, _segment_starts(flat.size, g))


_STARTS: dict[tuple[int, int], np.ndarray] = {}


def _segment_starts(size: int, g: int) -> np.ndarray:
    key = (size, g)
    if key not in _STARTS:
        _STARTS[key] = np.arange(0, size, g, dtype=np.intp)
    return _STARTS[key]


def _pack(q: np.ndarray, bits: int, per_word: int, words_per_group: int, g: int) -> np.ndarray:
    """q: contiguous uint8 [R, G*g] with values < 2**bits → uint32 [R, G*words_per_group], LSB first."""
    r = q.shape[0]
    if bits == 4 and g % 8 == 0:
        pairs = q.view(np.uint16)
        nib = (pairs | (pairs >> np.uint16(4))).astype(np.uint8)
        return nib.view(np.uint32).reshape(r, -1)
    groups = q.reshape(r, -1, g)
    padded = words_per_group * per_word
    if padded != g:
        groups = np.concatenate([groups, np.zeros((r, groups.shape[1], padded - g), groups.dtype)], axis=2)
    lanes = groups.reshape(r, -1, per_word).astype(np.uint32)
    out = lanes[:, :, 0].copy()
    for j in range(1, per_word):
        out |= lanes[:, :, j] << np.uint32(bits * j)
    return out


def _quantize_rows(w: np.ndarray, scheme: GroupQuantize, q_out: np.ndarray, s_out: np.ndarray) -> None:
    """Quantize a chunk of rows (already padded to whole groups) into the given output slices."""
    g, max_int = scheme.group_size, scheme.max_int
    sdt = np_dtype(scheme.model_dtype)
    r, kp = w.shape
    fast = w.dtype == np.float16
    if fast:
        amax_bits = _group_absmax(w.view(np.uint16), g)
        if int(amax_bits.max(initial=0)) >= 0x7C00:
            raise ValueError("weight holds inf or nan")
        fast = not bool(np.any((amax_bits - np.uint16(1)) < np.uint16(0x0FFF)))
    if fast:
        scale, s32 = _scales_from_fp16_max(amax_bits, max_int, sdt)
    else:
        x32 = _to_float32(w)
        if not np.isfinite(x32).all():
            raise ValueError("weight holds inf or nan")
        scale = (_group_absmax(x32, g) / np.float32(max_int)).astype(sdt)
        s32 = scale.astype(np.float32)
    s_out[...] = scale.reshape(r, -1)
    inv = np.zeros_like(s32)
    np.divide(np.float32(1), s32, out=inv, where=s32 != 0)
    if fast and scheme.bits == 4 and g % 8 == 0:
        q_out[...] = _q4_fp16_pairs(w, inv * _TWO_112, g, max_int)
        return
    if fast:
        y = w.view(np.int16).astype(np.int32)
        np.left_shift(y, 13, out=y)
        np.bitwise_and(y, _SIGN_EXP_MANT, out=y)
        y = y.view(np.float32).reshape(-1, g)
        np.multiply(y, (inv * _TWO_112)[:, None], out=y)
    else:
        y = np.multiply(x32.reshape(-1, g), inv[:, None], dtype=np.float32)
        np.clip(y, np.float32(-max_int), np.float32(max_int), out=y)
    np.add(y, _MAGIC + np.float32(max_int), out=y)
    q = y.reshape(r, kp).view(np.uint32).astype(np.uint8)
    wpg = -(-g // scheme.per_word)
    q_out[...] = _pack(q, scheme.bits, scheme.per_word, wpg, g)


def _scales_from_fp16_max(amax_bits: np.ndarray, max_int: int, sdt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale in the model dtype, scale as float32) from fp16 max|w| bit patterns, with integer ops.

    Only for the fast path: every nonzero max is a normal number ≥ 2^-11, so max/max_int is a
    normal float16 and round-to-nearest-even is `(bits + 0xFFF + lsb) >> 13` minus the exponent
    rebias; numpy's float32→float16 cast is scalar and would cost as much as the reduction.
    """
    zero = amax_bits == 0
    amax = ((amax_bits.astype(np.uint32) << np.uint32(13)) + np.uint32(112 << 23)).view(np.float32)
    amax[zero] = 0
    scale32 = amax / np.float32(max_int)
    if sdt != np.float16:
        return scale32.astype(sdt), scale32
    bits = scale32.view(np.uint32)
    half = ((bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)) - np.uint32(112 << 10)
    half[zero] = 0
    scale = half.astype(np.uint16).view(np.float16)
    back = ((half << np.uint32(13)) + np.uint32(112 << 23)).view(np.float32)
    back[zero] = 0
    return scale, back


def _q4_fp16_pairs(w: np.ndarray, inv_scaled: np.ndarray, g: int, max_int: int) -> np.ndarray:
    """int4 from fp16 working on uint32 pairs (h0 low half, h1 high half) of a contiguous chunk.

    Even and odd elements are decoded separately with arithmetic shifts, which is exactly the
    split the nibble packing needs: byte j of the output is q[2j] | q[2j+1] << 4.
    """
    r, kp = w.shape
    pairs = w.view(np.int32)
    even = np.left_shift(pairs, 16)
    np.right_shift(even, 3, out=even)
    np.bitwise_and(even, _SIGN_EXP_MANT, out=even)
    odd = np.right_shift(pairs, 3)
    np.bitwise_and(odd, _SIGN_EXP_MANT, out=odd)
    factor = np.repeat(inv_scaled, g // 2)
    offset = _MAGIC + np.float32(max_int)
    for half in (even, odd):
        f = half.view(np.float32).reshape(-1)
        np.multiply(f, factor, out=f)
        np.add(f, offset, out=f)
    np.left_shift(odd, 4, out=odd)
    np.bitwise_or(even, odd, out=even)
    return even.view(np.uint32).astype(np.uint8).view(np.uint32).reshape(r, -1)


def _threads() -> int:
    return max(1, min(int(os.environ.get("MLCBUILD_QUANT_THREADS", os.cpu_count() or 1)), 8))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="mlcbuild-quant")
    return _POOL


def group_quantize(w: np.ndarray, scheme: GroupQuantize, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HF [N, K] weight (float16/bfloat16/float32) → (q_weight uint32 [N, W], q_scale model dtype [N, G])."""
    if w.ndim != 2:
        raise ValueError(f"group quantization needs a 2-D weight, got shape {w.shape}")
    n, k = w.shape
    shapes = QuantizedShapes.of(k, scheme)
    kp = shapes.num_groups * scheme.group_size
    w = np.ascontiguousarray(w)
    if kp != k:
        w = np.concatenate([w, np.zeros((n, kp - k), w.dtype)], axis=1)
    q_weight = np.empty((n, shapes.num_words), np.uint32)
    q_scale = np.empty((n, shapes.num_groups), np_dtype(scheme.model_dtype))
    rows = max(1, _CHUNK_ELEMS // kp)

    def work(lo: int, hi: int) -> None:
        for r0 in range(lo, hi, rows):
            sl = slice(r0, min(r0 + rows, hi))
            _quantize_rows(w[sl], scheme, q_weight[sl], q_scale[sl])

    nthreads = min(_threads() if threads is None else threads, -(-n // rows))
    if nthreads <= 1 or n * kp < _PARALLEL_MIN_ELEMS:
        work(0, n)
    else:
        per = -(-n // nthreads)
        bounds = [(lo, min(n, lo + per)) for lo in range(0, n, per)]
        futures = [_pool().submit(work, lo, hi) for lo, hi in bounds[1:]]
        work(*bounds[0])
        for f in futures:
            f.result()
    return q_weight, q_scale


def group_dequantize(q_weight: np.ndarray, q_scale: np.ndarray, k: int, scheme: GroupQuantize) -> np.ndarray:
    """Inverse of group_quantize: float32 [N, K] = (q - max_int) * scale."""
    n = q_weight.shape[0]
    g, per_word = scheme.group_size, scheme.per_word
    wpg = -(-g // per_word)
    words = q_weight.reshape(n, -1, wpg)
    shifts = (np.arange(per_word, dtype=np.uint32) * np.uint32(scheme.bits))
    lanes = (words[..., None] >> shifts) & np.uint32((1 << scheme.bits) - 1)
    q = lanes.reshape(n, -1, wpg * per_word)[:, :, :g].astype(np.float32)
    w = (q - np.float32(scheme.max_int)) * q_scale.astype(np.float32)[:, :, None]
    return w.reshape(n, -1)[:, :k]


def reference_group_quantize(w: np.ndarray, scheme: GroupQuantize) -> tuple[np.ndarray, np.ndarray]:
    """Slow, obvious implementation of the same math: the oracle for tests."""
    n, k = w.shape
    shapes = QuantizedShapes.of(k, scheme)
    g = scheme.group_size
    x = np.zeros((n, shapes.num_groups * g), np.float32)
    x[:, :k] = _to_float32(w)
    x = x.reshape(n, shapes.num_groups, g)
    scale = (np.abs(x).max(axis=2) / np.float32(scheme.max_int)).astype(np_dtype(scheme.model_dtype))
    s32 = scale.astype(np.float32)
    inv = np.where(s32 == 0, np.float32(0), np.float32(1) / np.where(s32 == 0, 1, s32)).astype(np.float32)
    y = (x * inv[:, :, None]).astype(np.float64)
    q = np.clip(np.rint(y + scheme.max_int), 0, 2 * scheme.max_int).astype(np.uint32)
    wpg = -(-g // scheme.per_word)
    q = np.concatenate([q, np.zeros((n, shapes.num_groups, wpg * scheme.per_word - g), np.uint32)], axis=2)
    q = q.reshape(n, -1, scheme.per_word)
    words = np.zeros(q.shape[:2], np.uint32)
    for j in range(scheme.per_word):
        words |= q[:, :, j] << np.uint32(scheme.bits * j)
    return words, scale


def cast_weight(w: np.ndarray, scheme: QuantizationScheme) -> np.ndarray:
    """Unquantized parameters (norms, biases, q0 weights) in the model dtype."""
    return cast_to(w, scheme.model_dtype)


def cast_to(w: np.ndarray, dtype: str) -> np.ndarray:
    """`w` in dtype `dtype` (itself when it already is); bfloat16 widens exactly first."""
    target = np_dtype(dtype)
    if w.dtype == target:
        return w
    return _to_float32(w).astype(target) if w.dtype.name == "bfloat16" else w.astype(target)


__all__ = [
    "GroupQuantize",
    "NoQuantize",
    "QuantizedShapes",
    "cast_to",
    "cast_weight",
    "group_dequantize",
    "group_quantize",
    "np_dtype",
    "quantized_shapes",
    "reference_group_quantize",
]
