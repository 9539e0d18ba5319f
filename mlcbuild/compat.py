"""MLC-LLM's former Python API (`ChatModule`, `GenerationConfig`, `callback.StreamToStdout`) over our engine.

Snippets people copied from MLC's docs keep running:

    from mlcbuild.compat import ChatModule, StreamToStdout
    cm = ChatModule(model="dist/Llama-2-7b-chat-hf-q4f16_1-MLC", model_lib_path="dist/libs/....so")
    cm.generate(prompt="What is the meaning of life?", progress_callback=StreamToStdout(callback_interval=2))
    print(cm.stats()); cm.reset_chat()

Names, arguments and callback protocol are MLC's (`chat_module.py`, `callback.py` before its removal):
a callback is called with the whole message so far every `callback_interval` tokens, then once with
`stopped=True`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclass
class GenerationConfig:
    """Overrides of the chat config's sampling settings for one `generate` (None: the config's)."""

    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_gen_len: int | None = None
    seed: int | None = None


class DeltaCallback:
    """MLC's base: turns "the message so far" into the part not seen yet."""

    def __init__(self) -> None:
        self.curr_message = ""

    def __call__(self, message: str = "", stopped: bool = False) -> None:
        if stopped:
            self.stopped_callback()
            self.curr_message = ""
            return
        delta = message[len(self.curr_message) :] if message.startswith(self.curr_message) else message
        self.curr_message = message
        self.delta_callback(delta)

    def delta_callback(self, delta_message: str) -> None:
        raise NotImplementedError

    def stopped_callback(self) -> None:
        pass


class StreamToStdout(DeltaCallback):
    """Print the reply as it is generated, a newline at the end."""

    def __init__(self, callback_interval: int = 2):
        super().__init__()
        self.callback_interval = callback_interval

    def delta_callback(self, delta_message: str) -> None:
        print(delta_message, end="", flush=True)

    def stopped_callback(self) -> None:
        print(flush=True)


class ChatModule:
    """A chat with memory over a built artifact folder (or a recipe), in MLC's old API shape."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        chat_config: Any = None,
        model_lib_path: str | None = None,
        model_lib: str | None = None,
    ):
        from mlcbuild.runtime import open_engine

        lib = model_lib_path or model_lib
        self._engine = open_engine(Path(model), device=None if device == "auto" else device, model_lib=Path(lib) if lib else None)
        self._history: list[dict[str, str]] = []

    def generate(
        self,
        prompt: str | Sequence[Any],
        generation_config: GenerationConfig | None = None,
        progress_callback: Callable[..., None] | None = None,
        stateless: bool = False,
    ) -> str:
        """The reply to `prompt` (a user message, or a whole list of messages), remembered for the next turn."""
        if stateless:
            self.reset_chat()
        if isinstance(prompt, str):
            messages = [*self._history, {"role": "user", "content": prompt}]
        else:
            messages = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in prompt]
        settings = {k: v for k, v in asdict(generation_config or GenerationConfig()).items() if v is not None}
        if "max_gen_len" in settings:
            settings["max_tokens"] = settings.pop("max_gen_len")
        interval = max(1, int(getattr(progress_callback, "callback_interval", 1)))
        parts: list[str] = []
        for i, chunk in enumerate(self._engine.chat.completions.create(messages, stream=True, **settings)):
            parts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            if progress_callback is not None and i % interval == 0:
                progress_callback(message="".join(parts))
        reply = "".join(parts)
        if progress_callback is not None:
            progress_callback(message=reply)
            progress_callback(stopped=True)
        self._history = [*messages, {"role": "assistant", "content": reply}]
        return reply

    def reset_chat(self, chat_config: Any = None) -> None:
        self._history = []

    def stats(self, verbose: bool = False) -> str:
        """MLC's one-line speed report of the last reply."""
        last = self._engine.stats().last
        if last is None:
            return "prefill: 0.0 tok/s, decode: 0.0 tok/s"
        return f"prefill: {last.prefill_tokens_per_s:.1f} tok/s, decode: {last.decode_tokens_per_s:.1f} tok/s"

    def benchmark_generate(self, prompt: str, generate_length: int) -> str:
        self.reset_chat()
        settings = {"max_tokens": generate_length, "ignore_eos": True}
        reply = self._engine.chat.completions.create([{"role": "user", "content": prompt}], **settings)
        return reply.choices[0].message.content


__all__ = ["ChatModule", "DeltaCallback", "GenerationConfig", "StreamToStdout"]
