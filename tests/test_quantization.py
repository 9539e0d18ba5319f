"""Group quantization math: packing order and shapes on hand-made tensors, round-trip bounds,
fast path == reference oracle, scheme registry errors. Pure numpy, no TVM."""
from __future__ import annotations

import numpy as np
import pytest

from mlcbuild.errors import UserError
from mlcbuild.quantization import SCHEMES, get_scheme
from mlcbuild.quantization.numpy_quant import (
    cast_weight,
    group_dequantize,
    group_quantize,
    quantized_shapes,
    reference_group_quantize,
)

GROUPED = ["q4f16_1", "q4f32_1", "q3f16_1"]


def _weights_with_codes(codes: np.ndarray, scale: float, max_int: int, dtype: str = "float16") -> np.ndarray:
    """A weight whose quantization is exactly `codes` when every group holds the extreme code."""
    return ((codes.astype(np.float32) - max_int) * np.float32(scale)).astype(dtype)


def test_q4_packing_is_lsb_first_nk_layout() -> None:
    scheme = SCHEMES["q4f16_1"]
    codes = np.array([[1, 2, 3, 4, 5, 6, 7, 8] + [0] * 23 + [14]], dtype=np.uint32)
    w = _weights_with_codes(codes, 0.25, 7)
    q_weight, q_scale = group_quantize(w, scheme)
    assert q_weight.dtype == np.uint32 and q_weight.shape == (1, 4)
    assert q_scale.dtype == np.float16 and q_scale.shape == (1, 1)
    assert q_scale[0, 0] == np.float16(0.25)
    assert q_weight[0, 0] == 0x87654321
    assert q_weight[0, 1] == 0 and q_weight[0, 2] == 0
    assert q_weight[0, 3] == 0xE0000000


def test_q3_packing_ten_per_word_with_group_padding() -> None:
    scheme = SCHEMES["q3f16_1"]
    assert (scheme.group_size, scheme.per_word, scheme.max_int) == (40, 10, 3)
    codes = np.full((2, 64), 3, dtype=np.uint32)
    codes[0, :10] = [0, 1, 2, 3, 4, 5, 6, 0, 0, 6]
    codes[1, 40] = 6
    codes[1, 63] = 0
    w = _weights_with_codes(codes, 0.5, 3)
    q_weight, q_scale = group_quantize(w, scheme)
    assert q_weight.shape == (2, 8) and q_scale.shape == (2, 2)
    expected0 = sum(int(c) << (3 * j) for j, c in enumerate(codes[0, :10]))
    assert q_weight[0, 0] == expected0
    assert all(int(word) >> 30 == 0 for word in q_weight.reshape(-1))
    def lanes(word: int) -> list[int]:
        return [(int(word) >> (3 * j)) & 7 for j in range(10)]

    assert lanes(q_weight[1, 4])[0] == 6
    assert lanes(q_weight[1, 6]) == [3, 3, 3, 0, 3, 3, 3, 3, 3, 3]
    assert lanes(q_weight[1, 7]) == [3] * 10
    np.testing.assert_array_equal(group_dequantize(q_weight, q_scale, 64, scheme), w.astype(np.float32))


