"""`mlcbuild run`, `mlcbuild chat`, `mlcbuild serve`: use what was built (engine in mlcbuild.runtime)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from mlcbuild.artifact import SAMPLING_RANGES, check_sampling
from mlcbuild.cli.main import command, positive_float, positive_int
from mlcbuild.errors import UserError

CHAT_HELP = "commands: /reset (forget the conversation), /stats (speed of the last reply), /exit"


def sampling_value(name: str) -> Callable[[str], float]:
    """argparse type for a sampling field, checked as mlc-chat-config.json's is (`check_sampling`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_sampling(name, value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


def add_parsers(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    """The runtime subcommands' arguments; `subcommand(name, help=...)` is mlcbuild.cli.main's parser factory."""

    def model(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", type=Path, metavar="RECIPE|ARTIFACT", help="a recipe file; or a built model folder (or its mlc-chat-config.json), with --model-lib or its library in ../libs; or that library")
        sp.add_argument("-q", "--quant", default=None, help="quantization (recipe; default: its first)")
        sp.add_argument("-t", "--target", default=None, help="target whose library to load (default: llvm if built, else the first)")
        sp.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the library's kind)")
        sp.add_argument("--model-lib", type=Path, default=None, help="the library to load with an artifact folder (default: ../libs/<name>-<target>*)")

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--temperature", type=sampling_value("temperature"), default=None,
                        help=f"in {SAMPLING_RANGES['temperature']}, 0 = greedy (default: the config's)")
        sp.add_argument("--top-p", type=sampling_value("top_p"), default=None,
                        help=f"nucleus sampling mass in {SAMPLING_RANGES['top_p']} (default: the config's)")
        sp.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: random)")
        sp.add_argument("--max-tokens", type=positive_int, default=None, metavar="N", help="at most N new tokens (default: until the context is full)")

    r = subcommand("run", help="load a built artifact and answer one prompt")
    model(r)
    sampling(r)
    r.add_argument("--prompt", default="Hello", help="the user's message, or with --raw the text to continue (default: %(default)r)")
    r.add_argument("--raw", action="store_true", help="continue the text as is (no conversation template)")
    r.add_argument("--stats", action="store_true", help="print prefill/decode speed to stderr")

    c = subcommand("chat", help="chat with a built artifact in the terminal")
    model(c)
    sampling(c)

    s = subcommand("serve", help="serve built artifacts over the OpenAI HTTP API")
    s.add_argument("model", type=Path, nargs="+", metavar="RECIPE|ARTIFACT", help="recipe files or built artifact folders (each is one model, or one per -q)")
    s.add_argument("-q", "--quant", action="append", default=None, help="quantization to serve from a recipe (repeat for several; default: its first)")
    s.add_argument("-t", "--target", default=None, help="target whose library to load (default: llvm if built, else the first)")
    s.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the library's kind)")
    s.add_argument("--model-lib", type=Path, default=None, help="the library to load with one artifact folder (default: ../libs/<name>-<target>*)")
    s.add_argument("--quiet", action="store_true", help="no request log line on stderr")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=tcp_port, default=8000, help="TCP port (default: %(default)s)")
    s.add_argument(
        "--request-timeout", type=positive_float, default=15.0, metavar="SECONDS",
        help="close a connection whose request has not fully arrived after this long (default: %(default)s)",
    )


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be ≤ 65535, got {value}")
    return value


def _engine(args: argparse.Namespace) -> Any:
    from mlcbuild.runtime import open_engine

    return open_engine(args.model, args.quant, args.target, args.device, args.model_lib)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "max_tokens": args.max_tokens}


class _Printer:
    """Writes streamed text as it comes, except trailing whitespace (templates end replies with a newline)."""

    def __init__(self) -> None:
        self.held = ""

    def write(self, piece: str) -> None:
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body) :]
        sys.stdout.write(body)
        sys.stdout.flush()

    def end(self) -> None:
        self.held = ""
        sys.stdout.write("\n")
        sys.stdout.flush()


def _speed(usage: Any) -> str:
    return (
        f"prefill: {usage.prefill_tokens} tok at {usage.prefill_tokens_per_s:.1f} tok/s, "
        f"decode: {usage.completion_tokens} tok at {usage.decode_tokens_per_s:.1f} tok/s"
    )


@command("run")
def run_cmd(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        if args.raw:
            chunks = engine.completions.create(args.prompt, stream=True, **_sampling(args))
            pieces = (c.choices[0].text for c in chunks if c.choices)
        else:
            messages = [{"role": "user", "content": args.prompt}]
            chunks = engine.chat.completions.create(messages, stream=True, **_sampling(args))
            pieces = (c.choices[0].delta.content or "" for c in chunks if c.choices)
        out = _Printer()
        for piece in pieces:
            out.write(piece)
        out.end()
        if args.stats and engine.stats().last:
            print(_speed(engine.stats().last), file=sys.stderr)
    return 0


@command("chat")
def chat_cmd(args: argparse.Namespace) -> int:
    try:
        import readline  # noqa: F401  (line editing for input())
    except ImportError:
        pass
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # bytes that are not UTF-8 reach the engine, which says so
    with _engine(args) as engine:
        print(f"mlcbuild chat: {engine.model} ({CHAT_HELP})", flush=True)
        history: list[dict[str, str]] = []
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history = []
                print("(conversation cleared)", flush=True)
                continue
            if text == "/stats":
                last = engine.stats().last
                print(_speed(last) if last else "no reply yet", flush=True)
                continue
            if text.startswith("/"):
                print(f"unknown command {text.split()[0]}; {CHAT_HELP}", flush=True)
                continue
            history.append({"role": "user", "content": text})
            reply, out = [], _Printer()
            try:
                for chunk in engine.chat.completions.create(history, stream=True, **_sampling(args)):
                    piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
                    reply.append(piece)
                    out.write(piece)
            except UserError as exc:
                history.pop()
                print(f"mlcbuild: error: {exc} (try /reset)", flush=True)
                continue
            out.end()
            history.append({"role": "assistant", "content": "".join(reply)})


@command("serve")
def serve_cmd(args: argparse.Namespace) -> int:
    """The port is taken before the model loads, so a busy port is one line at once."""
    try:
        from mlcbuild.serve import listen, serve
    except ImportError as exc:
        raise UserError(f"serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'mlcbuild[serve]'") from None

    from mlcbuild.runtime import open_engine

    if args.model_lib is not None and len(args.model) > 1:
        raise UserError("--model-lib goes with one artifact folder", field="--model-lib")
    sock = listen(args.host, args.port)
    engines: list[Any] = []
    try:
        for spec in args.model:
            for quant in args.quant or [None]:
                engine = open_engine(spec, quant, args.target, args.device, args.model_lib)
                engines.append(engine)
                if engine.model in {e.model for e in engines[:-1]}:
                    raise UserError(f"{engine.model} is given twice", field="model")
        serve(engines, sock, args.request_timeout, args.quiet)
    finally:
        for engine in engines:
            engine.close()
    return 0
