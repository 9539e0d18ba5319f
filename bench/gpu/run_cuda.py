"""Hand-run CUDA benchmark: build cuda libraries with mlcbuild and measure them on a GPU.

What it does, per model (a tiny GPT-NeoX and the full-size RedPajama-INCITE-3B configuration):
  1. builds `lib.so` for `cuda:<arch>` with mlcbuild's compiler (device code compiled by nvcc
     ahead of time) and records the compile time;
  2. fills the parameters with random values of the right shapes/dtypes directly on the GPU
     (speed does not depend on weight values, and no download is needed);
  3. measures prefill tokens/s (one prompt of --prompt tokens, chunked as the library allows) and
     decode tokens/s at batch 1 (--decode steps, greedy, logits copied to the host each step as
     a real sampler would);
  4. compares decode with the memory-bandwidth limit: bandwidth / (bytes of every parameter read
     per token; the embedding table contributes one row) — 3.35 TB/s for an H100 SXM;
  5. runs transformers in float16 on the same GPU with the same configuration (random init) for
     prefill and greedy decode with its KV cache, unless --skip-hf.

Usage (on a machine with an NVIDIA GPU, nvcc on PATH, CUDA-enabled torch for the baseline):

    .venv/bin/python bench/gpu/run_cuda.py --arch sm_90a --out /tmp/mlcbuild-gpu
    .venv/bin/python bench/gpu/run_cuda.py --compile-only --targets cuda,llvm --models 3b   # no GPU needed

On a machine without a GPU `--compile-only` still builds (and times) the libraries.
For the transformers baseline install CUDA torch first, e.g.
    .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128
Results are printed and written to <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H100_BANDWIDTH = 3.35e12

_NEOX: dict[str, Any] = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "use_parallel_residual": False,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "hidden_act": "gelu",
    "tie_word_embeddings": False,
}

HF_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {**_NEOX, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2},
    "3b": {**_NEOX, "vocab_size": 50432, "hidden_size": 2560, "intermediate_size": 10240, "num_attention_heads": 32, "num_hidden_layers": 32},
}


def chat_config(model: str, quantization: str, context: int, prefill_chunk: int) -> dict[str, Any]:
    """The architecture part of mlc-chat-config.json for a configuration (what compile reads)."""
    from mlcbuild.models import get_family

    family = get_family("gpt_neox")
    sizes = {"context_window_size": context, "prefill_chunk_size": prefill_chunk, "max_batch_size": 1}
    model_config = family.config_from_hf(HF_CONFIGS[model], sizes).to_json()
    model_config.update(sizes)
    return {"model_type": "gpt_neox", "quantization": quantization, "model_config": model_config, **sizes}


def build(model: str, quantization: str, target: str, out: Path, context: int, chunk: int, opt: str = "O3") -> dict[str, Any]:
    from mlcbuild.compiler.build import build_model_lib
    from mlcbuild.compiler.pipeline import CompileOptions
    from mlcbuild.targets import resolve_target

    name, _, variant = target.partition(":")
    config = chat_config(model, quantization, context, chunk)
    start = time.perf_counter()
    result = build_model_lib(config, resolve_target(name, variant or None), CompileOptions(opt=opt), out / f"{model}-{quantization}-{name}")
    seconds = time.perf_counter() - start
    return {"config": config, "lib": str(result.path), "metadata": result.metadata, "compile_s": round(seconds, 1), "timings": result.timings}


def random_params(metadata: dict[str, Any], device: Any, seed: int = 0) -> list[Any]:
    """Random tensors matching the library's parameter list (packed ints for q_weight)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(seed)
    out = []
    for p in metadata["params"]:
        shape, dtype, name = tuple(p["shape"]), p["dtype"], p["name"]
        if dtype == "uint32":
            host = rng.integers(0, 2**32, size=shape, dtype=np.uint32)
        elif name.endswith("q_scale"):
            host = (0.002 + 0.002 * rng.random(shape)).astype(dtype)
        elif "layernorm.weight" in name or "layer_norm.weight" in name:
            host = np.ones(shape, dtype)
        else:
            host = (0.02 * rng.standard_normal(shape)).astype(dtype)
        out.append(tvm.runtime.tensor(host, device))
    return out