@pytest.mark.parametrize("name", GROUPED)
def test_shapes_follow_the_spec(name: str) -> None:
    scheme = SCHEMES[name]
    n, k = 48, 160 if scheme.bits == 4 else 120
    (qw, qs) = quantized_shapes((n, k), scheme)
    assert qw == (n, k // scheme.per_word)
    assert qs == (n, k // scheme.group_size)
    q_weight, q_scale = group_quantize(np.ones((n, k), np.float16), scheme)
    assert q_weight.shape == qw and q_scale.shape == qs
    assert str(q_scale.dtype) == scheme.model_dtype


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize("src_dtype", ["float16", "float32", "bfloat16"])
def test_round_trip_within_half_a_step(name: str, src_dtype: str) -> None:
    """|w - dequant(quant(w))| ≤ scale/2 (+ float32 rounding) for every element."""
    scheme = SCHEMES[name]
    rng = np.random.default_rng(1)
    w = cast_weight((rng.standard_normal((96, 200)) * 0.05).astype(np.float32), SCHEMES["q0f32"])
    from mlcbuild.quantization.numpy_quant import np_dtype

    w = w.astype(np_dtype(src_dtype))
    w_model = cast_weight(w, scheme)
    q_weight, q_scale = group_quantize(w_model, scheme)
    back = group_dequantize(q_weight, q_scale, 200, scheme)
    exact = w_model.astype(np.float32)
    step = np.repeat(q_scale.astype(np.float32), scheme.group_size, axis=1)[:, :200]
    assert np.all(np.abs(back - exact) <= step * (0.5 + 1e-3) + 1e-7)
    assert np.abs(back - exact).max() > 0


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize("src_dtype", ["float16", "float32"])
def test_fast_path_matches_reference_oracle(name: str, src_dtype: str) -> None:
    scheme = SCHEMES[name]
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((300, 320)) * 0.03).astype(src_dtype)
    w[5] = 0
    w[7, :40] = 3e-6
    w[9, 40:80] = 2e-4
    w[11, ::7] = 1.0
    got = group_quantize(w, scheme)
    want = reference_group_quantize(w, scheme)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    one_thread = group_quantize(w, scheme, threads=1)
    np.testing.assert_array_equal(got[0], one_thread[0])


def test_zero_group_quantizes_to_zero() -> None:
    scheme = SCHEMES["q4f16_1"]
    q_weight, q_scale = group_quantize(np.zeros((2, 64), np.float16), scheme)
    assert (q_scale == 0).all()
    assert (q_weight == 0x77777777).all()
    assert (group_dequantize(q_weight, q_scale, 64, scheme) == 0).all()


def test_non_finite_weight_is_rejected() -> None:
    w = np.ones((4, 64), np.float16)
    w[2, 3] = np.inf
    with pytest.raises(ValueError, match="inf or nan"):
        group_quantize(w, SCHEMES["q4f16_1"])


def test_q0_is_a_cast() -> None:
    w = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    assert cast_weight(w, SCHEMES["q0f32"]) is w
    np.testing.assert_array_equal(cast_weight(w, SCHEMES["q0f16"]), w.astype(np.float16))


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        get_scheme("q5f16_9")
    message = str(err.value)
    assert "q5f16_9" in message
    for name in SCHEMES:
        assert name in message


@pytest.mark.parametrize("max_int", [7, 3])
def test_integer_scale_rounding_equals_numpy_cast_for_every_fast_path_max(max_int: int) -> None:
    from mlcbuild.quantization.numpy_quant import _scales_from_fp16_max

    bits = np.concatenate([[0], np.arange(0x1000, 0x7C00)]).astype(np.uint16)
    scale, back = _scales_from_fp16_max(bits, max_int, np.dtype(np.float16))
    want = (bits.view(np.float16).astype(np.float32) / np.float32(max_int)).astype(np.float16)
    np.testing.assert_array_equal(scale.view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(back, want.astype(np.float32))


def test_a_new_kind_of_scheme_needs_no_change_elsewhere() -> None:
    """The weight plan asks the scheme what it quantizes, what that becomes and how: a per-row int8
    scheme written here (one class) converts through an unchanged WeightPlan."""
    from dataclasses import dataclass

    from mlcbuild.quantization.scheme import QuantizationScheme
    from mlcbuild.weights.plan import ParamSource, WeightPlan

    @dataclass(frozen=True)
    class PerRowInt8(QuantizationScheme):
        def quantizes(self, kind: str) -> bool:
            return kind == "linear"

        def outputs(self, prefix, shape):
            return [(f"{prefix}.q8", shape, "int8"), (f"{prefix}.row_scale", (shape[0], 1), self.model_dtype)]

        def quantize_weight(self, w):
            scale = np.abs(w).max(axis=1, keepdims=True).astype(np.float32) / 127
            return [np.rint(w / scale).astype(np.int8), scale]

    params = [ParamSource("fc.weight", ("fc.weight",), ((3, 4),), (3, 4), kind="linear"),
              ParamSource("norm.weight", ("norm.weight",), ((4,),), (4,))]
    plan = WeightPlan(params, PerRowInt8("q8f32", model_dtype="float32"))
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    produced = dict(plan.produce(params[0], [w]))
    assert [(o.name, o.shape, o.dtype) for o in plan.all_outputs()] == [
        ("fc.q8", (3, 4), "int8"), ("fc.row_scale", (3, 1), "float32"), ("norm.weight", (4,), "float32")]
    assert produced["fc.q8"].dtype == np.int8 and np.abs(produced["fc.q8"]).max() == 127
    assert plan.produce(params[1], [np.ones(4, np.float16)])[0][1].dtype == np.float32
    for name, scheme in SCHEMES.items():
        assert scheme.quantizes("linear") == (not name.startswith("q0")), name
