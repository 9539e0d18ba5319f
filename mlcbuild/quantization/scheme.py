"""Scheme descriptions (numbers only). Math lives in numpy_quant.py, nn layers in nn_quant.py."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantizationScheme:
    name: str
    model_dtype: str


@dataclass(frozen=True)
class NoQuantize(QuantizationScheme):
    pass


@dataclass(frozen=True)
class GroupQuantize(QuantizationScheme):
    bits: int = 4
    group_size: int = 32

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def per_word(self) -> int:
        return 32 // self.bits
