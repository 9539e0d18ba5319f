"""Quantization schemes: the numbers of each, and what a scheme does to weights and to the model.

A scheme answers three questions, so convert, the weight plan and model export never ask which
kind of scheme they hold: which parameters it quantizes and what they become in the tensor cache
(`quantizes`, `outputs`), how a float weight becomes those arrays (`quantize_weight`, numpy), and
how the float nn model becomes the one that reads them (`quantize_model`, TVM). A new kind of
scheme (AWQ, fp8, per-channel) is one subclass plus a line in `quantization.SCHEMES`; the math
of the group scheme lives in numpy_quant.py and its layers in nn_quant.py, imported on use so
that importing this module imports neither numpy nor TVM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class QuantizationScheme:
    """A scheme that stores every parameter as is, in `model_dtype` (MLC's q0f16, q0f32)."""

    name: str
    model_dtype: str

    def quantizes(self, kind: str) -> bool:
        """Whether a parameter of this kind (`linear`, `embedding`, `other`) is quantized."""
        return False

    def outputs(self, prefix: str, shape: Shape) -> list[tuple[str, Shape, str]]:
        """(name, shape, dtype) of what a quantized `<prefix>.weight` of `shape` becomes."""
        raise NotImplementedError(f"{self.name} quantizes no parameter")

    def quantize_weight(self, w: "np.ndarray") -> list["np.ndarray"]:
        """A float HF weight → the arrays named by `outputs`, in that order (bit-reproducible)."""
        raise NotImplementedError(f"{self.name} quantizes no parameter")

    def quantize_model(self, model: Any) -> Any:
        """The float nn module with its quantized layers swapped in (imports TVM when it does)."""
        return model


@dataclass(frozen=True)
class NoQuantize(QuantizationScheme):
    pass


@dataclass(frozen=True)
class GroupQuantize(QuantizationScheme):
    """MLC's q*f*_1: `bits`-bit integers with one model-dtype scale per `group_size` inputs, packed
    LSB-first into uint32 words; linear and embedding weights become X.q_weight + X.q_scale."""

    bits: int = 4
    group_size: int = 32

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    def quantizes(self, kind: str) -> bool:
        return kind in ("linear", "embedding")

    def outputs(self, prefix: str, shape: Shape) -> list[tuple[str, Shape, str]]:
        from mlcbuild.quantization.numpy_quant import quantized_shapes

        q_weight, q_scale = quantized_shapes(shape, self)  # type: ignore[arg-type]
        return [(f"{prefix}.q_weight", q_weight, "uint32"), (f"{prefix}.q_scale", q_scale, self.model_dtype)]

    def quantize_weight(self, w: "np.ndarray") -> list["np.ndarray"]:
        from mlcbuild.quantization.numpy_quant import cast_weight, group_quantize

        return list(group_quantize(cast_weight(w, self), self))

    def quantize_model(self, model: Any) -> Any:
        from mlcbuild.quantization.nn_quant import swap_group_layers

        return swap_group_layers(model, self)
