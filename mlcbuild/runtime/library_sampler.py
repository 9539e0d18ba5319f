"""Logit processing and sampling through the model library's own ABI functions, as MLC runs them.

MLC's runtimes never sample in their own code when the library can: WebLLM calls
`apply_logit_bias_inplace` → `apply_penalty_inplace` → `softmax_with_temperature` → `argsort_probs` →
`sample_with_top_p`, and MLC's
C++ engine does the same on GPUs. Our engine takes that path too, so every run exercises the ABI
that MLC's runtimes will call. A library built before these functions existed falls back to numpy
with the same semantics (one uniform draw per token either way, so seeded runs reproduce).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mlcbuild.runtime.sampling import SamplingParams, apply_penalties, sample_from_probs, softmax

FUNCTIONS = (
    "apply_bitmask_inplace",
    "apply_logit_bias_inplace",
    "apply_penalty_inplace",
    "softmax_with_temperature",
    "argsort_probs",
    "sample_with_top_p",
)
GREEDY_BELOW = 1e-5
"""MLC's softmax_with_temperature treats temperatures up to this as greedy (a one-hot)."""


@dataclass(frozen=True)
class Row:
    """One sequence's next-token choice: its settings, token history and uniform draw in [0, 1)."""

    params: SamplingParams
    generated: Mapping[int, int]
    prompt: Sequence[int]
    uniform: float
    bitmask: Any = None
    """int32 [ceil(vocab / 32)] of the tokens a grammar allows next (`runtime/grammar.py`), or None."""

    def prompt_only(self) -> list[int]:
        return sorted(set(self.prompt) - set(self.generated))


class LibrarySampler:
    def __init__(self, lookup: Callable[[str], Any], device: Any):
        self.device = device
        self.funcs = {name: lookup(name) for name in FUNCTIONS}

    @property
    def on_library(self) -> bool:
        return all(f is not None for f in self.funcs.values())

    def sample(self, logits: Any, rows: Sequence[Row]) -> tuple[list[int], Any]:
        """Next tokens for `logits` [n, vocab] (float32 numpy) and the logits after penalties."""
        import numpy as np

        logits = np.ascontiguousarray(logits, dtype="float32")
        if not self.on_library:
            processed = np.stack([_masked(apply_penalties(l, r.params, r.generated, set(r.prompt) | set(r.generated)), r.bitmask) for l, r in zip(logits, rows)])
            tokens = [self._host_sample(l, r) for l, r in zip(processed, rows)]
            return tokens, processed
        return self._device_sample(logits, rows)

    def _host_sample(self, logits: Any, row: Row) -> int:
        import numpy as np

        if row.params.temperature <= GREEDY_BELOW:
            return int(np.argmax(logits))
        return sample_from_probs(softmax(logits / row.params.temperature), row.params.top_p, row.uniform)

    def _tensor(self, array: Any, dtype: str) -> Any:
        import numpy as np
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(array, dtype=dtype), self.device)

    def _device_sample(self, logits: Any, rows: Sequence[Row]) -> tuple[list[int], Any]:
        """Penalties on the library for every row; greedy rows then take the first argmax (as
        transformers does: the library's one-hot would split exact ties), the others go through
        softmax_with_temperature → argsort_probs → sample_with_top_p."""
        import numpy as np

        n, vocab = logits.shape
        dev_logits = self._tensor(logits, "float32")
        self._apply_bitmask(dev_logits, rows)
        self._apply_logit_bias(dev_logits, rows)
        self._apply_penalties(dev_logits, rows)
        processed = dev_logits.numpy()
        tokens = [int(np.argmax(row)) for row in processed]
        hot = [i for i, r in enumerate(rows) if r.params.temperature > GREEDY_BELOW]
        if hot:
            m = len(hot)
            temps = np.array([rows[i].params.temperature for i in hot], dtype="float32")
            source = dev_logits if m == n else self._tensor(processed[hot], "float32")
            probs = self.funcs["softmax_with_temperature"](source._create_view((m, 1, vocab)), self._tensor(temps, "float32"))
            sorted_probs, sorted_indices = self.funcs["argsort_probs"](probs._create_view((m, vocab)))
            sampled = self.funcs["sample_with_top_p"](
                sorted_probs,
                sorted_indices,
                self._tensor([rows[i].uniform for i in hot], "float32"),
                self._tensor(np.arange(m), "int32"),
                self._tensor([rows[i].params.top_p for i in hot], "float32"),
            )
            for i, token in zip(hot, sampled.numpy()):
                tokens[i] = int(token)
        return tokens, processed

    def _apply_bitmask(self, dev_logits: Any, rows: Sequence[Row]) -> None:
        """MLC's apply_bitmask_inplace: tokens a row's grammar forbids get the lowest float32."""
        import numpy as np

        constrained = [i for i, r in enumerate(rows) if r.bitmask is not None]
        if not constrained:
            return
        words = len(rows[constrained[0]].bitmask)
        masks = np.full((len(rows), words), -1, dtype=np.int32)
        for i in constrained:
            masks[i] = rows[i].bitmask
        self.funcs["apply_bitmask_inplace"](dev_logits, self._tensor(constrained, "int32"), self._tensor(masks, "int32"))

    def _apply_logit_bias(self, dev_logits: Any, rows: Sequence[Row]) -> None:
        """MLC's apply_logit_bias_inplace: logits[row, token] += bias, WebLLM's order (before penalties)."""
        entries = [(i, token, bias) for i, row in enumerate(rows) for token, bias in row.params.logit_bias]
        if entries:
            rows_, tokens, biases = zip(*entries)
            self.funcs["apply_logit_bias_inplace"](
                dev_logits, self._tensor(rows_, "int32"), self._tensor(tokens, "int32"), self._tensor(biases, "float32")
            )

    def _apply_penalties(self, dev_logits: Any, rows: Sequence[Row]) -> None:
        """MLC's apply_penalty_inplace, two penalty rows per sequence: (presence, frequency,
        repetition) over generated tokens with their counts, (0, 0, repetition) over prompt tokens
        not generated — OpenAI's penalties on the output, Hugging Face's repetition on both."""
        seq_ids, pos2seq, token_ids, counts, penalties = [], [], [], [], []
        for i, row in enumerate(rows):
            p = row.params
            if not p.penalized:
                continue
            groups = ((list(row.generated), [row.generated[t] for t in row.generated], (p.presence_penalty, p.frequency_penalty)),)
            if p.repetition_penalty != 1.0:
                prompt_only = row.prompt_only()
                groups += ((prompt_only, [0] * len(prompt_only), (0.0, 0.0)),)
            for tokens, cnts, (presence, frequency) in groups:
                if not tokens:
                    continue
                pos2seq += [len(seq_ids)] * len(tokens)
                seq_ids.append(i)
                penalties.append((presence, frequency, p.repetition_penalty))
                token_ids += tokens
                counts += cnts
        if token_ids:
            self.funcs["apply_penalty_inplace"](
                dev_logits,
                self._tensor(seq_ids, "int32"),
                self._tensor(pos2seq, "int32"),
                self._tensor(token_ids, "int32"),
                self._tensor(counts, "int32"),
                self._tensor(penalties, "float32"),
            )


def _masked(logits: Any, bitmask: Any) -> Any:
    import numpy as np

    if bitmask is None:
        return logits
    bits = np.unpackbits(np.asarray(bitmask, dtype="<i4").view(np.uint8), bitorder="little")[: logits.shape[-1]]
    return np.where(bits.astype(bool), logits, np.finfo(np.float32).min).astype("float32")


__all__ = ["FUNCTIONS", "LibrarySampler", "Row"]
