"""Pieces every family's nn module shares: tied-embedding LM head, KV cache creation, the export spec."""
from __future__ import annotations

from typing import Any

from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target


class Embedding(nn.Embedding):
    """nn.Embedding that can also act as the (tied) LM head."""

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return op.matmul(x, op.permute_dims(self.weight), out_dtype="float32")


def resolve_target(target: Any) -> Target:
    """Explicit target, else the enclosing `with Target(...)`, else the host CPU."""
    if target is not None:
        return target if isinstance(target, Target) else Target(target)
    current = Target.current(allow_none=True)
    return current if current is not None else Target("llvm")


class CausalLMBase(nn.Module):
    """MLC's exported function set on top of a family's `forward_hidden` / `embed` / `get_logits`.

    Subclasses set: dtype, hidden_size, vocab_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim, rope_theta, rope_scaling, rotary_dim, target.
    """

    dtype: str
    hidden_size: int
    vocab_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any]
    rotary_dim: int
    target: Any = None

    def set_sizes(
        self, cfg: Any, dtype: str, target: Any, *, rope_theta: float, rotary_dim: int, rope_scaling: dict[str, Any] | None = None
    ) -> None:
        """The sizes this class reads (spec, KV cache) from a family's config."""
        self.dtype = dtype
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.num_hidden_layers = cfg.num_hidden_layers
        self.num_attention_heads = cfg.num_attention_heads
        self.num_key_value_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.rope_theta = rope_theta
        self.rope_scaling = dict(rope_scaling or {})
        self.rotary_dim = rotary_dim
        self.target = target

    def head_logits(self, embedding: Embedding, hidden: Tensor) -> Tensor:
        """float32 logits from the tied head (the embedding, transposed) or the model's `lm_head`."""
        logits = embedding.lm_head_forward(hidden) if getattr(self, "tie_word_embeddings", False) else self.lm_head(hidden)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def forward_hidden(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        raise NotImplementedError

    def get_logits(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, input_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def batch_forward(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache, logit_positions: Tensor | None = None) -> Tensor:
        hidden = self.forward_hidden(input_embeds, paged_kv_cache)
        if logit_positions is not None:
            hidden = op.take(hidden, logit_positions, axis=1)
        return self.get_logits(hidden)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        hidden = self.forward_hidden(input_embed, paged_kv_cache)
        hidden = op.tensor_expr_op(_te_take_last, "index_last", [hidden])
        return self.get_logits(hidden), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self.get_logits(self.forward_hidden(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self.batch_forward(input_embeds, paged_kv_cache, logit_positions), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self.batch_forward(input_embeds, paged_kv_cache), paged_kv_cache

    def batch_verify(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self.batch_forward(input_embeds, paged_kv_cache), paged_kv_cache

    def embed_checked(self, input_ids: Tensor) -> Tensor:
        """`embed` on ids clamped into [0, vocab_size): the gather never reads outside the table,
        whatever id a runtime passes (runtimes refuse such ids before they get here)."""
        ids = op.wrap_nested(rx.op.clip(input_ids._expr, rx.prim_value(0), rx.prim_value(self.vocab_size - 1)), name="input_ids_in_vocab")
        return self.embed(ids)

    def kv_cache_overrides(self) -> dict[str, Any]:
        """Arguments of TIRPagedKVCache a family changes (per-layer attention kinds, rope mode,
        rope_ext_factors...); everything else comes from the model's sizes."""
        return {}

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        args: dict[str, Any] = {
            "attn_kind": "mha",
            "max_batch_size": max_batch_size,
            "max_total_seq_len": max_total_seq_len,
            "prefill_chunk_size": prefill_chunk_size,
            "page_size": page_size,
            "support_sliding_window": support_sliding_window,
            "layer_partition": rx.ShapeExpr([0, self.num_hidden_layers]),
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "qk_head_dim": self.head_dim,
            "v_head_dim": self.head_dim,
            "mla_original_qk_head_dim": 0,
            "mla_original_v_head_dim": 0,
            "rope_mode": RopeMode.NORMAL,
            "rope_scale": 1,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rope_ext_factors": rx.prim_value(0),
            "rotary_dim": self.rotary_dim,
            "enable_disaggregation": False,
            "dtype": self.dtype,
            "target": resolve_target(self.target),
        }
        return TIRPagedKVCache(**{**args, **self.kv_cache_overrides()})

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        """The model's part of MLC's function set: embed, prefill, decode, batch_*,
        create_tir_paged_kv_cache (the rest is added at compile time, `compiler/abi`)."""
        kv = nn.spec.Object(object_type=PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        none = {"param_mode": "none", "effect_mode": "none"}
        h, dt = self.hidden_size, self.dtype
        spec = {
            "embed": nn.spec.MethodSpec.from_raw({"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed}, self.embed_checked),
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor(["batch_size", 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "batch_verify": {"input_embeds": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "create_tir_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": none,
            },
        }
        return nn.spec.ModuleSpec.from_raw(spec, self)


def _te_take_last(x: Any) -> Any:
    from tvm import te

    b, s, d = x.shape
    return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index_last")
