"""Engine benchmarks on this CPU (part of `make bench`):

1. A RedPajama-3B-shaped q4f16_1 llvm library (random weights) — prefill and decode tokens/s against
   the memory-bandwidth roofline measured here (parameter bytes read per decode token / numpy copy
   bandwidth) and against transformers on the CPU for the same shape (bfloat16, its KV cache).
2. `mlcbuild serve` on the demo model: total generated tokens/s with 1, 4 and 8 concurrent
   streaming clients (continuous batching must beat one stream); and the same load on an
   in-process engine (no HTTP, no client parsing on the same cores).

    python -m bench.engine [--layers 32] [--skip-hf] [--skip-3b]
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
from typing import Any

from bench.common import REPO, WORK, write_json

SHAPE = "3b"


def copy_bandwidth(nbytes: int = 1 << 29, repeat: int = 5) -> float:
    """Bytes/s moved by a large numpy copy (read + write, as STREAM counts them); best of `repeat`."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def mlcbuild_3b(layers: int, prompt: int, decode: int) -> dict[str, Any]:
    from bench.gpu import run_cuda

    run_cuda.HF_CONFIGS[SHAPE] = {**run_cuda.HF_CONFIGS[SHAPE], "num_hidden_layers": layers}
    built = run_cuda.build(SHAPE, "q4f16_1", "llvm", WORK / "engine", context=1024, chunk=128, opt="O2")
    row = run_cuda.measure_mlc(built, prompt, decode, warmup=1, device="cpu")
    bandwidth = copy_bandwidth()
    limit = bandwidth / row["weight_bytes_per_token"]
    return {
        "layers": layers,
        "compile_s": built["compile_s"],
        "prefill_tok_s": row["prefill_tok_s"],
        "decode_tok_s": row["decode_tok_s"],
        "weight_bytes_per_token": row["weight_bytes_per_token"],
        "copy_bandwidth_GB_s": round(bandwidth / 1e9, 2),
        "roofline_decode_tok_s": round(limit, 2),
        "fraction_of_roofline": round(row["decode_tok_s"] / limit, 3),
    }


def transformers_3b(layers: int, prompt: int, decode: int) -> dict[str, Any]:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from bench.gpu.run_cuda import HF_CONFIGS

    cfg = GPTNeoXConfig(**{k: v for k, v in HF_CONFIGS[SHAPE].items() if k not in ("architectures", "model_type")})
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    net = GPTNeoXForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt))
    with torch.no_grad():
        net(ids)
        t0 = time.perf_counter()
        net(ids)
        prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        net.generate(ids, max_new_tokens=decode, min_new_tokens=decode, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - t1
    return {
        "dtype": "bfloat16",
        "prefill_tok_s": round(prompt / prefill_s, 2),
        "decode_tok_s": round(decode / max(total - prefill_s, 1e-9), 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_throughput(streams: tuple[int, ...] = (1, 4, 8), tokens: int = 128) -> dict[str, Any]:
    """Build the demo, serve its q0f32 library, and stream `tokens` tokens from N clients at once."""
    import httpx
    from openai import OpenAI

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = WORK / "engine" / "cache"
    subprocess.run([sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache), "build", str(REPO / "recipes" / "demo.yaml"), "-q", "q0f32"],
                   check=True, env=env, capture_output=True)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlcbuild", "serve", str(REPO / "recipes" / "demo.yaml"), "-q", "q0f32", "--port", str(port)],
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

        one(0, [0])  # warm up
        out: dict[str, Any] = {}
        for n in streams:
            counts = [0] * n
            threads = [threading.Thread(target=one, args=(i, counts)) for i in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
            out[f"{n}_streams_tok_s"] = round(sum(counts) / seconds, 1)
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
    out: dict[str, Any] = {}
    with open_engine(REPO / "recipes" / "demo.yaml", quantization) as engine:
        def one(i: int, counts: list[int]) -> None:
            reply = engine.completions.create(["The lighthouse keeper", "Once upon a time"][i % 2], max_tokens=tokens,
                                              temperature=0, ignore_eos=True)
            counts[i] = reply.usage.completion_tokens

        one(0, [0])
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="RedPajama-3B has 32; 2 keeps the CPU run in minutes (per-layer speed is what differs)")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-3b", action="store_true")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"server_demo_q0f32": server_throughput(), "engine_demo_q4f16_1": engine_throughput()}
    if not args.skip_3b:
        results["redpajama_3b_q4f16_1_llvm"] = mlcbuild_3b(args.layers, args.prompt, args.decode)
        if not args.skip_hf:
            hf = transformers_3b(args.layers, args.prompt, args.decode)
            results["transformers_3b_cpu"] = hf
            results["decode_speedup_vs_transformers"] = round(results["redpajama_3b_q4f16_1_llvm"]["decode_tok_s"] / hf["decode_tok_s"], 2)
    write_json(WORK / "engine.json", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
