"""FastAPI app (fastapi is the `serve` extra; only `mlcbuild serve` imports this module): /v1/chat/completions, /v1/completions (SSE or JSON), /v1/models, /health.

Every client mistake is a 4xx with OpenAI's error body `{"error": {"message", "type", "param",
"code"}}`; the engine stays up. Engine calls block, so they run in the thread pool; the engine's
own scheduler thread batches concurrent requests.
"""
from __future__ import annotations

import functools
import json
import logging
import socket
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from mlcbuild.errors import UserError
from mlcbuild.runtime.openai_api import REQUEST_SAMPLING

if TYPE_CHECKING:
    from mlcbuild.runtime.llm_engine import LLMEngine

CHAT_FIELDS = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "logprobs",
    "top_logprobs", "n", "user", "ignore_eos", "response_format", "tools", "tool_choice", "parallel_tool_calls",
    *REQUEST_SAMPLING,
}
COMPLETION_FIELDS = (CHAT_FIELDS - {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"}) | {"prompt"}
IGNORED = {"user", "stream_options", "stream"}
MAX_BODY_BYTES = 8 << 20
"""Larger than any prompt a context window holds (MAX_CHARS_PER_TOKEN × 128k tokens is 8 MiB)."""
INTERNAL = "the server failed on this request (details are in the server's log)"

log = logging.getLogger("mlcbuild.serve")


class BodyTooLarge(UserError):
    """HTTP 413."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(engines: "LLMEngine | Sequence[LLMEngine]", request_log: Callable[[str], None] | None = None) -> FastAPI:
    """The app over one engine per model. With one model, any `model` name is served by it (as MLC's
    REST server and llama.cpp's do; the reply names the real one); with several, `model` picks one.
    `request_log` hears one line per request (method, path, model, tokens in/out, time, status)."""
    import time

    from mlcbuild.runtime.llm_engine import LLMEngine, UnknownModelError
    from mlcbuild.runtime.protocol import Model

    by_name = {e.model: e for e in ([engines] if isinstance(engines, LLMEngine) else engines)}
    app = FastAPI(title="mlcbuild", docs_url=None, redoc_url=None)

    def fail(exc: UserError) -> JSONResponse:
        status, code = (404, "model_not_found") if isinstance(exc, UnknownModelError) else (413, None) if isinstance(exc, BodyTooLarge) else (400, None)
        return JSONResponse(error_body(exc.message, exc.field, code=code), status_code=status)

    def record(request: Request, started: float, status: int, model: str = "-", usage: Any = None) -> None:
        if request_log is not None:
            tokens = f"in={usage.prompt_tokens} out={usage.completion_tokens}" if usage is not None else "in=- out=-"
            request_log(f"{request.method} {request.url.path} model={model} {tokens} {time.perf_counter() - started:.3f}s {status}")

    def guarded(endpoint: Callable[[Request, float], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        """Client mistakes are 4xx; anything else is a 500 without the exception's text, logged here.
        Handled inside the endpoint, so the connection stays usable for the next request."""

        async def run(request: Request) -> Any:
            started = time.perf_counter()
            try:
                return await endpoint(request, started)
            except UserError as exc:
                response = fail(exc)
            except Exception:  # noqa: BLE001
                log.exception("%s %s failed", request.method, request.url.path)
                response = JSONResponse(error_body(INTERNAL, kind="server_error"), status_code=500)
            record(request, started, response.status_code)
            return response

        run.__name__ = endpoint.__name__  # FastAPI reads the signature of `run`: the request only
        return run

    def engine_for(body: dict[str, Any]) -> "LLMEngine":
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise UserError(f"must be a string (got {name!r})", field="model")
        if len(by_name) == 1:
            return next(iter(by_name.values()))
        if name is None:
            raise UserError(f"this server has several models; name one: {', '.join(by_name)}", field="model")
        if name not in by_name:
            raise UnknownModelError(f"unknown model {name!r}; this server has {', '.join(by_name)}", field="model")
        return by_name[name]

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge(f"the request body is over the limit of {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def body_of(request: Request, allowed: set[str], required: str) -> dict[str, Any]:
        raw = await read_body(request)
        try:
            body = json.loads(raw, parse_constant=_no_constants)
        except RecursionError:
            raise UserError("the request body nests too deeply") from None
        except ValueError as exc:
            raise UserError(f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise UserError("the request body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise UserError(f"unrecognized request argument: {unknown[0]}", field=unknown[0])
        if required not in body:
            raise UserError(f"missing required parameter {required!r}", field=required)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise UserError(f"must be a boolean (got {stream!r})", field="stream")
        return body

    def sse(chunks: Iterator[Any], request: Request, started: float, model: str) -> StreamingResponse:
        def lines() -> Iterator[str]:
            usage = None
            try:
                for chunk in chunks:
                    usage = getattr(chunk, "usage", None) or usage
                    yield f"data: {json.dumps(chunk.to_dict())}\n\n"
            except UserError as exc:
                yield f"data: {json.dumps(error_body(exc.message, exc.field))}\n\n"
            except Exception:  # noqa: BLE001 - the stream has started; report in-band
                log.exception("stream failed")
                yield f"data: {json.dumps(error_body(INTERNAL, kind='server_error'))}\n\n"
            yield "data: [DONE]\n\n"
            record(request, started, 200, model, usage)

        return StreamingResponse(iterate_in_threadpool(lines()), media_type="text/event-stream")

    def kwargs_of(body: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in IGNORED and k != "model"}
        if "max_completion_tokens" in out:
            out["max_tokens"] = out.pop("max_completion_tokens")
        return out

    def reply(result: Any, stream: bool, request: Request, started: float, engine: "LLMEngine") -> Any:
        if stream:
            return sse(result, request, started, engine.model)
        record(request, started, 200, engine.model, result.usage)
        return result.to_dict()

    @app.get("/")
    async def chat_page() -> HTMLResponse:
        """A chat page (streaming, stop, model picker, sampling settings) with no external assets."""
        return HTMLResponse(_chat_page())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        first = next(iter(by_name.values()))
        return {"status": "ok", "model": first.model, "stats": first.stats_dict(), "models": {n: e.stats_dict() for n, e in by_name.items()}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [Model(e.model, e.created).to_dict() for e in by_name.values()]}

    @app.post("/v1/chat/completions")
    @guarded
    async def chat_completions(request: Request, started: float) -> Any:
        body = await body_of(request, CHAT_FIELDS, "messages")
        engine = engine_for(body)
        if not isinstance(body["messages"], list) or not all(isinstance(m, dict) for m in body["messages"]):
            raise UserError("must be a list of message objects", field="messages")
        stream = body.get("stream", False)
        result = await run_in_threadpool(lambda: engine.chat.completions.create(stream=stream, **kwargs_of(body)))
        return reply(result, stream, request, started, engine)

    @app.post("/v1/completions")
    @guarded
    async def completions(request: Request, started: float) -> Any:
        body = await body_of(request, COMPLETION_FIELDS, "prompt")
        engine = engine_for(body)
        stream = body.get("stream", False)
        result = await run_in_threadpool(lambda: engine.completions.create(stream=stream, **kwargs_of(body)))
        return reply(result, stream, request, started, engine)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"method {request.method} not allowed on {request.url.path}"), status_code=405)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body(INTERNAL, kind="server_error"), status_code=500)

    return app


@functools.lru_cache(maxsize=1)
def _chat_page() -> str:
    from importlib.resources import files

    return files("mlcbuild.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (busy port, unknown address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="--port") from None
    return sock


SERVER_LIMITS = {"limit_concurrency": 512, "timeout_keep_alive": 5, "h11_max_incomplete_event_size": 64 * 1024}
"""uvicorn's guards against slow or greedy clients: at most 512 connections at once (more get 503),
idle keep-alive connections closed after 5 s, request heads over 64 KiB refused."""


def serve(engines: "Sequence[LLMEngine]", sock: socket.socket, request_timeout: float = 15.0, quiet: bool = False) -> None:
    """Serve on `sock` until interrupted (uvicorn, one process; each engine batches its own
    requests). A request must arrive whole within `request_timeout` seconds (serve/protocol.py);
    one line per request goes to stderr unless `quiet`."""
    import sys

    import uvicorn

    from mlcbuild.serve.protocol import with_timeout

    def request_log(line: str) -> None:
        print(f"mlcbuild serve: {line}", file=sys.stderr, flush=True)

    host, port = sock.getsockname()[:2]
    app = create_app(engines, None if quiet else request_log)
    config = uvicorn.Config(app, log_level="warning", http=with_timeout(request_timeout), **SERVER_LIMITS)
    print(f"mlcbuild: serving {', '.join(e.model for e in engines)} on http://{host}:{port}/v1", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
