"""The MLC output contract in one place: file names, the typed mlc-chat-config.json, the output
layout and the tensor-cache reader.

steps, compiler, plan and runtime all read and write artifacts through this package, so a field or
a file name is spelled once. Importing it imports nothing heavy (no tvm, numpy, torch).
"""
from mlcbuild.artifact.chat_config import (
    ARCH_FIELDS,
    RUNTIME_SIZE_FIELDS,
    SAMPLING_FIELDS,
    SAMPLING_RANGES,
    ChatConfig,
    Range,
    RuntimeSizes,
    Sampling,
    TokenIds,
    TokenizerInfo,
    check_sampling,
)
from mlcbuild.artifact.names import CHAT_CONFIG, SHARD_PREFIX, TENSOR_CACHE, TOKENIZER_FILES, TOKENIZER_JSON

__all__ = [
    "ARCH_FIELDS",
    "CHAT_CONFIG",
    "RUNTIME_SIZE_FIELDS",
    "SAMPLING_FIELDS",
    "SAMPLING_RANGES",
    "SHARD_PREFIX",
    "TENSOR_CACHE",
    "TOKENIZER_FILES",
    "TOKENIZER_JSON",
    "ChatConfig",
    "Range",
    "RuntimeSizes",
    "Sampling",
    "TokenIds",
    "TokenizerInfo",
    "check_sampling",
]
