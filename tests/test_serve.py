"""`mlcbuild serve` as a real process on 127.0.0.1, driven by the openai Python client and raw HTTP."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
ANSWERS = {
    "What is mlcbuild?": " mlcbuild is a build system for language models.",
    "What is quantization?": " Quantization stores each weight with fewer bits.",
    "Tell me a story.": " The lighthouse keeper climbed the stairs at dusk",
    "Say the poem about the star.": " Twinkle, twinkle, little star, how I wonder what you are!",
    "Hello! Who are you?": " I am a tiny talking model.",
}

CLIENT = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
from openai import OpenAI

url, model, answers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)

def ask(question):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24)
    return question, r.choices[0].message.content

with ThreadPoolExecutor(5) as pool:
    print(json.dumps(dict(pool.map(ask, answers))))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


server_log: list[Path] = [Path()]


@contextlib.contextmanager
def serving(args: list[str], log: Path, deadline_s: float = 120) -> Iterator[str]:
    """`mlcbuild serve ARGS --port <free>` as a process (output to `log`), its URL once /health answers."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "mlcbuild", "serve", *args, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlcbuild serve did not come up: {log.read_text()}")
        time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(demo_artifacts, tmp_path_factory):
    server_log[0] = tmp_path_factory.mktemp("serve") / "server.log"
    with serving([str(demo_artifacts.model_dir("q0f32")), "--request-timeout", "3"], server_log[0], 90) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)


MODEL = "tiny-talker-q0f32-MLC"


@pytest.mark.slow
def test_models_and_chat_stream_and_non_stream(client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "What is mlcbuild?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    content = reply.choices[0].message.content
    assert content.startswith(ANSWERS["What is mlcbuild?"]) and reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens == usage.completion_tokens


@pytest.mark.slow
def test_completions_stop_strings_and_seed(client) -> None:
    reply = client.completions.create(model=MODEL, prompt="Twinkle, twinkle, little star,", max_tokens=30, temperature=0, stop=["wonder"])
    assert reply.choices[0].text == "\nHow I " and reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="The lighthouse keeper", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed).startswith(" climbed the stairs at dusk.")
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "zebra quartz?"}], temperature=2.0, max_tokens=24)
    a = client.chat.completions.create(seed=5, **ask).choices[0].message.content
    b = client.chat.completions.create(seed=5, **ask).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **ask).choices[0].message.content for s in range(6, 9)}
    assert a == b and others - {a}


