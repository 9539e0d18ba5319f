"""An OpenAI-style engine over a compiled model library, in the spirit of MLC's `MLCEngine`.

    engine = LLMEngine.load(model_dir, lib)            # or LLMEngine.from_recipe(recipe, "q4f16_1")
    reply = engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    for chunk in engine.chat.completions.create(messages=..., stream=True): ...

One scheduler thread owns the library (TVM is not thread-safe) and runs continuous batching:
new requests are prefilled together through `batch_prefill` (up to prefill_chunk_size tokens per
call), then every running sequence advances one token through `batch_decode`; a request that
arrives mid-generation joins at the next step. Finished sequences stay in the paged KV cache for
a while, and a new prompt that starts with one of them (the next turn of a chat) takes it over
and prefills only the tokens after the common prefix. `chat` and `completions` (OpenAI's request
and reply shapes) are `runtime/openai_api.py`, over `submit` and `events` here.
"""
from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from mlcbuild.errors import UserError
from mlcbuild.runtime.engine import PAGE_SIZE, Engine
from mlcbuild.runtime.library_sampler import Row
from mlcbuild.runtime.openai_api import Chat, Completions, UnknownModelError, request_flag, request_int, unicode_text
from mlcbuild.runtime.protocol import CompletionUsage, TokenLogprob, TopLogprob
from mlcbuild.runtime.sampling import SamplingParams, log_softmax
from mlcbuild.runtime.textstream import TextStream
from mlcbuild.templates.conversation import FUNCTION

if TYPE_CHECKING:
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.runtime.tools import Tools

MAX_CHARS_PER_TOKEN = 64
"""An upper bound on the characters one token stands for, to bound prompts before tokenizing."""

RETAINED_SEQUENCES = 4
"""Finished sequences kept in the KV cache for prefix reuse (evicted first when pages run out)."""


@dataclass
class _Event:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: CompletionUsage | None = None


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: set[int]
    text: TextStream
    top_logprobs: int | None
    out: "queue.Queue[_Event | BaseException]" = field(default_factory=queue.Queue)
    rng: Any = None
    seq_id: int = -1
    pos: int = 0
    reused: int = 0
    generated: list[int] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)
    pending: int | None = None
    cancelled: bool = False
    t_start: float = 0.0
    t_first: float = 0.0
    constraint: Any = None
    """The request's grammar (`runtime/grammar.py`) when it asked for a response_format."""

    @property
    def kv_tokens(self) -> list[int]:
        """Tokens whose keys/values are in the cache: the prompt, then every generated token but the pending one."""
        if self.pos < len(self.prompt):
            return self.prompt[: self.pos]
        forwarded = len(self.generated) - (1 if self.pending is not None else 0)
        return self.prompt + self.generated[:forwarded]


@dataclass
class EngineStats:
    """Totals since load, and the speeds of the last finished request."""

    requests: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    reused_tokens: int = 0
    max_decode_batch: int = 0
    last: CompletionUsage | None = None

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


