"""Serving throughput on this CPU (part of `make bench`): `mlcbuild serve` on the demo model, total
generated tokens/s with 1, 4 and 8 concurrent streaming clients (continuous batching must beat one
stream); and the same load on an in-process engine (no HTTP, no client parsing on the same cores).
Single-sequence decode/prefill speed of a 3B-shaped library against its peers is `bench/decode.py`.

    python -m bench.engine
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


def concurrent_tok_s(one: Callable[[int, list[int]], None], streams: tuple[int, ...]) -> dict[str, Any]:
    """Total tokens/s with N threads each running `one(i, counts)` (which stores its token count in
    counts[i]), for each N in `streams`, after one warm-up call."""
    one(0, [0])
    out: dict[str, Any] = {}
    for n in streams:
        counts = [0] * n
        threads = [threading.Thread(target=one, args=(i, counts)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[f"{n}_streams_tok_s"] = round(sum(counts) / (time.perf_counter() - t0), 1)
    return out


def server_throughput(streams: tuple[int, ...] = (1, 4, 8), tokens: int = 128) -> dict[str, Any]:
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

        def one(i: int, counts: list[int]) -> None:
            chunks = client.completions.create(model="tiny-talker-q0f32-MLC", prompt=prompts[i % 4], max_tokens=tokens,
                                               temperature=0, stream=True, extra_body={"ignore_eos": True})
            for chunk in chunks:
                if chunk.usage:
                    counts[i] = chunk.usage.completion_tokens

        out = concurrent_tok_s(one, streams)
        out["max_decode_batch"] = httpx.get(url + "/health").json()["stats"]["max_decode_batch"]
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def engine_throughput(quantization: str = "q4f16_1", streams: tuple[int, ...] = (1, 4, 8), tokens: int = 128) -> dict[str, Any]:
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
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    results: dict[str, Any] = {"server_demo_q0f32": server_throughput(), "engine_demo_q4f16_1": engine_throughput()}
    write_json(WORK / "engine.json", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