def bytes_per_token(metadata: dict[str, Any]) -> int:
    """Parameter bytes a decode step reads: everything, except only one row of the input embedding."""
    import numpy as np

    total = 0
    for p in metadata["params"]:
        n = int(np.prod(p["shape"])) * np.dtype(p["dtype"]).itemsize
        if p["name"].startswith("gpt_neox.embed_in"):
            n //= max(1, int(p["shape"][0]))
        total += n
    return total


def measure_mlc(built: dict[str, Any], prompt: int, decode: int, warmup: int = 3, device: str = "cuda") -> dict[str, Any]:
    import numpy as np
    import tvm
    from tvm import relax

    from mlcbuild.runtime.engine import Engine

    dev = tvm.device(device, 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(built["lib"]), dev)
    meta = built["metadata"]
    engine = Engine(vm=vm, device=dev, metadata=meta, params=random_params(meta, dev))
    vocab = int(meta["vocab_size"])
    tokens = np.random.default_rng(1).integers(0, vocab, prompt).tolist()
    for _ in range(warmup):
        engine.reset()
        engine.prefill(tokens)
        engine.decode(1)
    engine.reset()
    dev.sync()
    t0 = time.perf_counter()
    logits = engine.prefill(tokens)
    dev.sync()
    prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(decode):
        logits = engine.decode(int(np.argmax(logits)))
    dev.sync()
    decode_s = time.perf_counter() - t1
    per_token = bytes_per_token(meta)
    limit = H100_BANDWIDTH / per_token
    decode_tps = decode / decode_s
    return {
        "prefill_tok_s": round(prompt / prefill_s, 1),
        "decode_tok_s": round(decode_tps, 1),
        "weight_bytes_per_token": per_token,
        "bandwidth_limit_tok_s": round(limit, 1),
        "fraction_of_limit": round(decode_tps / limit, 3),
    }


def measure_transformers(model: str, prompt: int, decode: int) -> dict[str, Any]:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if not torch.cuda.is_available():
        return {"skipped": "torch has no CUDA (install a CUDA build of torch for the baseline)"}
    cfg = GPTNeoXConfig(**{k: v for k, v in HF_CONFIGS[model].items() if k not in ("architectures", "model_type")})
    net = GPTNeoXForCausalLM(cfg).to(device="cuda", dtype=torch.float16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device="cuda")
    with torch.no_grad():
        for _ in range(2):
            net(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        net(ids)
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        net.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        net.generate(ids, max_new_tokens=decode, min_new_tokens=decode, do_sample=False)
        torch.cuda.synchronize()
        total = time.perf_counter() - t1
    decode_s = max(total - prefill_s, 1e-9)
    return {"prefill_tok_s": round(prompt / prefill_s, 1), "decode_tok_s": round(decode / decode_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--models", default="tiny,3b")
    ap.add_argument("--quantization", default="q4f16_1")
    ap.add_argument("--targets", default="cuda", help="comma list: cuda and/or llvm (llvm runs on the CPU: a smoke test of this script)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/mlcbuild-gpu-bench"))
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--opt", default="O3", help="O3 turns on CUDA graphs (decode at batch 1 is launch-bound without them)")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for model in args.models.split(","):
        for kind in args.targets.split(","):
            target = f"cuda:{args.arch}" if kind == "cuda" else kind
            chunk = min(args.context, 2048)
            built = build(model, args.quantization, target, args.out, args.context, chunk, args.opt)
            row: dict[str, Any] = {"compile_s": built["compile_s"], "timings": built["timings"], "lib": built["lib"]}
            print(f"[{model} {args.quantization} {target}] compiled in {built['compile_s']} s -> {built['lib']}", flush=True)
            if not args.compile_only:
                row["mlcbuild"] = measure_mlc(built, args.prompt, args.decode, device="cuda" if kind == "cuda" else "cpu")
                if kind == "cuda" and not args.skip_hf:
                    row["transformers_fp16"] = measure_transformers(model, args.prompt, args.decode)
                    hf = row["transformers_fp16"].get("decode_tok_s")
                    if hf:
                        row["decode_speedup_vs_transformers"] = round(row["mlcbuild"]["decode_tok_s"] / hf, 2)
                print(json.dumps(row, indent=2), flush=True)
            results[f"{model}/{args.quantization}/{target}"] = row
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: {kk: v[kk] for kk in v if kk != "timings"} for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