class LLMEngine:
    """A loaded model with `chat.completions.create` and `completions.create`."""

    def __init__(self, engine: Engine, model: str = "model", retained: int = RETAINED_SEQUENCES):
        if engine.tokenizer is None:
            raise UserError("no tokenizer.json next to mlc-chat-config.json; the engine needs one")
        self.engine = engine
        self.model = model
        self.created = int(time.time())
        self.max_batch_size = engine.max_batch_size
        self.context_window_size = engine.context_window_size
        self._template = engine.conversation()
        self._retain = 0 if engine.sliding_window_size > 0 else retained
        window = self.context_window_size if self.context_window_size > 0 else engine.sliding_window_size
        self._pages_per_seq = -(-window // PAGE_SIZE)
        self._total_pages = self._pages_per_seq * (self.max_batch_size + 1)
        self._kv = engine.create_kv_cache(self.max_batch_size + self._retain, self._total_pages * PAGE_SIZE)
        self._seq_ids = itertools.count()
        self._retained: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._prefilling: list[_Request] = []
        self._running: list[_Request] = []
        self._stats = EngineStats()
        self._lock = threading.Lock()
        self._closed = False
        self._grammar_compiler: Any = None
        self._thread = threading.Thread(target=self._loop, name="mlcbuild-engine", daemon=True)
        self._thread.start()
        self.chat = Chat(self)
        self.completions = Completions(self)

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: str | Path, lib: str | Path, device: str | None = None, model: str | None = None) -> "LLMEngine":
        """From an artifact folder and its library; device "cpu"/"cuda[:N]", or None = the library's kind."""
        return cls(Engine.load(model_dir, lib, device=device or device_for_library(Path(lib))), model or Path(model_dir).name)

    @classmethod
    def from_recipe(
        cls, recipe: "Recipe", quantization: str | None = None, target: str | None = None, device: str | None = None
    ) -> "LLMEngine":
        """A recipe's built outputs; target default: llvm if the recipe builds it, else its first."""
        from mlcbuild.runtime import artifact_paths, default_device, recipe_target

        model_dir, lib = artifact_paths(recipe, quantization, target)
        device = device or default_device(recipe_target(recipe, target).name)
        return cls(Engine.load(model_dir, lib, device=device), model_dir.name)

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- prompts ---------------------------------------------------------------------------------

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], tools: "Tools | None" = None) -> list[int]:
        """The prompt token ids for OpenAI-style messages under the conversation template (with
        `tools`, described in the system message; earlier calls and tool results as text)."""
        from mlcbuild.runtime.tools import history_text

        conv = self._template.copy()
        turns: list[tuple[str, str | None]] = []
        if not messages:
            raise UserError("messages must not be empty", field="messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                raise UserError("must be a message object", field=f"messages[{i}]")
            tool_turn = history_text(msg, i)
            if tool_turn is not None:
                role, text = tool_turn
                if role == "tool" and "tool" not in conv.roles:
                    role, text = "user", f"Function result: {text}"
                turns.append((role, unicode_text(text, f"messages[{i}].content")))
                continue
            role, content = msg.get("role"), _text_content(msg.get("content"), i)
            if role == "system":
                if i != 0:
                    raise UserError("a system message may only come first", field=f"messages[{i}].role")
                conv.system_message = content
            elif role == "user":
                turns.append((role, content))
            elif role == "assistant":
                turns.append((role, content.strip()))
            else:
                raise UserError(f"role must be system, user or assistant (got {role!r})", field=f"messages[{i}].role")
        if not turns or turns[-1][0] not in ("user", "tool"):
            raise UserError("the last message must come from the user", field="messages")
        if tools is not None:
            if FUNCTION in conv.system_template:
                conv.function_string = tools.description()
            else:
                conv.system_message = f"{conv.system_message}\n\n{tools.description()}" if conv.system_message else tools.description()
        conv.messages = [*turns, ("assistant", None)]
        text = self._bounded(conv.as_prompt(), "messages")
        prefix = list(conv.system_prefix_token_ids or [])
        return prefix + self.engine.tokenizer.encode(text, add_special_tokens=False).ids

    def completion_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        """Raw continuation: the tokenizer's own special tokens, plus BOS where the model expects one."""
        if not isinstance(prompt, str):
            return list(prompt)  # checked by `submit`, as every prompt is
        return self.engine.with_bos(self.engine.tokenizer.encode(self._bounded(unicode_text(prompt, "prompt"), "prompt")).ids)

    def _bounded(self, text: str, field: str) -> str:
        """Refuse, before tokenizing, a text too long to fit the context window however it tokenizes
        (no token of a real tokenizer spans more than MAX_CHARS_PER_TOKEN characters): tokenizing
        100 MB would take minutes and gigabytes to end in the same refusal."""
        window = self.context_window_size if self.context_window_size > 0 else self.engine.sliding_window_size
        if window > 0 and len(text) > window * MAX_CHARS_PER_TOKEN:
            raise UserError(
                f"the prompt has {len(text)} characters, more than any {window}-token context window holds",
                field=field,
            )
        return text

    def _constraint(self, response_format: Any, tools: "Tools | None") -> Any:
        if tools is not None:
            if response_format is not None and response_format != {"type": "text"}:
                raise UserError("response_format and tools cannot be combined", field="response_format")
            return self._grammars().tool_constraint(tools)
        return self._grammars().constraint(response_format) if response_format is not None else None

    def _grammars(self) -> Any:
        if self._grammar_compiler is None:
            from mlcbuild.runtime.grammar import Grammars

            config = self.engine.chat_config
            method = config.tokenizer_info.token_postproc_method if config else "byte_fallback"
            self._grammar_compiler = Grammars(self.engine.tokenizer, self.engine.vocab_size, method, self.engine.stop_token_ids())
        return self._grammar_compiler

    def stop_strings(self) -> list[str]:
        return list(self._template.stop_str or [])

    # --- requests --------------------------------------------------------------------------------

    def sampling(self, **given: Any) -> SamplingParams:
        """Request values, else mlc-chat-config.json's, else MLC's defaults; `given` holds only
        REQUEST_SAMPLING names (the request checks that)."""
        return SamplingParams.from_config(
            self.engine.sampling, seed=given.pop("seed", None), logit_bias=self._logit_bias(given.pop("logit_bias", None)), **given
        )

    def _logit_bias(self, given: Any) -> tuple[tuple[int, float], ...]:
        """OpenAI's {"token id": bias} (JSON keys are strings) as checked (id, bias) pairs."""
        if given is None:
            return ()
        if not isinstance(given, Mapping) or len(given) > 300:
            raise UserError("must be an object of at most 300 token ids to biases", field="logit_bias")
        pairs = []
        for key, bias in given.items():
            token = int(key) if isinstance(key, str) and key.isdigit() else key
            if isinstance(token, bool) or not isinstance(token, int):
                raise UserError(f"keys must be token ids (got {key!r})", field="logit_bias")
            pairs.append((token, bias))
        self.engine.check_token_ids([t for t, _ in pairs], field="logit_bias")
        return tuple(sorted(pairs))

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        top_logprobs: int | None = None,
        ignore_eos: bool = False,
        template_stops: bool = True,
        response_format: Any = None,
        tools: "Tools | None" = None,
    ) -> _Request:
        """Queue a request; its events arrive on `request.out`. Errors in the request raise here."""
        import numpy as np

        if self._closed:
            raise UserError("the engine is closed")
        window = self.context_window_size
        if not prompt:
            raise UserError("the prompt is empty", field="prompt")
        self.engine.check_token_ids(prompt)
        if window > 0 and len(prompt) >= window:
            raise UserError(
                f"the prompt has {len(prompt)} tokens but the context window is {window} tokens "
                f"(it must leave room for at least one new token)",
                field="messages",
            )
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise UserError(f"must be a positive integer (got {max_tokens!r})", field="max_tokens")
        stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else [] if stop is None else [stop]
        if not all(isinstance(s, str) for s in stops) or len(stops) > 16:
            raise UserError("must be a string or a list of at most 16 strings", field="stop")
        stops = [unicode_text(s, "stop") for s in stops]
        if top_logprobs is not None:
            request_int(top_logprobs, 0, 20, "top_logprobs")
        request_flag(ignore_eos, "ignore_eos")
        limit = (window - len(prompt)) if window > 0 else 1 << 30
        stop_ids = set() if ignore_eos else self.engine.stop_token_ids()
        req = _Request(
            prompt=[int(t) for t in prompt],
            params=params,
            max_tokens=min(max_tokens or limit, limit),
            stop_ids=stop_ids,
            text=TextStream(self.engine.tokenizer, [*stops, *(self.stop_strings() if template_stops else [])]),
            top_logprobs=top_logprobs,
            rng=np.random.default_rng(params.seed),
            t_start=time.perf_counter(),
            constraint=self._constraint(response_format, tools),
        )
        self._inbox.put(req)
        return req

    def events(self, req: _Request) -> Iterator[_Event]:
        """The request's events until it finishes; leaving early cancels it."""
        try:
            while True:
                item = req.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            req.cancelled = True

    def stats_dict(self) -> dict[str, Any]:
        stats = self.stats()
        out = {k: v for k, v in vars(stats).items() if k != "last"}
        out["prefill_tokens_per_s"] = round(stats.prefill_tokens_per_s, 2)
        out["decode_tokens_per_s"] = round(stats.decode_tokens_per_s, 2)
        return out

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(**vars(self._stats))

    # --- scheduler (engine thread only) ----------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed:
            busy = bool(self._prefilling or self._running)
            try:
                item = self._inbox.get(block=not busy and not self._waiting)
            except queue.Empty:
                item = ...
            while item is not ...:
                if item is None:
                    self._fail_all(UserError("the engine was closed"))
                    return
                self._waiting.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = ...
            try:
                self._admit()
                if self._prefilling:
                    self._prefill_step()
                if self._running:
                    self._decode_step()
            except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the engine
                for req in [*self._prefilling, *self._running]:
                    req.out.put(exc)
                    self._drop(req, retain=False)
                self._prefilling, self._running = [], []

    def _fail_all(self, exc: BaseException) -> None:
        for req in [*self._waiting, *self._prefilling, *self._running]:
            req.out.put(exc)
        self._waiting.clear()
        self._prefilling, self._running = [], []

    def _admit(self) -> None:
        while self._waiting and len(self._prefilling) + len(self._running) < self.max_batch_size:
            req = self._waiting.popleft()
            if req.cancelled:
                continue
            self._attach(req)
            self._prefilling.append(req)

    def _attach(self, req: _Request) -> None:
        """Give the request a sequence: the retained one sharing the longest prefix, else a new one."""
        best, best_len = None, 0
        for seq_id, tokens in self._retained.items():
            n = _common_prefix(tokens, req.prompt, len(req.prompt) - 1)
            if n > best_len:
                best, best_len = seq_id, n
        if best is not None:
            tokens = self._retained.pop(best)
            self.engine.popn(self._kv, best, len(tokens) - best_len)
            req.seq_id, req.pos, req.reused = best, best_len, best_len
        else:
            req.seq_id = next(self._seq_ids)
            self.engine.add_sequence(self._kv, req.seq_id)

    def _evict(self) -> None:
        seq_id, _ = self._retained.popitem(last=False)
        self.engine.remove_sequence(self._kv, seq_id)

    def _make_room(self, extra_tokens: int) -> None:
        """Evict retained sequences until the cache has pages for `extra_tokens` more."""
        def pages(n: int) -> int:
            return -(-n // PAGE_SIZE)

        while self._retained:
            used = sum(pages(len(t)) for t in self._retained.values())
            used += sum(pages(r.pos + len(r.generated)) for r in (*self._prefilling, *self._running))
            if used + pages(extra_tokens) + len(self._prefilling) + len(self._running) <= self._total_pages:
                return
            self._evict()

    def _prefill_step(self) -> None:
        budget = self.engine.prefill_chunk_size
        batch: list[tuple[_Request, list[int]]] = []
        for req in list(self._prefilling):
            if req.cancelled:
                self._prefilling.remove(req)
                self._drop(req, retain=False)
                continue
            if budget <= 0:
                break
            chunk = req.prompt[req.pos : req.pos + budget]
            batch.append((req, chunk))
            budget -= len(chunk)
        if not batch:
            return
        self._make_room(sum(len(c) for _, c in batch))
        t0 = time.perf_counter()
        logits = self.engine.batch_prefill(self._kv, [r.seq_id for r, _ in batch], [c for _, c in batch])
        elapsed = time.perf_counter() - t0
        with self._lock:
            self._stats.prefill_tokens += sum(len(c) for _, c in batch)
            self._stats.prefill_seconds += elapsed
        done = []
        for (req, chunk), row in zip(batch, logits):
            req.pos += len(chunk)
            if req.pos >= len(req.prompt):
                done.append((req, row))
        for req, _ in done:
            self._prefilling.remove(req)
            req.t_first = time.perf_counter()
            self._running.append(req)
        self._sample([r for r, _ in done], [row for _, row in done])

    def _decode_step(self) -> None:
        live = []
        for req in self._running:
            if req.cancelled:
                self._drop(req, retain=False)
            else:
                live.append(req)
        self._running = list(live)
        if not live:
            return
        self._make_room(len(live))
        tokens = [int(r.pending) for r in live]  # type: ignore[arg-type]
        t0 = time.perf_counter()
        logits = self.engine.batch_decode(self._kv, [r.seq_id for r in live], tokens)
        elapsed = time.perf_counter() - t0
        for req in live:
            req.pending = None
        with self._lock:
            self._stats.decode_tokens += len(live)
            self._stats.decode_seconds += elapsed
            self._stats.max_decode_batch = max(self._stats.max_decode_batch, len(live))
        self._sample(live, list(logits))

    def _sample(self, reqs: list[_Request], rows: list[Any]) -> None:
        """Penalties, softmax and top-p sampling through the library (`LibrarySampler`)."""
        import numpy as np

        if not reqs:
            return
        choices = [Row(r.params, r.counts, r.prompt, float(r.rng.random()), r.constraint.bitmask() if r.constraint else None) for r in reqs]
        tokens, processed = self.engine.sampler.sample(np.stack(rows), choices)
        for req, token, row in zip(reqs, tokens, processed):
            try:
                self._accept(req, token, row)
            except Exception as exc:  # noqa: BLE001 - one request's failure ends that request only
                self._fail(req, exc)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        for group in (self._prefilling, self._running):
            if req in group:
                group.remove(req)
        req.out.put(exc)
        self._drop(req, retain=False)

    def _accept(self, req: _Request, token: int, row: Any) -> None:
        if req.constraint is not None:
            req.constraint.accept(token)
        req.generated.append(token)
        req.counts[token] += 1
        req.pending = token
        event = _Event()
        if req.top_logprobs is not None:
            event.logprobs.append(self._logprob(token, row, req.top_logprobs))
        if token in req.stop_ids:
            event.finish_reason = "stop"
            event.text = req.text.finish()
        else:
            event.text = req.text.push(token)
            if req.text.stopped:
                event.finish_reason = "stop"
            elif len(req.generated) >= req.max_tokens:
                event.finish_reason = "length"
                event.text += req.text.finish()
        if event.finish_reason is not None:
            event.usage = self._finish(req)
        req.out.put(event)

    def _logprob(self, token: int, row: Any, top: int) -> TokenLogprob:
        import numpy as np

        logp = log_softmax(row.astype("float64"))
        tok = self.engine.tokenizer

        def entry(t: int) -> tuple[str, list[int]]:
            text = tok.decode([t], skip_special_tokens=False)
            return text, list(text.encode("utf-8", errors="replace"))

        text, raw = entry(token)
        tops = []
        for t in np.argsort(-logp, kind="stable")[:top]:
            t_text, t_raw = entry(int(t))
            tops.append(TopLogprob(t_text, _finite_logprob(logp[t]), t_raw))
        return TokenLogprob(text, _finite_logprob(logp[token]), raw, tops)

    def _finish(self, req: _Request) -> CompletionUsage:
        if req in self._running:
            self._running.remove(req)
        self._drop(req, retain=True)
        now = time.perf_counter()
        prefill_time = max(req.t_first - req.t_start, 1e-9)
        computed = len(req.prompt) - req.reused
        usage = CompletionUsage(
            prompt_tokens=len(req.prompt),
            completion_tokens=len(req.generated),
            total_tokens=len(req.prompt) + len(req.generated),
            prefill_tokens=computed,
            prefill_tokens_per_s=round(computed / prefill_time, 2),
            decode_tokens_per_s=round((len(req.generated) - 1) / (now - req.t_first), 2) if len(req.generated) > 1 else 0.0,
        )
        with self._lock:
            self._stats.requests += 1
            self._stats.reused_tokens += req.reused
            self._stats.last = usage
        return usage

    def _drop(self, req: _Request, retain: bool) -> None:
        if req.seq_id < 0:
            return
        if retain and self._retain > 0:
            self._retained[req.seq_id] = req.kv_tokens
            while len(self._retained) > self._retain:
                self._evict()
        else:
            self.engine.remove_sequence(self._kv, req.seq_id)
        req.seq_id = -1


def _finite_logprob(value: Any) -> float:
    """A log-probability JSON can carry: -inf (and NaN) become -9999.0, as OpenAI reports them."""
    import math

    value = float(value)
    return value if math.isfinite(value) else -9999.0


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


def _text_content(content: Any, i: int) -> str:
    """OpenAI message content: a string, or a list of {"type": "text", "text": ...} parts."""
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return unicode_text(content, where)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text", ""), str) for p in content):
        return unicode_text("".join(p.get("text", "") for p in content), where)
    raise UserError("content must be a string or a list of text parts", field=where)


def device_for_library(lib: Path) -> str:
    """cuda for a library built for cuda (its name says so), else cpu."""
    return "cuda" if "-cuda" in lib.name else "cpu"


__all__ = ["EngineStats", "LLMEngine", "UnknownModelError", "device_for_library"]
