"""Sampling on the host from the probabilities the library's softmax_with_temperature returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from mlcbuild.artifact.chat_config import SAMPLING_FIELDS, Sampling, check_sampling
from mlcbuild.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_p keeps the smallest set of tokens with mass ≥ top_p.

    Penalties follow OpenAI (frequency, presence: over generated tokens, subtracted from logits)
    and Hugging Face (repetition: over prompt and generated tokens, divides positive logits). The
    sampling fields and their ranges are mlc-chat-config.json's (`artifact.chat_config.Sampling`).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """OpenAI's logit_bias: (token id, bias in [-100, 100]) added to the logits before penalties."""

    def __post_init__(self) -> None:
        for token, bias in self.logit_bias:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise UserError(f"keys must be token ids (got {token!r})", field="logit_bias")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise UserError(f"biases must be numbers in [-100, 100] (got {bias!r} for token {token})", field="logit_bias")
        for name in SAMPLING_FIELDS:
            object.__setattr__(self, name, check_sampling(name, getattr(self, name)))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UserError(f"must be an integer (got {self.seed!r})", field="seed")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UserError(f"must be in [0, 2^63) (got {self.seed})", field="seed")

    @classmethod
    def from_config(cls, sampling: Sampling, **given: Any) -> "SamplingParams":
        """A request's values (None: not given) over the model's defaults from mlc-chat-config.json."""
        values = {name: given.pop(name, None) for name in SAMPLING_FIELDS}
        return cls(**{k: getattr(sampling, k) if v is None else v for k, v in values.items()}, **given)

    @property
    def penalized(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)


def apply_penalties(logits: Any, params: SamplingParams, generated: Mapping[int, int], seen: set[int]) -> Any:
    """Logits after logit bias and penalties; `generated` counts generated tokens, `seen` is prompt ∪ generated."""
    import numpy as np

    if not params.penalized and not params.logit_bias:
        return logits
    out = np.array(logits, dtype="float32", copy=True)
    for token, bias in params.logit_bias:
        out[token] += bias
    if generated and (params.frequency_penalty or params.presence_penalty):
        ids = np.fromiter(generated.keys(), dtype="int64")
        counts = np.fromiter(generated.values(), dtype="float32")
        out[ids] -= params.frequency_penalty * counts + params.presence_penalty
    if seen and params.repetition_penalty != 1.0:
        ids = np.fromiter(seen, dtype="int64")
        vals = out[ids]
        out[ids] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    return out


def log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def softmax(logits: Any) -> Any:
    import numpy as np

    shifted = np.asarray(logits, dtype="float64") - np.max(logits)
    e = np.exp(shifted)
    return e / e.sum()


def sample_from_probs(probs: Any, top_p: float, uniform: float) -> int:
    """Nucleus sampling by inverse CDF, with the semantics of the library's `sample_with_top_p`:
    sort descending, keep the prefix whose mass first reaches top_p, take the first token whose
    renormalized cumulative mass exceeds `uniform` ∈ [0, 1)."""
    import numpy as np

    probs = np.asarray(probs, dtype="float64")
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    total = cumulative[-1] if cumulative.size else 0.0
    if not np.isfinite(total) or total <= 0:
        return int(np.argmax(probs))
    cut = min(int(np.searchsorted(cumulative, top_p * total, side="left")), probs.size - 1)
    kept = cumulative[: cut + 1] / cumulative[cut]
    return int(order[min(int(np.searchsorted(kept, uniform, side="right")), cut)])
