"""Qwen3 HF → MLC parameters: Qwen2's mapping, which adds q_norm / k_norm and follows attention_bias
(c_attn.bias, o_proj.bias) when given a Qwen3Config."""
from __future__ import annotations

from mlcbuild.models.qwen2.weights import weight_plan

__all__ = ["weight_plan"]
