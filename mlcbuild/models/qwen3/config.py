"""Qwen3 family: Qwen2 plus per-head q/k RMSNorm, an explicit head_dim and the attention_bias flag.

Field names follow MLC-LLM's Qwen3Config (Qwen2's plus `attention_bias`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from mlcbuild.models.config_base import bool_field
from mlcbuild.models.qwen2.config import Qwen2Config, build_config

_HF_DEFAULT_HEAD_DIM = 128
"""transformers' Qwen3Config default when config.json has no head_dim (not hidden / heads)."""


@dataclass
class Qwen3Config(Qwen2Config):
    attention_bias: bool = False

    qk_norm: ClassVar[bool] = True

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_proj_bias(self) -> bool:
        return self.attention_bias


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> Qwen3Config:
    return build_config(
        Qwen3Config,
        "qwen3",
        hf,
        overrides,
        head_dim_default=_HF_DEFAULT_HEAD_DIM,
        attention_bias=bool_field(hf, "attention_bias", default=False),
    )
