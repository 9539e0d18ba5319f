"""Qwen2 / Qwen3 in tvm.relax.frontend.nn, in MLC's layout: q/k/v fused into `c_attn` (with bias),
gate/up fused into `gate_up_proj`. The block, the MLP and the LM head are Llama's; only attention differs.
"""
from __future__ import annotations

from typing import Any

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from mlcbuild.models.llama.model import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel
from mlcbuild.models.nn_common import Embedding
from mlcbuild.models.qwen2.config import Qwen2Config
from mlcbuild.quantization.scheme import QuantizationScheme


class Qwen2Attention(nn.Module):
    """Fused `c_attn` → paged KV cache (rope inside) → `o_proj`. With `cfg.qk_norm` (Qwen3) every q and
    k head is RMS-normed first: the q and k slices of the fused tensor are normed and concatenated back."""

    def __init__(self, cfg: Qwen2Config, dtype: str):
        self.num_q = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qk_norm = cfg.qk_norm
        self.c_attn = nn.Linear(cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.head_dim, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = nn.Linear(self.num_q * self.head_dim, cfg.hidden_size, bias=cfg.o_proj_bias, dtype=dtype)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
            self.k_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.c_attn(x), (b, s, self.num_q + 2 * self.num_kv, self.head_dim))
        if self.qk_norm:
            q, k, v = op.split(qkv, [self.num_q, self.num_q + self.num_kv], axis=2)
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.num_q, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.num_q * self.head_dim)))


class Qwen2DecoderLayer(LlamaDecoderLayer):
    """Llama's pre-norm block (forward inherited) around Qwen's attention."""

    def __init__(self, cfg: Qwen2Config, dtype: str):
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
        self.self_attn = Qwen2Attention(cfg, dtype)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype)  # type: ignore[arg-type]


class Qwen2Model(LlamaModel):
    def __init__(self, cfg: Qwen2Config, dtype: str):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([Qwen2DecoderLayer(cfg, dtype) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dtype)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Llama's embed / forward_hidden / tied-or-not LM head; rope without scaling."""

    def __init__(self, cfg: Qwen2Config, dtype: str, target: Any = None):
        self.model = Qwen2Model(cfg, dtype)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.set_sizes(cfg, dtype, target, rope_theta=cfg.rope_theta, rotary_dim=cfg.head_dim)


def create_model(cfg: Qwen2Config, scheme: QuantizationScheme, target: Any = None) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(cfg, scheme.model_dtype, target)
