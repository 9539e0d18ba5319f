"""Registry of quantization schemes (pure Python: importing it must not import TVM)."""
from __future__ import annotations

from mlcbuild.quantization.scheme import QuantizationScheme, GroupQuantize, NoQuantize

SCHEMES: dict[str, QuantizationScheme] = {
    "q0f16": NoQuantize("q0f16", model_dtype="float16"),
    "q0f32": NoQuantize("q0f32", model_dtype="float32"),
    "q4f16_1": GroupQuantize("q4f16_1", bits=4, group_size=32, model_dtype="float16"),
    "q4f32_1": GroupQuantize("q4f32_1", bits=4, group_size=32, model_dtype="float32"),
    "q3f16_1": GroupQuantize("q3f16_1", bits=3, group_size=40, model_dtype="float16"),
}
