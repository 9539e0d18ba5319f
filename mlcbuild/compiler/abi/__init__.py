"""MLC's model-library ABI: the functions MLC's runtimes look up by name, beyond the model's own.

MLC's C++ engine (`cpp/serve/function_table.cc`, `logit_processor.cc`, `sampler/`) and WebLLM
(`LLMChatPipeline` in `src/llm_chat.ts`) find these in a library by name and call them with fixed
argument shapes; a library without them is refused (WebLLM) or loses features (the C++ engine).
Each module here attaches one group as an IRModule pass that runs before legalization, so the
kernels are scheduled with the rest of the library:

- `softmax`: softmax_with_temperature (greedy one-hot at temperature ≤ 1e-5, active_vocab_size mask)
- `logit_processor`: apply_logit_bias_inplace, apply_penalty_inplace, apply_bitmask_inplace
- `sampler`: argsort_probs, sample_with_top_p, multinomial_from_uniform, renormalize_by_top_p,
  sampler_take_probs, sampler_verify_draft_tokens
- `embedding`: alloc_embedding_tensor
- `spec_decode`: gather_probs, scatter_probs, gather_hidden_states, scatter_hidden_states
"""
from __future__ import annotations

from typing import Any, Mapping

SAMPLER_WITHOUT_INT8 = ("argsort_probs", "sample_with_top_p")
"""WebGPU has no int8 storage: MLC attaches only these two of the sampler set there."""


def abi_functions(target_kind: str) -> tuple[str, ...]:
    """Every function name the ABI passes add for a target kind (what conformance tests expect)."""
    from mlcbuild.compiler.abi import embedding, logit_processor, sampler, softmax, spec_decode

    sampler_names = SAMPLER_WITHOUT_INT8 if target_kind == "webgpu" else sampler.FUNCTIONS
    return (*softmax.FUNCTIONS, *logit_processor.FUNCTIONS, *sampler_names, *embedding.FUNCTIONS, *spec_decode.FUNCTIONS)


def abi_passes(target: Any, metadata: Mapping[str, Any]) -> list[Any]:
    """The passes, in the order MLC's pipeline runs them."""
    from mlcbuild.compiler.abi import embedding, logit_processor, sampler, softmax, spec_decode

    kind = target.kind.name
    return [
        softmax.attach(metadata.get("active_vocab_size")),
        logit_processor.attach(target),
        embedding.attach(int(metadata["prefill_chunk_size"])),
        sampler.attach(target, int(metadata.get("max_batch_size") or 1), SAMPLER_WITHOUT_INT8 if kind == "webgpu" else None),
        spec_decode.attach(target),
    ]


__all__ = ["abi_functions", "abi_passes"]
