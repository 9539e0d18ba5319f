"""Token ids → text deltas for streaming: whole UTF-8 characters only, stop strings never leaked."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

REPLACEMENT = "\ufffd"


@dataclass
class TextStream:
    """Feed tokens one at a time; `push` returns the text that is safe to show now.

    A multi-byte character split over tokens decodes to U+FFFD until its last byte arrives, so
    text is held back while the decoded tail ends in U+FFFD. Text that might be the start of a stop
    string is held back too; once a stop string appears, the text ends before it.
    """

    tokenizer: Any
    stop: Sequence[str] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    _prefix: int = 0
    _read: int = 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Whatever is still held back (a dangling partial character decodes as U+FFFD)."""
        if not self.stopped and self._read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
            after = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
            self.text += after[len(before) :]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self.text.find(s) for s in self.stop if s) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            end = len(self.text)
        else:
            end = len(self.text) if final else len(self.text) - self._partial_stop()
        end = max(end, self.emitted)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _partial_stop(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
