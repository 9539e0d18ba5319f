"""Response objects shaped like the openai client's (field names and nesting), as plain dataclasses.

`to_dict()` gives the JSON body the OpenAI HTTP API returns, so the server and the Python API share them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None or k in _KEEP_NONE}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


_KEEP_NONE = {"finish_reason", "content", "logprobs"}


class _Json:
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))  # type: ignore[call-overload]


@dataclass
class TopLogprob(_Json):
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass
class TokenLogprob(_Json):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass
class ChoiceLogprobs(_Json):
    content: list[TokenLogprob] = field(default_factory=list)


@dataclass
class CompletionUsage(_Json):
    """OpenAI's usage counts, plus this request's prefill/decode speed (MLC reports them in `extra`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prefill_tokens: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0


@dataclass
class FunctionCall(_Json):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


@dataclass
class ToolCall(_Json):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"
    index: int | None = None
    """Set in streamed deltas only."""


@dataclass
class ChatCompletionMessage(_Json):
    content: str | None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ToolCall] | None = None


@dataclass
class Choice(_Json):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


@dataclass
class ChatCompletion(_Json):
    id: str
    choices: list[Choice]
    created: int
    model: str
    usage: CompletionUsage | None = None
    object: Literal["chat.completion"] = "chat.completion"


@dataclass
class ChoiceDelta(_Json):
    content: str | None = None
    role: str | None = None
    tool_calls: list[ToolCall] | None = None


@dataclass
class ChunkChoice(_Json):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


@dataclass
class ChatCompletionChunk(_Json):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    usage: CompletionUsage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


@dataclass
class CompletionLogprobs(_Json):
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)


@dataclass
class CompletionChoice(_Json):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


@dataclass
class Completion(_Json):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    usage: CompletionUsage | None = None
    object: Literal["text_completion"] = "text_completion"


@dataclass
class Model(_Json):
    id: str
    created: int
    owned_by: str = "mlcbuild"
    object: Literal["model"] = "model"
