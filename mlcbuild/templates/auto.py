"""`conv_template: auto`: fit an MLC conversation template to the checkpoint's own chat template.

The checkpoint's Jinja template (`chat_template.jinja`, else tokenizer_config.json `chat_template`)
is rendered the way transformers' `apply_chat_template` renders it (sandboxed Jinja with
trim_blocks/lstrip_blocks, `raise_exception`, bos_token/eos_token, add_generation_prompt=True) on a
few probe conversations. The MLC fields are solved from where the probe messages land in the text,
once per registered template, preferring that template's own strings where they fit; a fit counts
when every probe without a system message gives, rendered by mlcbuild's runtime prompt path
(`system_prefix_token_ids` + the tokenized `as_prompt()`), the checkpoint's token ids exactly.
Among the fits, the registered template sharing the most fields (stop token ids included) names it.

MLC's format cannot express everything a template program does. Probes with a system message are
compared too; what differs is reported in `Fit.notes` (an optional system block: MLC renders the
system template even when the message is empty, so such a block becomes the bare `{system_message}`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mlcbuild.errors import UserError
from mlcbuild.templates.conversation import SYSTEM, Conversation

FIELD = "conv_template"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Probe messages: plain words that no template contains and every tokenizer splits the same way
# wherever they stand.
SYS = "Answer briefly and politely"
U1, A1 = "What is two plus two", "Two plus two is four"
U2, A2 = "And three plus three", "Three plus three is six"
U3 = "Thank you very much"
THOUGHT = "<think>\nThe user asks for a sum\n</think>\n\n" + A1

Message = Mapping[str, str]


def _msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


PROBES: dict[str, list[dict[str, str]]] = {
    "one turn": _msgs(("user", U1)),
    "two turns": _msgs(("user", U1), ("assistant", A1), ("user", U2)),
    "three turns": _msgs(("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2), ("user", U3)),
    "reasoning in history": _msgs(("user", U1), ("assistant", THOUGHT), ("user", U2)),
    "system, one turn": _msgs(("system", SYS), ("user", U1)),
    "system, two turns": _msgs(("system", SYS), ("user", U1), ("assistant", A1), ("user", U2)),
}
"""Conversations without a system message must match exactly; those with one are reported."""


class NoFit(Exception):
    """Why one registered template cannot be fitted (internal)."""


@dataclass
class Fit:
    conversation: Conversation
    base: str
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.notes

    def summary(self) -> str:
        how = "exact on every probe" if self.exact else "; ".join(self.notes)
        return f"conv_template auto: {self.base!r} ({how})"


# --- reading and rendering the checkpoint's template ---------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_chat_template(folder: Path) -> tuple[str, str] | None:
    """(template, where) from `chat_template.jinja` (transformers' priority) or tokenizer_config.json's
    `chat_template` (a string, or a list of {name, template}: the one named "default")."""
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), CHAT_TEMPLATE_FILE
    config = _json(folder / "tokenizer_config.json")
    value = config.get("chat_template")
    where = "tokenizer_config.json:chat_template"
    if isinstance(value, str):
        return value, where
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return named["default"], f"{where}[default]"
        raise UserError(
            f"auto: {where} lists templates {sorted(str(n) for n in named)} and none is named 'default'; "
            "name a template (`mlcbuild templates`)", field=FIELD)
    return None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token / eos_token texts, as transformers passes them to the template."""
    out: dict[str, str] = {}
    for source in (_json(folder / "special_tokens_map.json"), _json(folder / "tokenizer_config.json")):
        for key in ("bos_token", "eos_token"):
            text = _token_text(source.get(key))
            if text is not None:
                out[key] = text
    return out


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"auto: cannot read {path.name}: {e}", field=FIELD) from None
    return data if isinstance(data, dict) else {}


class TemplateRaised(Exception):
    """The checkpoint's template called raise_exception (or failed) on a probe."""


