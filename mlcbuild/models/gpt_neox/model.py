"""GPT-NeoX in tvm.relax.frontend.nn: partial rotary, LayerNorm with bias, (non-)parallel residual."""
from __future__ import annotations

from typing import Any

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from mlcbuild.models.gpt_neox.config import GPTNeoXConfig
from mlcbuild.models.gpt_neox.weights import ffn_out_dtype
from mlcbuild.models.nn_common import CausalLMBase, Embedding
from mlcbuild.quantization.scheme import QuantizationScheme


def _gelu(x: Tensor, act: str) -> Tensor:
    return op.gelu(x) if act == "gelu" else op.gelu(x, approximate="tanh")


class GPTNeoXAttention(nn.Module):
    def __init__(self, cfg: GPTNeoXConfig, dtype: str):
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * self.num_heads * self.head_dim, bias=True, dtype=dtype)
        self.dense = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=True, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.query_key_value(x), (b, s, 3 * self.num_heads, self.head_dim))
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.num_heads, sm_scale=self.head_dim**-0.5)
        return self.dense(op.reshape(out, (b, s, self.num_heads * self.head_dim)))


class GPTNeoXMLP(nn.Module):
    def __init__(self, cfg: GPTNeoXConfig, dtype: str):
        self.act = cfg.hidden_act
        self.dtype = dtype
        out_dtype = ffn_out_dtype(cfg, dtype)
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True, dtype=dtype, out_dtype=out_dtype)
        self.dense_4h_to_h = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True, dtype=dtype, out_dtype=out_dtype)

    def forward(self, x: Tensor) -> Tensor:
        """As MLC: both projections accumulate into ffn_out_dtype, gelu runs there, and each result
        is cast back to the model dtype."""
        y = _gelu(self.dense_h_to_4h(x), self.act)
        y = self.dense_4h_to_h(y if y.dtype == self.dtype else y.astype(self.dtype))
        return y if y.dtype == self.dtype else y.astype(self.dtype)


class GPTNeoXLayer(nn.Module):
    def __init__(self, cfg: GPTNeoXConfig, dtype: str):
        self.use_parallel_residual = cfg.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype)
        self.attention = GPTNeoXAttention(cfg, dtype)
        self.mlp = GPTNeoXMLP(cfg, dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        attn = self.attention(self.input_layernorm(x), kv, layer_id)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class GPTNeoXModel(nn.Module):
    def __init__(self, cfg: GPTNeoXConfig, dtype: str):
        self.embed_in = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([GPTNeoXLayer(cfg, dtype) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv, layer_id)
        return self.final_layer_norm(x)


class GPTNeoXForCausalLM(CausalLMBase):
    def __init__(self, cfg: GPTNeoXConfig, dtype: str, target: Any = None):
        self.gpt_neox = GPTNeoXModel(cfg, dtype)
        self.embed_out = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.set_sizes(cfg, dtype, target, rope_theta=cfg.position_embedding_base, rotary_dim=cfg.rotary_dim)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.gpt_neox.embed_in(input_ids)

    def forward_hidden(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        return self.gpt_neox(input_embeds, paged_kv_cache)

    def get_logits(self, hidden: Tensor) -> Tensor:
        logits = self.embed_out(hidden)
        return logits if logits.dtype == "float32" else logits.astype("float32")


def create_model(cfg: GPTNeoXConfig, scheme: QuantizationScheme, target: Any = None) -> GPTNeoXForCausalLM:
    return GPTNeoXForCausalLM(cfg, scheme.model_dtype, target)
