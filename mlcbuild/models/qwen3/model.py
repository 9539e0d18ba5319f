"""Qwen3 in tvm.relax.frontend.nn: Qwen2's modules, which add q_norm / k_norm and the attention_bias
flag when given a Qwen3Config (MLC's Qwen3 layout: c_attn, o_proj, q_norm, k_norm, gate_up_proj)."""
from __future__ import annotations

from mlcbuild.models.qwen2.model import create_model

__all__ = ["create_model"]