def compile_chat_template(source: str) -> Callable[..., str]:
    """The template as transformers compiles it; the returned function renders messages."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        # Fixed, not now(): a template that prints today's date must render the same on every build.
        import datetime

        return datetime.datetime(2024, 7, 26).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        compiled = env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise UserError(f"auto: the checkpoint's chat template is not valid Jinja ({e})", field=FIELD) from None

    def render(messages: Sequence[Message], add_generation_prompt: bool = True, **special: str) -> str:
        try:
            return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **special)
        except Exception as e:  # the template is a program: whatever it raises is its answer
            raise TemplateRaised(str(e) or type(e).__name__) from None

    return render


# --- what our runtime sends the model ------------------------------------------------------------


def runtime_prompt(conv: Conversation, messages: Sequence[Message]) -> tuple[list[int], str]:
    """The system prefix ids and prompt text `LLMEngine.chat_tokens` builds (same rules)."""
    c = conv.copy()
    turns: list[tuple[str, str | None]] = []
    for m in messages:
        if m["role"] == "system":
            c.system_message = m["content"]
        else:
            turns.append((m["role"], m["content"].strip() if m["role"] == "assistant" else m["content"]))
    c.messages = [*turns, ("assistant", None)]
    return list(c.system_prefix_token_ids or []), c.as_prompt()


# --- fitting -------------------------------------------------------------------------------------


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < len(a) and n < len(b) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


def _split(text: str, markers: Sequence[str], probe: str) -> list[str]:
    """`text` cut at each marker, in order: len(markers)+1 pieces."""
    pieces, rest = [], text
    for marker in markers:
        if rest.count(marker) != 1:
            raise NoFit(f"probe {probe!r}: the message {marker!r} appears {rest.count(marker)} times in the rendering, not once")
        head, _, rest = rest.partition(marker)
        pieces.append(head)
    pieces.append(rest)
    return pieces


def _solve(texts: Mapping[str, str | TemplateRaised], hint: Conversation) -> tuple[Conversation, str]:
    """MLC fields that reproduce the probe texts (bos already removed), `hint`'s strings preferred.
    Returns the conversation and how the system message is handled ("exact", "optional", "refused",
    "ignored")."""
    t1, t2 = texts["one turn"], texts["two turns"]
    for name, t in (("one turn", t1), ("two turns", t2)):
        if isinstance(t, TemplateRaised):
            raise NoFit(f"probe {name!r}: the template raised: {t}")
    assert isinstance(t1, str) and isinstance(t2, str)
    head, tail = _split(t1, [U1], "one turn")
    head2, x, y, tail2 = _split(t2, [U1, A1, U2], "two turns")
    if head2 != head or tail2 != tail:
        raise NoFit("the text around the first user message changes when more turns follow")

    # y = sep_assistant + role_user + role_content_sep; head = system + role_user + role_content_sep
    shared = _common_suffix(head, y)
    hinted_user = hint.roles.get("user", "") + hint.role_content_sep
    user_prefix = hinted_user if hinted_user and shared.endswith(hinted_user) else shared
    sep_assistant = y[: len(y) - len(user_prefix)]
    system_default = head[: len(head) - len(user_prefix)]

    # x = sep_user + role_assistant + role_content_sep; tail = sep_user + role_assistant + role_empty_sep
    common = x[: _common_prefix(x, tail)]
    x_rest, t_rest = x[len(common):], tail[len(common):]
    ks = [common[len(common) - n:] if n else "" for n in range(len(common), -1, -1)]
    ks = [k for k in ks if user_prefix.endswith(k + x_rest)]
    if not ks:
        raise NoFit("user and assistant turns do not share one role/content separator")
    k = next((k for k in ks if k + x_rest == hint.role_content_sep and k + t_rest == hint.role_empty_sep), None)
    k = k if k is not None else next((k for k in ks if k + x_rest == hint.role_content_sep), ks[0])
    role_content_sep, role_empty_sep = k + x_rest, k + t_rest
    role_user = user_prefix[: len(user_prefix) - len(role_content_sep)]
    sep_and_role = common[: len(common) - len(k)]
    hinted_assistant = hint.roles.get("assistant", "")
    if hinted_assistant and sep_and_role.endswith(hinted_assistant):
        sep_user = sep_and_role[: len(sep_and_role) - len(hinted_assistant)]
    elif sep_assistant and sep_and_role.startswith(sep_assistant):
        sep_user = sep_assistant
    else:
        sep_user = ""
    role_assistant = sep_and_role[len(sep_user):]

    # The system message: where it lands in "system, one turn".
    system_template, system_message, add_role, mode = SYSTEM, system_default, True, "optional"
    ts = texts.get("system, one turn")
    if isinstance(ts, TemplateRaised):
        mode = "refused"
    elif isinstance(ts, str) and SYS not in ts:
        if ts == t1:
            system_template, system_message, mode = system_default, "", "ignored"
    elif isinstance(ts, str) and ts.count(SYS) == 1 and U1 in ts and ts.index(SYS) < ts.index(U1):
        before = ts[: ts.index(U1)]
        add = before.endswith(user_prefix)
        candidate = (before[: len(before) - len(user_prefix)] if add else before).replace(SYS, SYSTEM)
        a, _, b = candidate.partition(SYSTEM)
        fits_default = (
            add and system_default.startswith(a) and system_default.endswith(b)
            and len(system_default) >= len(a) + len(b)
        )
        if fits_default:
            system_template, mode = candidate, "exact"
            system_message = system_default[len(a): len(system_default) - len(b)]

    extra_roles = {}
    if hint.roles.get("user") == role_user and hint.roles.get("assistant") == role_assistant:
        extra_roles = {r: v for r, v in hint.roles.items() if r not in ("user", "assistant")}
    conv = Conversation(
        name=hint.name,
        system_template=system_template,
        system_message=system_message,
        add_role_after_system_message=add_role,
        roles={"user": role_user, "assistant": role_assistant, **extra_roles},
        seps=[sep_user] if sep_user == sep_assistant else [sep_user, sep_assistant],
        role_content_sep=role_content_sep,
        role_empty_sep=role_empty_sep,
    )
    return conv, mode


class _Checkpoint:
    """The checkpoint's template and tokenizer: probe renderings and token ids."""

    def __init__(self, template: str, tokenizer: Any, special: Mapping[str, str], eos_ids: Sequence[int]):
        self.render = compile_chat_template(template)
        self.tokenizer = tokenizer
        self.special = dict(special)
        self.bos = special.get("bos_token")
        self.bos_id = tokenizer.token_to_id(self.bos) if self.bos else None
        self.texts: dict[str, str | TemplateRaised] = {}
        for name, messages in PROBES.items():
            try:
                self.texts[name] = self.render(messages, **self.special)
            except TemplateRaised as e:
                self.texts[name] = e
        plain = [t for name, t in self.texts.items() if isinstance(t, str) and not name.startswith("system")]
        self.has_bos = bool(self.bos) and self.bos_id is not None and bool(plain) and all(t.startswith(self.bos) for t in plain)
        self.body = {
            name: (t[len(self.bos):] if self.has_bos and isinstance(t, str) and t.startswith(self.bos or "") else t)
            for name, t in self.texts.items()
        }
        self.eos_ids = list(eos_ids)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def expected(self, probe: str) -> list[int] | TemplateRaised:
        t = self.texts[probe]
        return t if isinstance(t, TemplateRaised) else self.ids(t)

    def ours(self, conv: Conversation, probe: str) -> list[int]:
        prefix, text = runtime_prompt(conv, PROBES[probe])
        return prefix + self.ids(text)

    def special_ids(self) -> set[int]:
        get = getattr(self.tokenizer, "get_added_tokens_decoder", None)
        if get is None:
            return set()
        return {i for i, t in get().items() if getattr(t, "special", False)}

    def stops(self, sep_assistant: str) -> tuple[list[int], str | None]:
        """Stop token ids: generation_config/config eos ids, the tokenizer's eos token and the
        special token that ends an assistant turn; plus that token's text."""
        ids = set(self.eos_ids)
        eos = self.special.get("eos_token")
        if eos and self.tokenizer.token_to_id(eos) is not None:
            ids.add(self.tokenizer.token_to_id(eos))
        end_of_turn = None
        first = self.ids(sep_assistant)[:1]
        if first and first[0] in self.special_ids():
            ids.add(first[0])
            end_of_turn = self.tokenizer.id_to_token(first[0])
        return sorted(ids), end_of_turn


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _fit_one(cp: _Checkpoint, hint: Conversation) -> Fit:
    conv, mode = _solve(cp.body, hint)
    conv.system_prefix_token_ids = [cp.bos_id] if cp.has_bos else None
    sep_assistant = conv.seps[-1]
    conv.stop_token_ids, end_of_turn = cp.stops(sep_assistant)
    stop_str = [s for s in hint.stop_str if cp.tokenizer.token_to_id(s) is not None or s in conv.roles.values()]
    if end_of_turn and end_of_turn not in stop_str:
        stop_str.append(end_of_turn)
    conv.stop_str = stop_str

    reasoning = cp.expected("reasoning in history")
    if not isinstance(reasoning, TemplateRaised) and cp.ours(conv, "reasoning in history") != reasoning:
        conv.strip_reasoning_in_history = True
    for probe in PROBES:
        if probe.startswith("system"):
            continue
        want = cp.expected(probe)
        if isinstance(want, TemplateRaised):
            if probe == "reasoning in history":
                continue
            raise NoFit(f"probe {probe!r}: the template raised: {want}")
        got = cp.ours(conv, probe)
        if got != want:
            at = _first_difference(got, want)
            raise NoFit(f"probe {probe!r} differs at token {at}")

    notes: list[str] = []
    if mode == "refused":
        raised = cp.texts["system, one turn"]
        notes.append(f"the checkpoint's template refuses a system message ({raised}); here one is put before the first turn as it is")
    elif mode == "ignored":
        notes.append("the checkpoint's template drops a system message; so does this one")
    else:
        for probe in ("system, one turn", "system, two turns"):
            want = cp.expected(probe)
            if isinstance(want, TemplateRaised):
                notes.append(f"probe {probe!r}: the checkpoint's template raised ({want})")
                break
            got = cp.ours(conv, probe)
            if got != want:
                at = _first_difference(got, want)
                text = cp.texts[probe]
                shown = text[len(cp.bos):] if cp.has_bos and isinstance(text, str) else text
                notes.append(
                    f"with a system message it differs (probe {probe!r}, token {at}): the checkpoint renders "
                    f"{_clip(str(shown))}, MLC's format cannot make the system block optional, so the message "
                    "is put before the first turn as it is"
                )
                break
    return Fit(conv, hint.name or "", notes)


