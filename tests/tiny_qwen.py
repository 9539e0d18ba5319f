"""Tiny random Qwen2 / Qwen3 checkpoints (hidden 64, 2 layers, vocab 256), like tests/tiny_models.py.

    from tests.tiny_qwen import make_tiny_qwen2, make_tiny_qwen3
    path = make_tiny_qwen3(tmp_path / "qwen3", head_dim=32, attention_bias=True)

`config_json` keys are written into config.json after saving, for fields transformers rewrites on
load (Qwen2.5's `sliding_window` next to `use_sliding_window: false` is saved as null otherwise).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:
    from tiny_models import TINY_COMMON, _init, _save
except ImportError:
    from tests.tiny_models import TINY_COMMON, _init, _save


def _patch(path: Path, config_json: dict[str, Any] | None) -> Path:
    if config_json:
        file = path / "config.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), **config_json}, indent=2, sort_keys=True))
    return path


def make_tiny_qwen2(
    path: Path | str, *, seed: int = 0, dtype: str = "float32", std: float = 0.15, config_json: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    """Tiny Qwen2ForCausalLM (GQA with 2 KV heads, rope_theta 1e6, tied embeddings unless overridden)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = {**TINY_COMMON, "num_key_value_heads": 2, "rope_theta": 1000000.0, "tie_word_embeddings": True, **overrides}
    config = Qwen2Config(**kwargs)
    config.architectures = ["Qwen2ForCausalLM"]
    return _patch(_save(_init(Qwen2ForCausalLM(config), seed, std), Path(path), 1, "safetensors", dtype), config_json)


def make_tiny_qwen3(
    path: Path | str, *, seed: int = 0, dtype: str = "float32", std: float = 0.15, config_json: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    """Tiny Qwen3ForCausalLM (GQA with 2 KV heads, head_dim 32 ≠ 64 / 4 heads, untied unless overridden)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kwargs = {**TINY_COMMON, "num_key_value_heads": 2, "head_dim": 32, "rope_theta": 1000000.0, "tie_word_embeddings": False, **overrides}
    config = Qwen3Config(**kwargs)
    config.architectures = ["Qwen3ForCausalLM"]
    return _patch(_save(_init(Qwen3ForCausalLM(config), seed, std), Path(path), 1, "safetensors", dtype), config_json)
