"""The `_metadata` function of a model library: what a loader checks before running anything.

MLC runtimes call `_metadata()` and parse the JSON it returns (`cpp/metadata/model.cc` requires
model_type, quantization, context_window_size, prefill_chunk_size, max_batch_size,
tensor_parallel_shards, kv_cache, params with name/shape/dtype/preprocs, memory_usage; WebLLM reads
kv_state_kind, params and prefill_chunk_size). We write every key MLC's `interface/compile.py`
writes, plus `vocab_size` and an `mlcbuild` block that MLC's parsers ignore.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from mlcbuild.artifact import ChatConfig


def kv_cache_dims(model_config: Mapping[str, Any], config_obj: Any = None) -> dict[str, int]:
    """Layers/heads/head_dim of the paged KV cache (read off the model config)."""

    def get(name: str, default: Any = None) -> Any:
        if config_obj is not None and hasattr(config_obj, name):
            return getattr(config_obj, name)
        return model_config.get(name, default)

    heads = int(get("num_attention_heads", 0) or 0)
    kv_heads = int(get("num_key_value_heads", 0) or heads)
    head_dim = int(get("head_dim", 0) or (int(get("hidden_size", 0)) // heads if heads else 0))
    return {
        "num_hidden_layers": int(get("num_hidden_layers", 0) or 0),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
    }


def param_entries(named_params: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """[{name, shape, dtype, preprocs, pipeline_stages}] in the order the library takes its packed
    parameters. No parameter is transformed at load time (`preprocs` empty: convert stores the final
    layout) and there is one pipeline stage."""
    out = []
    for name, param in named_params:
        shape = [_dim(d) for d in param.shape]
        out.append({"name": name, "shape": shape, "dtype": str(param.dtype), "preprocs": [], "pipeline_stages": [0]})
    return out


def _dim(d: Any) -> int | str:
    try:
        return int(d)
    except (TypeError, ValueError):
        return str(d)


def make_metadata(
    chat_config: Mapping[str, Any] | ChatConfig,
    named_params: Iterable[tuple[str, Any]],
    *,
    config_obj: Any = None,
    target: Mapping[str, Any] | None = None,
    tvm_version: str | None = None,
) -> dict[str, Any]:
    """Everything but memory_usage (known only after memory planning)."""
    config = chat_config if isinstance(chat_config, ChatConfig) else ChatConfig.from_json(chat_config)
    vocab_size = int(config.model_config.get("vocab_size") or config.vocab_size or 0)
    active = config.active_vocab_size
    return {
        "model_type": config.model_type,
        "quantization": config.quantization,
        **config.model_sizes().to_json(),
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "kv_cache": kv_cache_dims(config.model_config, config_obj),
        "vocab_size": vocab_size,
        "active_vocab_size": active if active and 0 < active < vocab_size else None,
        "model_task": "chat",
        "params": param_entries(named_params),
        "memory_usage": {},
        "mlcbuild": {"target": dict(target or {}), "apache_tvm": tvm_version},
    }


def dumps(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"))


def attach_metadata_pass(metadata: dict[str, Any], memory_usage: Mapping[str, int]):
    """A module pass adding `_metadata() -> str`; runs after memory planning to include usage."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="AttachMetadata")
    def attach(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        metadata["memory_usage"] = {k: int(v) for k, v in sorted(memory_usage.items()) if k != "_metadata"}
        bb = relax.BlockBuilder(mod)
        with bb.function("_metadata", params=[]):
            bb.emit_func_output(tvm.ir.StringImm(dumps(metadata)))
        return bb.get()

    return attach