def _clip(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def _score(fit: Conversation, base: Conversation) -> float:
    """How many MLC fields the fit shares with a registered template; stop ids count each."""
    score = 0.0
    score += fit.system_template == base.system_template
    score += fit.system_message == base.system_message
    score += fit.roles.get("user") == base.roles.get("user")
    score += fit.roles.get("assistant") == base.roles.get("assistant")
    score += list(fit.seps) == list(base.seps)
    score += fit.role_content_sep == base.role_content_sep
    score += fit.role_empty_sep == base.role_empty_sep
    score += fit.add_role_after_system_message == base.add_role_after_system_message
    score += bool(fit.system_prefix_token_ids) == bool(base.system_prefix_token_ids)
    score += 2 * (bool(fit.strip_reasoning_in_history) == bool(base.strip_reasoning_in_history))
    ours, theirs = set(fit.stop_token_ids), set(base.stop_token_ids)
    score += len(ours & theirs) - 0.5 * len(ours ^ theirs)
    score += 0.5 * len(set(fit.stop_str) & set(base.stop_str))
    return score


def _closest_rendering(cp: _Checkpoint, templates: Mapping[str, Conversation]) -> str:
    """For the no-fit error: the registered template whose text matches longest, and where it stops."""
    best: tuple[int, int, str, str, int] | None = None
    order = [p for p in PROBES if not p.startswith("system")]
    for name, conv in templates.items():
        exact, probe, pos = 0, order[0], 0
        for probe in order:
            want = cp.texts[probe]
            if isinstance(want, TemplateRaised):
                continue
            prefix, text = runtime_prompt(conv, PROBES[probe])
            got = (cp.bos if prefix and cp.bos else "") + text
            if got != want:
                pos = _common_prefix(got, want)
                break
            exact += 1
        else:
            pos = -1
        key = (exact, pos, name, probe, pos)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    _, _, name, probe, pos = best
    if pos < 0:
        return f"closest is {name!r}: it renders the same text, but the tokens differ (check bos_token and special tokens)"
    want = cp.texts[probe]
    assert isinstance(want, str)
    prefix, text = runtime_prompt(templates[name], PROBES[probe])
    got = (cp.bos if prefix and cp.bos else "") + text
    return (
        f"closest is {name!r}: probe {probe!r} differs at character {pos}: "
        f"the checkpoint renders {_clip(want[pos:], 30)}, {name!r} {_clip(got[pos:], 30)}"
    )


def fit_template(
    template: str,
    tokenizer: Any,
    special: Mapping[str, str],
    eos_ids: Sequence[int] = (),
    templates: Mapping[str, Conversation] | None = None,
    preferred: Sequence[str] = (),
) -> Fit:
    """The best fit over the registered templates, or a one-line UserError (field conv_template)
    naming the closest one and where it differs. Between fits that share as many fields with their
    template, the first of `preferred` (the model family's own, most recent first) wins."""
    if templates is None:
        from mlcbuild.templates import CONV_TEMPLATES

        templates = CONV_TEMPLATES
    cp = _Checkpoint(template, tokenizer, special, eos_ids)
    fits: list[tuple[float, int, Fit]] = []
    reasons: dict[str, str] = {}
    for i, (name, base) in enumerate(templates.items()):
        try:
            fit = _fit_one(cp, base)
        except NoFit as e:
            reasons[name] = str(e)
            continue
        rank = -list(preferred).index(name) if name in preferred else -len(preferred)
        fits.append((_score(fit.conversation, base) + (not fit.notes), rank, -i, fit))
    if fits:
        return max(fits, key=lambda f: f[:3])[3]
    first = cp.texts["one turn"]
    if isinstance(first, TemplateRaised):
        raise UserError(f"auto: the checkpoint's chat template raised on a plain user message ({first}); name a template (`mlcbuild templates`)", field=FIELD)
    raise UserError(
        "auto: the checkpoint's chat template fits no MLC conversation template; "
        f"{_closest_rendering(cp, templates)}; name a template (`mlcbuild templates`)",
        field=FIELD,
    )


def fit_folder(folder: Path, tokenizer_json: Path, eos_ids: Sequence[int] = (), preferred: Sequence[str] = ()) -> Fit:
    """gen-config's entry: the chat template and special tokens of a model folder, and its tokenizer."""
    found = read_chat_template(folder)
    if found is None:
        raise UserError(
            "auto: the checkpoint has no chat template (tokenizer_config.json chat_template or "
            f"{CHAT_TEMPLATE_FILE}); name a template (`mlcbuild templates`)", field=FIELD)
    if not tokenizer_json.is_file():
        raise UserError("auto: needs tokenizer.json to compare token ids; name a template (`mlcbuild templates`)", field=FIELD)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    return fit_template(found[0], tokenizer, special_tokens(folder), eos_ids, preferred=preferred)
