"""OpenAI's API over an `LLMEngine`: `engine.chat.completions.create(...)` and
`engine.completions.create(...)` turn a request into a prompt, sampling params and a queued
request on the engine's scheduler (`runtime/llm_engine.py`), and its events into OpenAI's
objects (`runtime/protocol.py`). The HTTP server and `compat.ChatModule` call these.
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from mlcbuild.artifact import SAMPLING_FIELDS
from mlcbuild.errors import UserError
from mlcbuild.runtime.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    FunctionCall,
    TokenLogprob,
    ToolCall,
)
from mlcbuild.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from mlcbuild.runtime.llm_engine import LLMEngine, _Event, _Request
    from mlcbuild.runtime.tools import Tools


def unicode_text(text: str, field: str) -> str:
    """`text` if it is valid Unicode: a lone surrogate ("\\ud800", legal in JSON) cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"is not valid Unicode text ({exc.reason} at character {exc.start})", field=field) from None
    return text


def request_int(value: Any, low: int, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"must be an integer in [{low}, {high}] (got {value!r})", field=field)
    return value


def request_flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"must be true or false (got {value!r})", field=field)
    return value


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


REQUEST_SAMPLING: tuple[str, ...] = (*SAMPLING_FIELDS, "seed", "logit_bias")
"""What a request may set about sampling: the model's sampling fields, plus OpenAI's per-request ones."""


