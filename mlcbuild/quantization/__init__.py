"""Registry of quantization schemes (pure Python: importing it must not import TVM)."""
from __future__ import annotations

from mlcbuild.errors import UserError
from mlcbuild.quantization.scheme import GroupQuantize, NoQuantize, QuantizationScheme

SCHEMES: dict[str, QuantizationScheme] = {
    "q0f16": NoQuantize("q0f16", model_dtype="float16"),
    "q0f32": NoQuantize("q0f32", model_dtype="float32"),
    "q4f16_1": GroupQuantize("q4f16_1", bits=4, group_size=32, model_dtype="float16"),
    "q4f32_1": GroupQuantize("q4f32_1", bits=4, group_size=32, model_dtype="float32"),
    "q3f16_1": GroupQuantize("q3f16_1", bits=3, group_size=40, model_dtype="float16"),
}


def get_scheme(name: str) -> QuantizationScheme:
    """The scheme called `name`, or a UserError listing the valid ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise UserError(f"unknown quantization {name!r}; valid: {', '.join(SCHEMES)}") from None


__all__ = ["SCHEMES", "GroupQuantize", "NoQuantize", "QuantizationScheme", "get_scheme"]
