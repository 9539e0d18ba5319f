"""Registry of model families. Adding a family is one folder plus one line in MODELS.

Importing this module must not import TVM, numpy-heavy code or transformers.
"""
from __future__ import annotations

from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.models.family import ModelFamily

MODELS: dict[str, ModelFamily] = {
    "gemma2": ModelFamily("gemma2", "mlcbuild.models.gemma2", "Gemma2Config", ("gemma2",), ("Gemma2ForCausalLM",), ("gemma_instruction",)),
    "gemma3": ModelFamily("gemma3", "mlcbuild.models.gemma3", "Gemma3Config", ("gemma3_text",), ("Gemma3ForCausalLM",), ("gemma3_instruction",)),
    "gpt_neox": ModelFamily("gpt_neox", "mlcbuild.models.gpt_neox", "GPTNeoXConfig", ("gpt_neox",), ("GPTNeoXForCausalLM",), ("redpajama_chat", "dolly")),
    "llama": ModelFamily("llama", "mlcbuild.models.llama", "LlamaConfig", ("llama",), ("LlamaForCausalLM",), ("llama-3_1", "llama-3", "llama-2", "tinyllama_v1_0"), adds_bos=True),
    "mistral": ModelFamily("mistral", "mlcbuild.models.llama", "LlamaConfig", ("mistral",), ("MistralForCausalLM",), ("mistral_default",)),
    "phi3": ModelFamily("phi3", "mlcbuild.models.phi3", "Phi3Config", ("phi3",), ("Phi3ForCausalLM",), ("phi-3",)),
    "qwen2": ModelFamily("qwen2", "mlcbuild.models.qwen2", "Qwen2Config", ("qwen2",), ("Qwen2ForCausalLM",), ("qwen2",)),
    "qwen3": ModelFamily("qwen3", "mlcbuild.models.qwen3", "Qwen3Config", ("qwen3",), ("Qwen3ForCausalLM",), ("qwen3",)),
}


def detect_model_type(hf_config: Mapping[str, Any]) -> str:
    """The MODELS key for an HF config.json (its `model_type`, else its `architectures`)."""
    model_type = hf_config.get("model_type")
    for name, family in MODELS.items():
        if model_type in family.hf_model_types:
            return name
    for arch in hf_config.get("architectures") or ():
        for name, family in MODELS.items():
            if arch in family.hf_architectures:
                return name
    raise UserError(
        f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(sorted(MODELS))}"
    )


def get_family(model_type: str) -> ModelFamily:
    """The family for a model_type, or a UserError listing the supported ones."""
    try:
        return MODELS[model_type]
    except KeyError:
        raise UserError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODELS))}") from None


__all__ = ["MODELS", "ModelFamily", "detect_model_type", "get_family"]
