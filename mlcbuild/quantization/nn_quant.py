"""Quantized nn layers, swapped in for nn.Linear / nn.Embedding after the float model is built.

Parameter names and shapes come from the same `QuantizedShapes` the numpy quantizer uses, so the
tensor cache written by convert and the parameters the model expects agree by construction.
Imports TVM: reached only through `ModelFamily.create_model`.
"""
from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlcbuild.quantization.numpy_quant import QuantizedShapes
from mlcbuild.quantization.scheme import GroupQuantize


def _float32_math_for_float16() -> bool:
    """On CPUs (no float16 arithmetic: LLVM widens and rounds after every operation) compute the
    float16 dequantize in float32 with one final rounding; `_dequantize_te` says why that is the
    same value."""
    from tvm.target import Target

    target = Target.current(allow_none=True)
    return target is not None and target.kind.name == "llvm"


def _dequantize_te(q_weight: te.Tensor, q_scale: te.Tensor, k: int, scheme: GroupQuantize) -> te.Tensor:
    """(q - max_int) * scale in the model dtype.

    The float32 form for float16 models is bit-identical: q - max_int is a small integer (exact in
    both), its product with a float16 scale needs ≤ bits + 11 ≤ 24 significand bits (exact in
    float32), so rounding it to float16 once is the single rounding of the float16 multiply.
    """
    g, per_word, bits = scheme.group_size, scheme.per_word, scheme.bits
    wpg = -(-g // per_word)
    mask = tirx.const((1 << bits) - 1, "uint32")
    dtype = scheme.model_dtype
    rows = q_weight.shape[0]
    widen = dtype == "float16" and bits <= 13 and _float32_math_for_float16()
    # widened scales are their own stage: a CPU schedule converts a tile of them with vector
    # instructions instead of one scalar float16 load + conversion per use
    scales = te.compute(q_scale.shape, lambda n, j: q_scale[n, j].astype("float32"), name="dequantize_scale") if widen else q_scale

    def fcompute(n: Any, i: Any) -> Any:
        group = i // g
        j = i % g
        word = q_weight[n, group * wpg + j // per_word]
        lane = ((j % per_word) * bits).astype("uint32")
        q = tirx.bitwise_and(tirx.shift_right(word, lane), mask)
        if widen:
            centered = (q.astype("int32") - tirx.const(scheme.max_int, "int32")).astype("float32")
            return (centered * scales[n, group]).astype(dtype)
        return (q.astype(dtype) - tirx.const(scheme.max_int, dtype)) * q_scale[n, group]

    return te.compute((rows, k), fcompute, name="dequantize")


SCHEME_ATTR = "mlcbuild.quantization"
"""The dequantize kernels' attribute naming their scheme (compiler/int8_gemv.py replaces q4f16_1's)."""


def dequantize(q_weight: Tensor, q_scale: Tensor, k: int, scheme: GroupQuantize) -> Tensor:
    """[N, words] uint32 + [N, groups] scales → [N, K] weight in the model dtype."""
    return op.tensor_expr_op(
        lambda w, s: _dequantize_te(w, s, k, scheme), "dequantize", [q_weight, q_scale], attrs={SCHEME_ATTR: scheme.name}
    )


class GroupQuantizeLinear(nn.Module):
    """y = x · dequantize(q_weight, q_scale)^T + bias, weight kept in NK layout like HF."""

    def __init__(self, in_features: int, out_features: int, scheme: GroupQuantize, bias: bool, out_dtype: str | None = None):
        s = QuantizedShapes.of(in_features, scheme)
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        self.out_dtype = out_dtype
        self.q_weight = nn.Parameter((out_features, s.num_words), "uint32")
        self.q_scale = nn.Parameter((out_features, s.num_groups), scheme.model_dtype)
        self.bias = nn.Parameter((out_features,), out_dtype or scheme.model_dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        w = dequantize(self.q_weight, self.q_scale, self.in_features, self.scheme)
        y = op.matmul(x, op.permute_dims(w), out_dtype=self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y


class GroupQuantizeEmbedding(nn.Module):
    """Embedding whose table is group-quantized; rows are gathered before dequantizing."""

    def __init__(self, num: int, dim: int, scheme: GroupQuantize):
        s = QuantizedShapes.of(dim, scheme)
        self.num = num
        self.dim = dim
        self.scheme = scheme
        self.q_weight = nn.Parameter((num, s.num_words), "uint32")
        self.q_scale = nn.Parameter((num, s.num_groups), scheme.model_dtype)

    def forward(self, x: Tensor) -> Tensor:
        ids = op.reshape(x, (-1,)) if x.ndim != 1 else x
        rows = dequantize(op.take(self.q_weight, ids, axis=0), op.take(self.q_scale, ids, axis=0), self.dim, self.scheme)
        if x.ndim == 1:
            return rows
        return op.reshape(rows, [*x.shape, self.dim])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        w = dequantize(self.q_weight, self.q_scale, self.dim, self.scheme)
        return op.matmul(x, op.permute_dims(w), out_dtype="float32")


class _Swap(nn.Mutator):
    def __init__(self, scheme: GroupQuantize):
        self.scheme = scheme

    def visit_module(self, name: str, node: Any) -> Any:
        from mlcbuild.models.nn_common import Embedding

        if isinstance(node, nn.Linear):
            return GroupQuantizeLinear(int(node.in_features), int(node.out_features), self.scheme, node.bias is not None, node.out_dtype)
        if isinstance(node, Embedding):
            return GroupQuantizeEmbedding(int(node.num), int(node.dim), self.scheme)
        return self.visit(name, node)


def swap_group_layers(model: nn.Module, scheme: GroupQuantize) -> nn.Module:
    """Swap Linear/Embedding layers for their group-quantized forms (`GroupQuantize.quantize_model`)."""
    return _Swap(scheme).visit("", model)
