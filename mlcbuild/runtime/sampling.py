"""Sampling on the host from the probabilities the library's softmax_with_temperature returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_p keeps the smallest set of tokens with mass ≥ top_p."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def sample_from_probs(probs: Any, top_p: float, rng: Any) -> int:
    """Nucleus sampling: sort, keep the prefix whose mass first reaches top_p, renormalize, draw."""
    import numpy as np

    probs = np.asarray(probs, dtype="float64")
    if top_p >= 1.0:
        kept_ids, kept = np.arange(probs.size), probs
    else:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        cut = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        kept_ids, kept = order[:cut], probs[order[:cut]]
    total = kept.sum()
    if not np.isfinite(total) or total <= 0:
        return int(np.argmax(probs))
    return int(kept_ids[rng.choice(kept.size, p=kept / total)])
