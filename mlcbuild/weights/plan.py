"""The HF → MLC parameter mapping of one model, as data: what convert executes and checks.

Each family's weights.py builds a WeightPlan from its config; quantization then turns every
`linear`/`embedding` parameter into X.q_weight + X.q_scale. numpy only, no TVM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from mlcbuild.quantization.numpy_quant import cast_to
from mlcbuild.quantization.scheme import QuantizationScheme

Combine = Callable[[Sequence[np.ndarray]], np.ndarray]


def identity(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return arrays[0]


def concat_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Fuse [out_i, in] weights (q/k/v, gate/up) along the output axis."""
    return np.concatenate(list(arrays), axis=0)


@dataclass(frozen=True)
class ParamSource:
    """One MLC parameter in float form and the HF tensors it is made from."""

    name: str
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]
    kind: str = "other"
    combine: Combine = identity
    dtype: str | None = None
    """Stored dtype of an unquantized parameter when it is not the model dtype (f32 biases)."""

    def prefix(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class OutputParam:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class WeightPlan:
    """Ordered MLC parameters, the HF tensors they need, and HF tensors that are known and dropped."""

    params: list[ParamSource]
    scheme: QuantizationScheme
    ignore: tuple[str, ...] = field(default_factory=tuple)
    aliases: dict[str, str] = field(default_factory=dict)
    """Checkpoint name → the name the plan uses (HF renamed some tensors across versions)."""

    def canonical(self, hf_name: str) -> str:
        return self.aliases.get(hf_name, hf_name)

    def is_quantized(self, p: ParamSource) -> bool:
        return self.scheme.quantizes(p.kind)

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: s for p in self.params for n, s in zip(p.hf_names, p.hf_shapes)}

    def ignored(self, hf_name: str) -> bool:
        return any(re.fullmatch(pat, hf_name) for pat in self.ignore)

    def outputs(self, p: ParamSource) -> list[OutputParam]:
        """Names, shapes and dtypes this parameter becomes in the tensor cache."""
        dtype = self.scheme.model_dtype
        if self.is_quantized(p):
            return [OutputParam(*out) for out in self.scheme.outputs(p.prefix(), p.shape)]
        return [OutputParam(p.name, p.shape, p.dtype or dtype)]

    def all_outputs(self) -> list[OutputParam]:
        return [o for p in self.params for o in self.outputs(p)]

    def produce(self, p: ParamSource, arrays: Sequence[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """Combine the HF tensors of one parameter and quantize/cast it to its outputs.

        Weights are cast to the model dtype before quantizing, as MLC does, so a float32 or
        bfloat16 checkpoint quantizes exactly like its float16 copy.
        """
        w = p.combine(arrays)
        if tuple(w.shape) != p.shape:
            raise ValueError(f"{p.name}: combined shape {tuple(w.shape)} != expected {p.shape}")
        if self.is_quantized(p):
            return [(out.name, array) for out, array in zip(self.outputs(p), self.scheme.quantize_weight(w), strict=True)]
        return [(p.name, np.ascontiguousarray(cast_to(w, p.dtype or self.scheme.model_dtype)))]

    def source_param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params)