class ChatCompletions:
    def __init__(self, llm: "LLMEngine"):
        self._llm = llm

    def create(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        n: int = 1,
        ignore_eos: bool = False,
        response_format: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        **sampling: Any,
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """OpenAI's chat.completions.create: a ChatCompletion, or an iterator of chunks with `stream=True`."""
        from mlcbuild.runtime.tools import parse_tools

        llm = self._llm
        params = _request_params(llm, model, n, sampling)
        if parallel_tool_calls is not None:
            request_flag(parallel_tool_calls, "parallel_tool_calls")
        calls = parse_tools(tools, tool_choice)
        req = llm.submit(
            llm.chat_tokens(messages, calls), params, max_tokens, stop, _top(logprobs, top_logprobs), ignore_eos,
            response_format=response_format, tools=calls,
        )
        rid, created = _new_id("chatcmpl"), int(time.time())
        if stream:
            return self._tool_chunks(req, rid, created, calls) if calls else self._chunks(req, rid, created)
        text, lps, finish, usage = _collect(llm.events(req))
        message, finish = _message(text, finish, calls)
        choice = Choice(0, message, finish, ChoiceLogprobs(lps) if logprobs else None)
        return ChatCompletion(rid, [choice], created, llm.model, usage)

    def _tool_chunks(self, req: "_Request", rid: str, created: int, calls: "Tools") -> Iterator[ChatCompletionChunk]:
        """With tools the reply is known to be a call or text only at its end: one delta then."""
        llm = self._llm
        yield ChatCompletionChunk(rid, [ChunkChoice(0, ChoiceDelta(content="", role="assistant"))], created, llm.model)
        text, lps, finish, usage = _collect(llm.events(req))
        message, finish = _message(text, finish, calls)
        for i, call in enumerate(message.tool_calls or []):
            call.index = i
        delta = ChoiceDelta(content=message.content, tool_calls=message.tool_calls)
        yield ChatCompletionChunk(rid, [ChunkChoice(0, delta, finish, ChoiceLogprobs(lps) if req.top_logprobs is not None else None)], created, llm.model, usage)

    def _chunks(self, req: "_Request", rid: str, created: int) -> Iterator[ChatCompletionChunk]:
        llm = self._llm
        yield ChatCompletionChunk(rid, [ChunkChoice(0, ChoiceDelta(content="", role="assistant"))], created, llm.model)
        for ev in llm.events(req):
            lps = ChoiceLogprobs(ev.logprobs) if req.top_logprobs is not None else None
            if ev.text or ev.logprobs or ev.finish_reason:
                choice = ChunkChoice(0, ChoiceDelta(content=ev.text or None), ev.finish_reason, lps)
                yield ChatCompletionChunk(rid, [choice], created, llm.model, ev.usage)


class Completions:
    def __init__(self, llm: "LLMEngine"):
        self._llm = llm

    def create(
        self,
        prompt: str | Sequence[int],
        *,
        model: str | None = None,
        stream: bool = False,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        logprobs: int | None = None,
        n: int = 1,
        ignore_eos: bool = False,
        response_format: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Completion | Iterator[Completion]:
        """OpenAI's completions.create (raw continuation, no conversation template)."""
        llm = self._llm
        params = _request_params(llm, model, n, sampling)
        if not isinstance(prompt, str) and not (
            isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            raise UserError("must be a string or a list of token ids", field="prompt")
        if logprobs is not None:
            request_int(logprobs, 0, 20, "logprobs")
        req = llm.submit(
            llm.completion_tokens(prompt), params, max_tokens, stop, logprobs, ignore_eos, template_stops=False, response_format=response_format
        )
        rid, created = _new_id("cmpl"), int(time.time())
        if stream:
            return self._chunks(req, rid, created)
        text, lps, finish, usage = _collect(llm.events(req))
        return Completion(rid, [CompletionChoice(0, text, finish, _completion_logprobs(lps) if logprobs is not None else None)], created, llm.model, usage)

    def _chunks(self, req: "_Request", rid: str, created: int) -> Iterator[Completion]:
        for ev in self._llm.events(req):
            lps = _completion_logprobs(ev.logprobs) if req.top_logprobs is not None else None
            if ev.text or ev.logprobs or ev.finish_reason:
                yield Completion(rid, [CompletionChoice(0, ev.text, ev.finish_reason, lps)], created, self._llm.model, ev.usage)


class Chat:
    def __init__(self, llm: "LLMEngine"):
        self.completions = ChatCompletions(llm)


def _request_params(llm: "LLMEngine", model: str | None, n: int, sampling: Mapping[str, Any]) -> SamplingParams:
    if model is not None and model != llm.model:
        raise UnknownModelError(f"unknown model {model!r}; this server has {llm.model!r}", field="model")
    if n != 1:
        raise UserError(f"only n=1 is supported (got {n!r})", field="n")
    unknown = sorted(set(sampling) - set(REQUEST_SAMPLING))
    if unknown:
        raise UserError(f"unknown parameter(s): {', '.join(unknown)}", field=unknown[0])
    return llm.sampling(**sampling)


def _top(logprobs: bool, top_logprobs: int | None) -> int | None:
    """Chat's logprobs (a flag) and top_logprobs (0..20), checked before the request is queued."""
    if top_logprobs is not None:
        request_int(top_logprobs, 0, 20, "top_logprobs")
    if not request_flag(logprobs, "logprobs"):
        if top_logprobs:
            raise UserError("top_logprobs needs logprobs=true", field="top_logprobs")
        return None
    return top_logprobs or 0


def _message(text: str, finish: str | None, calls: "Tools | None") -> tuple[ChatCompletionMessage, str | None]:
    """The assistant message: a tool call when the reply is one (finish_reason "tool_calls")."""
    from mlcbuild.runtime.tools import call_of, new_call_id

    call = call_of(text, calls) if calls is not None else None
    if call is None:
        return ChatCompletionMessage(text), finish
    name, arguments = call
    return ChatCompletionMessage(None, tool_calls=[ToolCall(new_call_id(), FunctionCall(name, arguments))]), "tool_calls"


def _collect(events: Iterator["_Event"]) -> tuple[str, list[TokenLogprob], str | None, CompletionUsage | None]:
    parts, lps, finish, usage = [], [], None, None
    for ev in events:
        parts.append(ev.text)
        lps.extend(ev.logprobs)
        finish, usage = ev.finish_reason or finish, ev.usage or usage
    return "".join(parts), lps, finish, usage


def _completion_logprobs(lps: list[TokenLogprob]) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=[e.token for e in lps],
        token_logprobs=[e.logprob for e in lps],
        top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in lps],
    )


class UnknownModelError(UserError):
    """A request named a model this engine does not serve (HTTP 404)."""


__all__ = ["REQUEST_SAMPLING", "Chat", "ChatCompletions", "Completions", "UnknownModelError", "request_flag", "request_int", "unicode_text"]
