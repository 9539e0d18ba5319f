"""File names of an MLC artifact, as MLC-LLM's runtime looks for them."""
from __future__ import annotations

CHAT_CONFIG = "mlc-chat-config.json"
MODEL_SUFFIX = "-MLC"
"""A model folder's name ends so (`<name>-<quantization>-MLC`), as do MLC's prebuilt repos (mlc-ai/*-MLC)."""
TENSOR_CACHE = "tensor-cache.json"
LEGACY_TENSOR_CACHE = "ndarray-cache.json"
"""The same index under its name before TVM's 2025 rename; MLC-published folders still carry it."""
SHARD_PREFIX = "params_shard"
TOKENIZER_JSON = "tokenizer.json"

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.model",
    TOKENIZER_JSON,
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
"""MLC's list and order, plus special_tokens_map.json so HF tokenizers load from the output alone."""

MAX_JSON_BYTES = 64 << 20
"""Bigger than any real mlc-chat-config.json, tensor-cache.json or tokenizer.json; reading stops there."""
