"""OpenAI function calling (`tools`, `tool_choice`) for any conversation template.

The tools are described to the model in the system message (MLC's `{function_string}` slot where the
template has one) and the reply is constrained by a grammar (`runtime/grammar.py`): with
`tool_choice` "required" or a named function it must be a call, `{"name": ..., "arguments": {...}}`
whose arguments validate against that function's `parameters`; with "auto" it is either such a call
or text that does not start with "{". A reply that is a call comes back as `tool_calls` with
finish_reason "tool_calls". Earlier calls and "tool" results in the history are rendered as text.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mlcbuild.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HEADER = (
    "You can call functions. To call one, answer with only a JSON object "
    '{"name": <function name>, "arguments": <arguments object>}. Functions:\n'
)


@dataclass(frozen=True)
class Tools:
    functions: tuple[Mapping[str, Any], ...]
    required: bool

    def schema(self) -> dict[str, Any]:
        """A call to one of the functions, arguments validated by its `parameters`."""
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for f in self.functions
        ]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def description(self) -> str:
        return HEADER + json.dumps([dict(f) for f in self.functions], ensure_ascii=False, sort_keys=True)


def parse_tools(tools: Any, tool_choice: Any) -> Tools | None:
    """The request's tools as the reply must respect them, or None (no tools, or tool_choice "none")."""
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise UserError("tool_choice needs tools", field="tool_choice")
        return None
    if not isinstance(tools, list) or not tools or len(tools) > 64:
        raise UserError("must be a list of 1 to 64 tools", field="tools")
    functions = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not NAME.match(fn["name"]):
            raise UserError('each tool is {"type": "function", "function": {"name": [A-Za-z0-9_-]{1,64}, ...}}', field=f"tools[{i}]")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], Mapping):
            raise UserError("parameters must be a JSON schema object", field=f"tools[{i}].function.parameters")
        functions.append({k: fn[k] for k in ("name", "description", "parameters") if fn.get(k) is not None})
    if len({f["name"] for f in functions}) != len(functions):
        raise UserError("function names must be unique", field="tools")
    if tool_choice in (None, "auto"):
        return Tools(tuple(functions), required=False)
    if tool_choice == "none":
        return None
    if tool_choice == "required":
        return Tools(tuple(functions), required=True)
    named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function" else None
    chosen = [f for f in functions if f["name"] == named]
    if not chosen:
        raise UserError('must be "none", "auto", "required" or {"type": "function", "function": {"name": <one of tools>}}', field="tool_choice")
    return Tools(tuple(chosen), required=True)


def call_of(text: str, tools: Tools) -> tuple[str, str] | None:
    """(name, arguments JSON) when the reply is a call, else None (text)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        call = json.loads(stripped)
    except ValueError:
        return None
    names = {f["name"] for f in tools.functions}
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    return call["name"], json.dumps(call.get("arguments", {}), ensure_ascii=False)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def history_text(message: Mapping[str, Any], i: int) -> tuple[str, str] | None:
    """An assistant message with tool_calls, or a "tool" result, as (role, text) for the template."""
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, Sequence) or not all(isinstance(c, Mapping) and isinstance(c.get("function"), Mapping) for c in calls):
            raise UserError("tool_calls must be a list of calls", field=f"messages[{i}].tool_calls")
        parts = []
        for c in calls:
            args = c["function"].get("arguments", "{}")
            try:
                parsed = json.loads(args) if isinstance(args, str) else args
            except ValueError:
                raise UserError("arguments must be JSON text", field=f"messages[{i}].tool_calls") from None
            parts.append(json.dumps({"name": c["function"].get("name"), "arguments": parsed}, ensure_ascii=False))
        return "assistant", "\n".join(parts)
    if role == "tool":
        content = message.get("content")
        if not isinstance(content, str):
            raise UserError("a tool message's content must be a string", field=f"messages[{i}].content")
        return "tool", content
    return None


__all__ = ["Tools", "call_of", "history_text", "new_call_id", "parse_tools"]
