"""Llama family in tvm.relax.frontend.nn (MLC's layout: fused qkv_proj and gate_up_proj)."""
from __future__ import annotations

from typing import Any

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from mlcbuild.models.llama.config import LlamaConfig
from mlcbuild.models.nn_common import CausalLMBase, Embedding
from mlcbuild.quantization.scheme import QuantizationScheme


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: str):
        self.num_q = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.head_dim, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(self.num_q * self.head_dim, cfg.hidden_size, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.num_q + 2 * self.num_kv, self.head_dim))
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.num_q, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.num_q * self.head_dim)))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: str):
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: str):
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
        self.self_attn = LlamaAttention(cfg, dtype)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: str):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([LlamaDecoderLayer(cfg, dtype) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv, layer_id)
        return self.norm(x)


class LlamaForCausalLM(CausalLMBase):
    def __init__(self, cfg: LlamaConfig, dtype: str, target: Any = None):
        self.model = LlamaModel(cfg, dtype)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.set_sizes(cfg, dtype, target, rope_theta=cfg.position_embedding_base, rotary_dim=cfg.head_dim, rope_scaling=cfg.rope_scaling)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def forward_hidden(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        return self.model(input_embeds, paged_kv_cache)

    def get_logits(self, hidden: Tensor) -> Tensor:
        return self.head_logits(self.model.embed_tokens, hidden)


def create_model(cfg: LlamaConfig, scheme: QuantizationScheme, target: Any = None) -> LlamaForCausalLM:
    return LlamaForCausalLM(cfg, scheme.model_dtype, target)
