"""Structured output: OpenAI's `response_format`, constrained by xgrammar (MLC's own grammar engine)
through the library's `apply_bitmask_inplace`, as MLC's engine and WebLLM constrain it.

Each step the request's grammar matcher fills a bitmask of the tokens that keep the output valid;
the library masks the others to the lowest float; the chosen token advances the matcher. The reply is
then always a prefix of a valid document, and a whole one when it stops (finish_reason "stop").
xgrammar is the `structured` extra: `pip install 'mlcbuild[structured]'`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mlcbuild.errors import UserError

FIELD = "response_format"


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def _first_line(exc: Exception) -> str:
    """The first line of xgrammar's message (which says what it cannot use), else the error's type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Grammars:
    """An engine's grammar compiler over its tokenizer (built on first use, compiled grammars cached)."""

    def __init__(self, tokenizer: Any, vocab_size: int, token_postproc_method: str, stop_ids: Iterable[int]):
        try:
            import xgrammar as xgr
        except ImportError:
            raise UserError(f"{FIELD} needs xgrammar: pip install 'mlcbuild[structured]'", field=FIELD) from None
        encoded = [""] * vocab_size
        for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
            if 0 <= i < vocab_size:
                encoded[i] = token
        kind = xgr.VocabType.BYTE_LEVEL if token_postproc_method == "byte_level" else xgr.VocabType.BYTE_FALLBACK
        info = xgr.TokenizerInfo(encoded, kind, vocab_size=vocab_size, stop_token_ids=sorted(set(stop_ids)))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}

    def constraint(self, response_format: Any) -> "Constraint | None":
        """The matcher for an OpenAI `response_format`, or None for plain text; a bad one is a UserError."""
        import xgrammar as xgr

        if response_format is None:
            return None
        if not isinstance(response_format, Mapping) or not isinstance(response_format.get("type"), str):
            raise UserError('must be an object with a "type"', field=FIELD)
        kind = response_format["type"]
        if kind == "text":
            return None
        if kind == "json_object":
            key = "json_object"
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, Mapping):
                raise UserError('json_schema needs {"json_schema": {"name": ..., "schema": {...}}}', field=f"{FIELD}.json_schema")
            key = json.dumps(schema, sort_keys=True)
        else:
            raise UserError(f"type must be text, json_object or json_schema (got {kind!r})", field=f"{FIELD}.type")
        if key not in self._cache:
            try:
                if kind == "json_object":
                    self._cache[key] = self._compiler.compile_builtin_json_grammar()
                else:
                    self._cache[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
            except Exception as exc:  # noqa: BLE001 - xgrammar's own message says what it cannot use
                raise UserError(f"the schema cannot be used: {_first_line(exc)}", field=f"{FIELD}.json_schema") from None
        return Constraint(xgr.GrammarMatcher(self._cache[key]), self.vocab_size)

    def tool_constraint(self, tools: Any) -> "Constraint":
        """A call to one of `tools` (runtime/tools.py), or with tool_choice "auto" also plain text
        that does not start with "{"."""
        import xgrammar as xgr

        key = json.dumps([tools.schema(), tools.required], sort_keys=True)
        if key not in self._cache:
            try:
                call = xgr.Grammar.from_json_schema(json.dumps(tools.schema()), any_whitespace=False)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"a tool's parameters cannot be used: {_first_line(exc)}", field="tools") from None
            grammar = call if tools.required else xgr.Grammar.union(call, xgr.Grammar.from_regex(r"[^{][\s\S]*"))
            self._cache[key] = self._compiler.compile_grammar(grammar)
        return Constraint(xgr.GrammarMatcher(self._cache[key]), self.vocab_size)


@dataclass
class Constraint:
    """One request's grammar state."""

    matcher: Any
    vocab_size: int

    def bitmask(self) -> Any:
        """int32 [words]: bit t of word t // 32 is set when token t may come next."""
        import numpy as np

        mask = np.zeros((1, bitmask_words(self.vocab_size)), dtype=np.int32)
        self.matcher.fill_next_token_bitmask(mask)
        return mask[0]

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(int(token)):
            raise RuntimeError(f"token {token} was sampled outside the grammar")


__all__ = ["Constraint", "Grammars", "bitmask_words"]
