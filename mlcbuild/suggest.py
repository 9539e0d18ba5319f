"""'Did you mean' hints for names the user got almost right: the one helper (recipes, templates, targets)."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most similar to `word` (case-insensitive), or None when nothing is close
    or two choices are equally close (a wrong guess is worse than the full list)."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    lowered = word.lower()
    if lowered in by_lower:
        return by_lower[lowered]
    prefixed = [c for low, c in by_lower.items() if low.startswith(lowered) or lowered.startswith(low)]
    if len(prefixed) == 1:
        return prefixed[0]
    scored = sorted(
        ((difflib.SequenceMatcher(None, lowered, low).ratio(), low) for low in by_lower), reverse=True
    )
    if not scored or scored[0][0] < cutoff:
        return None
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        return None
    return by_lower[scored[0][1]]


def unknown(kind: str, word: str, choices: Iterable[str]) -> str:
    """`unknown KIND 'word' — did you mean 'x'?`, or the list of valid names when none is close."""
    choices = sorted(choices)
    guess = closest(word, choices)
    if guess is not None:
        return f"unknown {kind} {word!r} — did you mean {guess!r}?"
    if not choices:
        return f"unknown {kind} {word!r} (none are defined)"
    return f"unknown {kind} {word!r}; valid: {', '.join(choices)}"
