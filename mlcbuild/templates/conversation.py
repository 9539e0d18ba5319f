"""MLC's conversation protocol as a plain dataclass (MLC uses pydantic; we must stay import-light).

The JSON form is what MLC's runtime reads from mlc-chat-config.json's `conv_template`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

SYSTEM = "{system_message}"
USER = "{user_message}"
ASSISTANT = "{assistant_message}"
TOOL = "{tool_message}"
FUNCTION = "{function_string}"

PLACEHOLDERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL}


def _default_role_templates() -> dict[str, str]:
    return {"user": USER, "assistant": ASSISTANT, "tool": TOOL}


@dataclass
class Conversation:
    """A prompt format: system prompt, roles, separators and stop criteria.

    Field names, order and defaults follow MLC-LLM so the JSON is interchangeable with theirs.
    """

    name: str | None = None
    system_template: str = SYSTEM
    system_message: str = ""
    system_prefix_token_ids: list[int] | None = None
    add_role_after_system_message: bool = True
    roles: dict[str, str] = field(default_factory=dict)
    role_templates: dict[str, str] = field(default_factory=_default_role_templates)
    messages: list[tuple[str, str | None]] = field(default_factory=list)
    seps: list[str] = field(default_factory=lambda: [""])
    role_content_sep: str = ""
    role_empty_sep: str = ""
    stop_str: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    strip_reasoning_in_history: bool | None = None
    """MLC's flag (Qwen3): drop `<think>...</think>` from assistant turns before the last user turn.
    None (MLC: False) is left out of the JSON, so templates without it serialize as before."""
    function_string: str = ""
    use_function_calling: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.seps) <= 2:
            raise ValueError(f"conversation template {self.name!r}: seps must have 1 or 2 entries")
        self.role_templates = {**_default_role_templates(), **self.role_templates}

    def to_json(self) -> dict[str, Any]:
        """MLC's `to_json_dict`: every field, None-valued ones left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "messages":
                value = [list(m) for m in value]
            out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Conversation":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown conversation template field(s): {', '.join(unknown)}")
        kwargs = dict(data)
        if "messages" in kwargs:
            kwargs["messages"] = [tuple(m) for m in kwargs["messages"]]
        return cls(**kwargs)

    def copy(self, **changes: Any) -> "Conversation":
        return Conversation.from_json({**self.to_json(), **changes})

    def as_prompt(self) -> str:
        """The text prompt for `messages` (text content only), as MLC builds it; for smoke tests."""
        system = self.system_template.replace(SYSTEM, self.system_message)
        seps = list(self.seps) if len(self.seps) == 2 else [self.seps[0], self.seps[0]]
        parts = [system] if system else []
        messages = strip_reasoning(self.messages) if self.strip_reasoning_in_history else self.messages
        for i, (role, content) in enumerate(messages):
            if role not in self.roles:
                raise ValueError(f"role {role!r} not in template {self.name!r} (has {', '.join(self.roles)})")
            if content is None:
                parts.append(self.roles[role] + self.role_empty_sep)
                continue
            skip_role = not self.add_role_after_system_message and system and i == 0
            prefix = "" if skip_role else self.roles[role] + self.role_content_sep
            body = self.role_templates[role].replace(PLACEHOLDERS[role], content)
            parts.append(prefix + body + seps[role == "assistant"])
        prompt = "".join(parts)
        head, sep, tail = prompt.rpartition(FUNCTION)
        if sep:
            prompt = head + self.function_string + tail
        return prompt.replace(FUNCTION, "")


def strip_reasoning(messages: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """MLC's `_strip_reasoning_in_history`: an assistant turn before the last user turn keeps only
    what follows its last `</think>` (leading newlines dropped), as Qwen3's chat template renders it."""
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=-1)
    out: list[tuple[str, str | None]] = []
    for i, (role, content) in enumerate(messages):
        if role == "assistant" and i < last_user and isinstance(content, str) and "</think>" in content:
            content = content.split("</think>")[-1].lstrip("\n")
        out.append((role, content))
    return out
