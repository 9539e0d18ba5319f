"""Serving throughput on this CPU (part of `make bench`): `mlcbuild serve` on the demo model, total
generated tokens/s with 1, 8 and 32 concurrent streaming clients (continuous batching must beat one
stream), p50/p99 time to first token under 32 streams, the server's peak RSS, and the same 32 streams
with hostile requests mixed in (they must cost the others nothing); and the load on an in-process
engine (no HTTP, no client parsing on the same cores). Single-sequence decode/prefill speed of a
3B-shaped library against its peers is `bench/decode.py`.

    python -m bench.engine [--no-hostile]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from bench.common import REPO, WORK, write_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def concurrent_tok_s(one: Callable[[int, list[int]], None], streams: tuple[int, ...], first: dict[int, float] | None = None) -> dict[str, Any]:
    """Total tokens/s with N threads each running `one(i, counts)` (which stores its token count in
    counts[i], and in `first[i]` the seconds to its first token if it can), for each N in
    `streams`, after one warm-up call; p50/p99 time to first token for the largest N."""
    one(0, [0])
    out: dict[str, Any] = {}
    for n in streams:
        counts = [0] * n
        if first is not None:
            first.clear()
        threads = [threading.Thread(target=one, args=(i, counts)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[f"{n}_streams_tok_s"] = round(sum(counts) / (time.perf_counter() - t0), 1)
    if first:
        ttft = sorted(first.values())
        out[f"{streams[-1]}_streams_ttft_p50_s"] = round(ttft[len(ttft) // 2], 3)
        out[f"{streams[-1]}_streams_ttft_p99_s"] = round(ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))], 3)
    return out


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (Linux)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def hostile(url: str, stop: threading.Event) -> int:
    """Requests that once crashed, stalled or poisoned the server, sent in a loop until `stop`."""
    import httpx

    bodies = [b'{"prompt": [99999999]}', b'{"prompt": "hi", "logprobs": 2.5}', b"[" * 50000, b'{"prompt": "hi", "seed": -1}',
              b'{"prompt": "hi \\ud800"}', b'{"prompt": "hi", "repetition_penalty": 1e-300, "logprobs": 2}', b'{"prompt": "' + b"a" * (9 << 20) + b'"}']
    sent = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for body in bodies:
                client.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"})
                sent += 1
            slow = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    return sent


def server_throughput(streams: tuple[int, ...] = (1, 8, 32), tokens: int = 128, with_hostile: bool = True) -> dict[str, Any]:
    """Build the demo, serve its q0f32 library, and stream `tokens` tokens from N clients at once."""
    import httpx
    from openai import OpenAI

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = WORK / "engine" / "cache"
    subprocess.run([sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache), "build", str(REPO / "recipes" / "demo.yaml"), "-q", "q0f32"],
                   check=True, env=env, capture_output=True)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlcbuild", "serve", str(REPO / "recipes" / "demo.yaml"), "-q", "q0f32", "--port", str(port), "--quiet"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        prompts = ["The lighthouse keeper", "Once upon a time", "Twinkle, twinkle,", "The robot"]

        first: dict[int, float] = {}

        def one(i: int, counts: list[int]) -> None:
            t0 = time.perf_counter()
            chunks = client.completions.create(model="tiny-talker-q0f32-MLC", prompt=prompts[i % 4], max_tokens=tokens,
                                               temperature=0, stream=True, extra_body={"ignore_eos": True})
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].text and i not in first:
                    first[i] = time.perf_counter() - t0
                if chunk.usage:
                    counts[i] = chunk.usage.completion_tokens

        out = concurrent_tok_s(one, streams, first)
        out["max_decode_batch"] = httpx.get(url + "/health").json()["stats"]["max_decode_batch"]
        out["peak_rss_mb"] = peak_rss_mb(server.pid)
        if with_hostile:
            stop = threading.Event()
            sent: list[int] = []
            attacker = threading.Thread(target=lambda: sent.append(hostile(url, stop)))
            attacker.start()
            try:
                mixed = concurrent_tok_s(one, (streams[-1],), first)
            finally:
                stop.set()
                attacker.join()
            out.update({f"hostile_mixed_{k}": v for k, v in mixed.items()})
            out["hostile_requests_sent"] = sent[0] if sent else 0
            out["alive_after_hostile"] = httpx.get(url + "/health", timeout=10).status_code == 200
            out["peak_rss_mb_after_hostile"] = peak_rss_mb(server.pid)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def engine_throughput(quantization: str = "q4f16_1", streams: tuple[int, ...] = (1, 8, 32), tokens: int = 128) -> dict[str, Any]:
    """The same load without HTTP: N threads on one in-process LLMEngine (what batching alone buys)."""
    from mlcbuild.runtime import open_engine

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "mlcbuild", "--cache-dir", str(WORK / "engine" / "cache"), "build",
                    str(REPO / "recipes" / "demo.yaml"), "-q", quantization], check=True, env=env, capture_output=True)
    with open_engine(REPO / "recipes" / "demo.yaml", quantization) as engine:
        def one(i: int, counts: list[int]) -> None:
            reply = engine.completions.create(["The lighthouse keeper", "Once upon a time"][i % 2], max_tokens=tokens,
                                              temperature=0, ignore_eos=True)
            counts[i] = reply.usage.completion_tokens

        return concurrent_tok_s(one, streams)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile mix (a server from before the hardening dies of it)")
    parser.add_argument("--server-only", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"server_demo_q0f32": server_throughput(with_hostile=not args.no_hostile)}
    if not args.server_only:
        results["engine_demo_q4f16_1"] = engine_throughput()
    write_json(WORK / "engine.json", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