@pytest.mark.slow
def test_three_client_processes_in_parallel_are_batched(server) -> None:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CLIENT, server, MODEL, json.dumps(list(ANSWERS))], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    results = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for got in results:
        assert set(got) == set(ANSWERS)
        for question, answer in got.items():
            assert answer.startswith(ANSWERS[question][:40]), (question, answer)
    stats = httpx.get(server + "/health").json()["stats"]
    assert stats["max_decode_batch"] > 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, body, status, param, words",
    [
        ("/v1/chat/completions", b'{"messages": [', 400, None, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, None, "JSON object"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "star " * 700}]}, 400, "messages", "context window is 512"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature", "[0, 2]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": "x"}, 400, "top_p", "number"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens", "positive"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n", "n=1"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate", "unrecognized"),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "list"),
        ("/v1/completions", {"model": MODEL}, 400, "prompt", "missing"),
        ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", "boolean"),
        ("/v1/completions", {"prompt": [99999999]}, 400, "prompt", "not in the model's vocabulary [0, 512)"),
        ("/v1/completions", {"prompt": [3, -1]}, 400, "prompt", "token id -1 at position 1"),
        ("/v1/completions", {"prompt": [512]}, 400, "prompt", "not in the model's vocabulary"),
        ("/v1/completions", {"prompt": [5, 2.5]}, 400, "prompt", "list of token ids"),
        ("/v1/completions", {"prompt": [True]}, 400, "prompt", "list of token ids"),
        ("/v1/completions", {"prompt": "hi", "seed": -1}, 400, "seed", "[0, 2^63)"),
        ("/v1/completions", {"prompt": "hi", "logprobs": "x"}, 400, "logprobs", "integer in [0, 20]"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 2.5}, 400, "logprobs", "integer in [0, 20]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": 2.5}, 400, "logprobs", "true or false"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": "5"}, 400, "top_logprobs", "integer"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": [1]}, 400, "top_logprobs", "integer"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2.5}, 400, "top_logprobs", "integer"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "messages[0].content", "not valid Unicode"),
        ("/v1/completions", b'{"prompt": "\\udfff"}', 400, "prompt", "not valid Unicode"),
        ("/v1/completions", b"[" * 50000 + b"]" * 50000, 400, None, "nests too deeply"),
        ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, None, "not a JSON number"),
        ("/v1/completions", {"prompt": "hi", "repetition_penalty": 1e-300, "logprobs": 2}, 400, "repetition_penalty", "[0.01, 100]"),
        ("/v1/completions", {"prompt": "hi", "ignore_eos": "yes"}, 400, "ignore_eos", "true or false"),
        ("/v1/completions", {"prompt": "star " * 40000}, 400, "prompt", "more than any 512-token context window"),
    ],
)
def test_bad_requests_get_openai_errors_and_server_keeps_serving(server, path, body, status, param, words) -> None:
    import httpx

    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    ok = httpx.post(server + "/v1/completions", json={"prompt": "The lighthouse", "max_tokens": 3, "temperature": 0}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


@pytest.mark.slow
def test_unknown_route_and_loopback_bind(server) -> None:
    import httpx

    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    port = int(server.rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]


@pytest.mark.slow
def test_oversized_body_is_413_without_reading_it_all(server) -> None:
    import httpx

    body = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    r = httpx.post(server + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(server + "/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_errors_keep_the_connection_usable(server) -> None:
    """After any error response the next request on the same keep-alive connection is served."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    bodies = [b'{"prompt": [99999999]}', b"[" * 50000, b'{"prompt": "hi", "seed": -1}', b'{"prompt": "The lighthouse", "max_tokens": 2, "temperature": 0}']
    statuses = []
    sock = None
    for body in bodies:
        conn.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        sock = sock or conn.sock
        assert conn.sock is sock  # the same connection throughout
    assert statuses == [400, 400, 400, 200]


@pytest.mark.slow
def test_a_tiny_temperature_is_greedy_not_empty(server) -> None:
    import httpx

    def text(temperature: float) -> str:
        body = {"prompt": "Twinkle, twinkle, little star,", "max_tokens": 8, "temperature": temperature}
        r = httpx.post(server + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    assert text(1e-45) == text(0) != ""


def _mlcbuild(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, env=env, timeout=300, **kw)


@pytest.mark.slow
def test_serve_flags_and_a_busy_port_are_one_line(demo_artifacts, server) -> None:
    folder = str(demo_artifacts.model_dir("q0f32"))
    bad = _mlcbuild("serve", folder, "--port", "99999")
    assert bad.returncode == 2 and b"65535" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 3
    busy_port = server.rsplit(":", 1)[1]
    busy = _mlcbuild("serve", folder, "--port", busy_port)
    assert busy.returncode == 2, busy.stderr
    assert busy.stderr.strip().count(b"\n") == 0 and b"cannot listen on 127.0.0.1:" + busy_port.encode() in busy.stderr
    assert b"serving" not in busy.stdout


@pytest.mark.slow
def test_slow_clients_are_cut_off_and_others_are_served(server) -> None:
    """50 connections trickling a request head, and one trickling a body: each is closed about
    --request-timeout (3 s) after it opened, while a normal request is answered meanwhile."""
    import httpx
    from urllib.parse import urlparse

    url = urlparse(server)
    slow = []
    for i in range(51):
        s = socket.create_connection((url.hostname, url.port), timeout=10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" if i else b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        slow.append(s)
    started = time.monotonic()
    ok = httpx.post(server + "/v1/completions", json={"prompt": "The lighthouse", "max_tokens": 3, "temperature": 0}, timeout=30)
    assert ok.status_code == 200
    for s in slow:
        s.sendall(b"X")  # still trickling
    closed = 0
    for s in slow:
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            data = None
        closed += data == b""
        s.close()
    elapsed = time.monotonic() - started
    assert closed == len(slow) and elapsed < 10, (closed, elapsed)


@pytest.mark.slow
def test_mlc_docs_rest_snippet_runs_unchanged(server) -> None:
    """MLC's REST example names a model the server never loaded and gives `stop` as a string: with
    one model loaded, any name is served by it and the reply names the real one. Each request is one
    line in the server's log."""
    import httpx

    body = {"model": "vicuna-v1-7b", "messages": [{"role": "user", "content": "What is mlcbuild?"}], "stop": "</s>", "temperature": 0, "max_tokens": 8}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MODEL and r.json()["choices"][0]["message"]["content"]
    time.sleep(0.2)
    lines = [ln for ln in server_log[0].read_text().splitlines() if ln.startswith("mlcbuild serve: POST /v1/chat/completions")]
    assert any(f"model={MODEL} in=" in ln and ln.endswith(" 200") for ln in lines), lines[-3:]


@pytest.fixture(scope="module")
def two_models(demo_artifacts, tmp_path_factory):
    """One server, the demo recipe's two quantizations: one scheduler per library."""
    log = tmp_path_factory.mktemp("serve2") / "server.log"
    with serving([str(demo_artifacts.recipe), "-q", "q0f32", "-q", "q4f16_1", "--quiet"], log) as url:
        yield url, log


@pytest.mark.slow
def test_several_models_are_listed_and_routed(two_models, demo_artifacts) -> None:
    import httpx

    url, log = two_models
    names = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert names == [demo_artifacts.model_dir("q0f32").name, demo_artifacts.model_dir("q4f16_1").name]
    for name in names:
        r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "Twinkle, twinkle, little star,", "max_tokens": 6, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == name
        assert r.json()["choices"][0]["text"].startswith("\nHow I")
    unknown = httpx.post(url + "/v1/completions", json={"model": "gpt-4", "prompt": "hi"}, timeout=30)
    assert unknown.status_code == 404 and all(n in unknown.json()["error"]["message"] for n in names)
    missing = httpx.post(url + "/v1/completions", json={"prompt": "hi"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    assert "mlcbuild serve: POST" not in log.read_text()  # --quiet


@pytest.mark.slow
def test_structured_output_over_http(client) -> None:
    """The openai client's response_format (json_schema, strict) against the real server."""
    import jsonschema

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["calm", "glad"]}}, "required": ["ok", "mood"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": schema, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


@pytest.mark.slow
def test_chat_page_in_a_real_browser(server, tmp_path: Path) -> None:
    """The page at / in headless Chromium: pick the model, set greedy, type, press Enter, watch the
    reply stream in (it equals the API's answer), then a second question with Stop pressed mid-reply."""
    import httpx

    try:
        from browser import Browser
    except ImportError:
        from tests.browser import Browser

    question = "What is mlcbuild?"
    want = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 40}, timeout=60).json()
    with Browser() as page:
        page.goto(server + "/")
        assert page.wait_for("document.querySelector('#model').options.length") == 1
        assert page.js("document.querySelector('#model').value") == MODEL
        page.js("document.querySelector('#temperature').value = '0'; document.querySelector('#max_tokens').value = '40'")
        page.type_into("#prompt", question)
        page.press_enter()
        page.wait_for("document.querySelector('.assistant') && document.querySelector('.assistant').dataset.done === 'true'")
        reply = page.js("document.querySelector('.assistant').firstChild.textContent")
        assert reply == want["choices"][0]["message"]["content"] and reply.strip()
        assert page.js("document.querySelector('.user').textContent") == question
        shot = page.screenshot(Path(os.environ.get("MLCBUILD_SCREENSHOT_DIR", tmp_path)) / "chat.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        page.js("document.querySelector('#max_tokens').value = '400'; document.querySelector('#temperature').value = '1.5'")
        page.type_into("#prompt", "Tell me a story.")
        page.press_enter()
        page.wait_for("!document.querySelector('#stop').disabled")
        page.js("document.querySelector('#stop').click()")
        page.wait_for("document.querySelectorAll('.assistant')[1].dataset.done === 'true'")
        assert page.js("document.querySelector('#send').disabled") is False
        assert not page.js("document.querySelector('.error')")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": False},
    },
}


@pytest.mark.slow
def test_function_calling_with_the_openai_client(client, server) -> None:
    """tools + tool_choice through the openai client: a required (or named) call comes back as
    tool_calls whose arguments validate; the tool's result goes back in and the model answers in text."""
    import httpx
    import jsonschema

    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(model=MODEL, messages=question, tools=[WEATHER], tool_choice=choice, temperature=0, max_tokens=200)
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        call = r.choices[0].message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow = [*question, r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "21 C and sunny"}]
    answer = client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER], temperature=0, max_tokens=12)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content and not answer.choices[0].message.content.lstrip().startswith("{")
    stream = list(client.chat.completions.create(model=MODEL, messages=question, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=200, stream=True))
    calls = [tc for c in stream for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and stream[-1].choices[0].finish_reason == "tool_calls"
    for body, param in (({"tool_choice": "maybe"}, "tool_choice"), ({"tools": [{"type": "function"}]}, "tools[0]"), ({"tools": "x"}, "tools")):
        bad = httpx.post(server + "/v1/chat/completions", json={"messages": question, "tools": [WEATHER], **body}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text


@pytest.mark.slow
def test_serve_without_fastapi_says_what_to_install(demo_artifacts) -> None:
    code = "import sys; sys.modules['fastapi'] = None; from mlcbuild.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, "serve", str(demo_artifacts.model_dir("q0f32")), "--port", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "pip install 'mlcbuild[serve]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
