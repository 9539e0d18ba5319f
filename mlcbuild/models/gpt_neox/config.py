"""GPT-NeoX (Pythia, RedPajama-INCITE, Dolly): HF config.json → MLC model config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.models.config_base import (
    ConfigValueError,
    ModelConfigBase,
    bool_field,
    check_heads,
    float_field,
    int_field,
    rope_params,
    str_field,
)


@dataclass
class GPTNeoXConfig(ModelConfigBase):
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_hidden_layers: int = 0
    layer_norm_eps: float = 1e-5
    rotary_pct: float = 1.0
    position_embedding_base: float = 10000.0
    use_parallel_residual: bool = True
    hidden_act: str = "gelu"
    head_dim: int = 0
    ffn_out_dtype: str = "float32"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.head_dim == 0 and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads


def config_from_hf(hf: Mapping[str, Any], overrides: Mapping[str, Any]) -> GPTNeoXConfig:
    rope = rope_params(hf)
    hidden = int_field(hf, "hidden_size")
    heads = int_field(hf, "num_attention_heads")
    check_heads(hidden, heads, heads, False)
    cfg = GPTNeoXConfig(
        vocab_size=int_field(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=int_field(hf, "intermediate_size"),
        num_attention_heads=heads,
        num_hidden_layers=int_field(hf, "num_hidden_layers"),
        layer_norm_eps=float_field(hf, "layer_norm_eps", default=1e-5, above=0),
        rotary_pct=float_field(hf, "rotary_pct", default=rope.get("partial_rotary_factor", 1.0), above=0, at_most=1),
        position_embedding_base=float_field(
            hf, "rotary_emb_base", "rope_theta", default=rope.get("rope_theta", 10000.0), above=0
        ),
        use_parallel_residual=bool_field(hf, "use_parallel_residual", default=True),
        hidden_act=str_field(hf, "hidden_act", default="gelu"),
        tie_word_embeddings=bool_field(hf, "tie_word_embeddings", default=False),
    )
    if cfg.rotary_dim < 2 or cfg.rotary_dim % 2:
        raise ConfigValueError(f"head_dim {cfg.head_dim} × rotary_pct {cfg.rotary_pct} must give an even rotary size ≥ 2", "rotary_pct")
    if rope.get("rope_type", "default") not in ("default", None):
        raise UserError(f"gpt_neox: rope scaling {rope.get('rope_type')!r} is not supported")
    if hf.get("tie_word_embeddings"):
        raise UserError("gpt_neox: tie_word_embeddings=true is not supported")
    if hf.get("attention_bias") is False:
        raise UserError("gpt_neox: attention_bias=false is not supported")
    if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        raise UserError(f"gpt_neox: hidden_act {cfg.hidden_act!r} is not supported")
    cfg.apply_overrides(overrides)
    cfg.finalize_runtime_sizes(hf.get("max_position_embeddings"))
    return cfg
