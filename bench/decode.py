"""CPU decode and prefill speed of a RedPajama-3B-shaped q4f16_1 llvm library built by mlcbuild, side by
side with what the same machine allows and what its peers do with the same weights, in the same run:

- roofline: weight bytes read per decoded token / numpy bandwidth (1 GiB arrays, best of 5, one
  thread and two threads): copy (read + write counted, as STREAM does) and read only (what decode
  does; on this VM two threads read at ~36 GB/s but copy at ~54 GB/s of traffic, so the copy
  roofline is out of reach for a read-only stream);
- transformers (torch CPU, bfloat16, 2 threads) loading the same safetensors checkpoint;
- llama.cpp Q4_0 (llama-cpp-python, 2 threads) of a GGUF written here from the same weights.

The checkpoint is random fp16 weights of the real shape (GPT-NeoX, hidden 2560, 32 layers, 32 heads,
intermediate 10240, vocab 50432, rotary_pct 0.25, parallel residual), made once under .bench/; mlcbuild
builds the library and weights from it through a recipe like any user's. Each engine runs in its own
process (one model in memory at a time); every figure is warm (one short forward before timing) and
greedy at batch 1, on the same random prompt.

The engines and the bandwidth probes take turns for `--rounds` rounds and each figure is the best of
its rounds: this VM's memory bandwidth moves by up to 1.7× within minutes (other tenants), so one
engine measured after another can gain or lose that much against its peer; taking turns exposes every
engine to the same spells, and each round's figures stay in the JSON (`rounds`) to show the spread.

    python -m bench.decode [--layers 32] [--prompt 32] [--decode 16] [--rounds 3] [--skip hf,llama] [--target llvm:znver4] [--int8-digits 1]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from bench.common import REPO, WORK, make_big_gpt_neox, run, write_json, write_recipe

VOCAB, HIDDEN, THREADS = 50432, 2560, 2
PEERS = ("hf", "llama")


def checkpoint(layers: int) -> Path:
    folder = WORK / f"neox3b-{layers}L"
    make_big_gpt_neox(folder, vocab=VOCAB, hidden=HIDDEN, layers=layers)
    return folder


def build(model: Path, layers: int, target: str = "llvm", int8_digits: int = 2) -> dict[str, Any]:
    """`mlcbuild build` of a one-quantization, one-target recipe over the checkpoint; where it put things."""
    from mlcbuild.artifact.layout import lib_path, model_dir
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.targets import resolve_target

    root = WORK / "decode" / (f"{layers}L" if int8_digits == 2 else f"{layers}L-int8x{int8_digits}")
    root.mkdir(parents=True, exist_ok=True)
    options = {} if int8_digits == 2 else {"compile": {"cpu_int8_digits": int8_digits}}
    recipe = write_recipe(root / "recipe.yaml", model.name, model, ["q4f16_1"], [target], 1024, 128, **options)
    cache = WORK / "decode" / "cache"
    began = time.perf_counter()
    run([sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache), "build", str(recipe), "-j", "1"])
    seconds = time.perf_counter() - began
    loaded = load_recipe(recipe, cache)
    target = resolve_target(loaded.targets[0].name, loaded.targets[0].variant)
    return {"model_dir": str(model_dir(loaded, "q4f16_1")), "lib": str(lib_path(loaded, "q4f16_1", target)), "build_s": round(seconds, 1)}


def bandwidth(kind: str, threads: int, nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """Bytes/s over a 1 GiB array split among `threads` threads, best of `repeat`: "copy" counts read
    + write of np.copyto (STREAM's Copy); "read" reads only (np.max over its bytes), as decode does."""
    import numpy as np

    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src) if kind == "copy" else None
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    best = float("inf")
    for _ in range(repeat):
        gate = threading.Barrier(threads + 1)
        done = threading.Barrier(threads + 1)

        def work(lo: int, hi: int, gate: threading.Barrier, done: threading.Barrier) -> None:
            gate.wait()
            if dst is not None:
                np.copyto(dst[lo:hi], src[lo:hi])
            else:
                src[lo:hi].view(np.uint8).max()
            done.wait()

        workers = [threading.Thread(target=work, args=(*b, gate, done)) for b in bounds]
        for w in workers:
            w.start()
        gate.wait()
        t0 = time.perf_counter()
        done.wait()
        best = min(best, time.perf_counter() - t0)
        for w in workers:
            w.join()
    return (2 if dst is not None else 1) * nbytes / best


def weight_bytes_per_token(metadata: dict[str, Any]) -> int:
    from bench.gpu.run_cuda import bytes_per_token

    return bytes_per_token(metadata)


def prompt_ids(n: int) -> list[int]:
    import numpy as np

    return np.random.default_rng(7).integers(1, VOCAB, n).tolist()


def _timed(prefill: Callable[[list[int]], Any], step: Callable[[int], Any], args: argparse.Namespace) -> dict[str, Any]:
    """A timed prefill of the prompt, then timed greedy steps (callers warm up and reset first).

    The prompt's next-token logits go to `args.logits` (.npy), so that the caller can check that
    every engine computes the same model.
    """
    import numpy as np

    t0 = time.perf_counter()
    logits = prefill(prompt_ids(args.prompt))
    prefill_s = time.perf_counter() - t0
    np.save(args.logits, np.asarray(logits, dtype=np.float32))
    steps = []
    for _ in range(args.decode):
        t = time.perf_counter()
        logits = step(int(np.argmax(logits)))
        steps.append(time.perf_counter() - t)
    prompt, decode = args.prompt, args.decode
    return {
        "prefill_tok_s": round(prompt / prefill_s, 3),
        "decode_tok_s": round(decode / sum(steps), 3),
        "decode_ms_per_token_median": round(1000 * sorted(steps)[len(steps) // 2], 1),
    }


def worker_mlc(args: argparse.Namespace) -> dict[str, Any]:
    from mlcbuild.runtime.engine import Engine

    t0 = time.perf_counter()
    engine = Engine.load(args.model_dir, args.lib, "cpu")
    load_s = time.perf_counter() - t0
    engine.prefill(prompt_ids(4))
    engine.decode(1)
    engine.reset()
    out = _timed(engine.prefill, engine.decode, args)
    return {"load_s": round(load_s, 1), "weight_bytes_per_token": weight_bytes_per_token(engine.metadata), **out}


def worker_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    net = GPTNeoXForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t0
    state: dict[str, Any] = {}

    def forward(ids: list[int]) -> Any:
        out = net(torch.tensor([ids]), past_key_values=state.get("past"), use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[0, -1].float().numpy()

    with torch.inference_mode():
        forward(prompt_ids(4))
        forward([1])
        state.clear()
        out = _timed(forward, lambda t: forward([t]), args)
    return {"dtype": "bfloat16", "load_s": round(load_s, 1), **out}


def worker_llama(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.prompt + args.decode + 16, n_batch=max(args.prompt, 8),
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0

    def forward(ids: list[int]) -> Any:
        llm.eval(ids)
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()

    forward(prompt_ids(4))
    forward([1])
    llm.reset()
    out = _timed(forward, lambda t: forward([t]), args)
    return {"quant": "Q4_0 (every matrix, embedding and output included)", "load_s": round(load_s, 1), **out}


def _in_process(kind: str, threads: int, **kw: Any) -> dict[str, Any]:
    """Run a worker in a fresh process (one model in memory at a time; thread counts fixed before import)."""
    cmd = [sys.executable, "-m", "bench.decode", "--worker", kind, "--threads", str(threads), "--logits", str(_logits(kind))]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {"TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    return json.loads(run(cmd, env=env).stdout.strip().splitlines()[-1])


def _logits(kind: str) -> Path:
    return WORK / "decode" / f"logits-{kind}.npy"


def logits_correlation(kind: str, reference: str = "hf") -> float:
    """Pearson correlation of two engines' next-token logits after the same prompt: ≈1 when both
    compute the same model from the same weights (quantization noise aside), ≈0 otherwise."""
    import numpy as np

    return round(float(np.corrcoef(np.load(_logits(kind)), np.load(_logits(reference)))[0, 1]), 4)


# --- GGUF: the same weights, as llama.cpp's gptneox architecture expects them --------------------

_GGUF_NAMES = [
    (r"gpt_neox\.embed_in\.weight", "token_embd.weight"),
    (r"gpt_neox\.final_layer_norm\.(weight|bias)", r"output_norm.\1"),
    (r"(embed_out|lm_head)\.weight", "output.weight"),
    (r"gpt_neox\.layers\.(\d+)\.input_layernorm\.(weight|bias)", r"blk.\1.attn_norm.\2"),
    (r"gpt_neox\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)", r"blk.\1.ffn_norm.\2"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)", r"blk.\1.attn_qkv.\2"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.dense\.(weight|bias)", r"blk.\1.attn_output.\2"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", r"blk.\1.ffn_up.\2"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", r"blk.\1.ffn_down.\2"),
]


def _gguf_name(hf: str) -> str:
    for pattern, repl in _GGUF_NAMES:
        if re.fullmatch(pattern, hf):
            return re.sub(pattern, repl, hf)
    raise ValueError(f"no GGUF name for {hf}")


def write_gguf(model: Path) -> Path:
    """A Q4_0 GGUF of the checkpoint (gguf's numpy quantizer; matrices Q4_0, vectors f32).

    HF fuses query_key_value per head as [q,k,v]; llama.cpp reads [all q; all k; all v], as
    llama.cpp's own convert_hf_to_gguf.py regroups it. The vocabulary is placeholder strings: the
    benchmark feeds token ids.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    out = model / "model-q4_0.gguf"
    if out.exists():
        return out
    cfg = json.loads((model / "config.json").read_text())
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    writer = gguf.GGUFWriter(str(out) + ".part", "gptneox")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_dimension_count(int(cfg.get("rotary_pct", rope.get("partial_rotary_factor", 1.0)) * hidden // heads))
    writer.add_rope_freq_base(float(cfg.get("rotary_emb_base", rope.get("rope_theta", 10000))))
    writer.add_parallel_residual(bool(cfg["use_parallel_residual"]))
    writer.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    writer.add_token_merges(["< t"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    with safe_open(str(model / "model.safetensors"), framework="numpy") as f:
        names = f.keys()
        for name in names:
            data = f.get_tensor(name).astype(np.float32)
            if name.endswith(("query_key_value.weight", "query_key_value.bias")):
                split = data.reshape(heads, 3, hidden // heads, *data.shape[1:])
                data = np.concatenate([split[:, i].reshape(-1, *data.shape[1:]) for i in range(3)])
            if data.ndim == 2:
                writer.add_tensor(_gguf_name(name), gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            else:
                writer.add_tensor(_gguf_name(name), data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    os.replace(str(out) + ".part", out)
    return out


# --- the comparison -------------------------------------------------------------------------------


def llama_cpp_available() -> str | None:
    """None when llama-cpp-python imports (`make bench` tries to build it); else the import error."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"llama-cpp-python not importable: {exc}"
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32, help="RedPajama-3B has 32; fewer for a quick run of the harness")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (one prefill)")
    ap.add_argument("--decode", type=int, default=16, help="greedy decode steps timed")
    ap.add_argument("--rounds", type=int, default=3, help="turns the engines and bandwidth probes take, interleaved; each figure is its best round")
    ap.add_argument("--skip", default="", help=f"comma list of peers to leave out: {','.join(PEERS)}")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--target", default="llvm", help="the llvm variant mlcbuild builds: llvm (x86_64), llvm:znver4, llvm:native")
    ap.add_argument("--int8-digits", type=int, default=2, help="compile: {cpu_int8_digits: N}: 2 (default), 1 (llama.cpp's Q8_0 numerics), 0 (float)")
    ap.add_argument("--worker", choices=["mlc", "hf", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--logits", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        result = {"mlc": worker_mlc, "hf": worker_hf, "llama": worker_llama}[args.worker](args)
        print(json.dumps(result))
        return result

    skip = set(filter(None, args.skip.split(",")))
    model = checkpoint(args.layers)
    built = build(model, args.layers, args.target, args.int8_digits)
    timing = {"prompt": args.prompt, "decode": args.decode}
    why_not_llama = llama_cpp_available() if "llama" not in skip else None
    engines: dict[str, Callable[[], dict[str, Any]]] = {
        "mlc": lambda: _in_process("mlc", args.threads, model_dir=built["model_dir"], lib=built["lib"], **timing),
    }
    if "hf" not in skip:
        engines["hf"] = lambda: _in_process("hf", args.threads, model=model, **timing)
    if "llama" not in skip and not why_not_llama:
        gguf = write_gguf(model)
        engines["llama"] = lambda: _in_process("llama", args.threads, gguf=gguf, **timing)
    rounds = [_round(engines) for _ in range(args.rounds)]
    mlc = _best([r["mlc"] for r in rounds])
    copy = {n: max(r["copy_bandwidth_B_s"][n] for r in rounds) for n in (1, 2)}
    read = {n: max(r["read_bandwidth_B_s"][n] for r in rounds) for n in (1, 2)}
    per_token = mlc["weight_bytes_per_token"]
    results: dict[str, Any] = {
        "shape": {"layers": args.layers, "hidden": HIDDEN, "vocab": VOCAB, "threads": args.threads, "target": args.target,
                  "int8_digits": args.int8_digits, "rounds": args.rounds, **timing},
        "mlcbuild_q4f16_1_llvm": {**mlc, "build_s_this_run": built["build_s"]},
        "copy_bandwidth_GB_s": {f"{n}_thread": round(b / 1e9, 2) for n, b in copy.items()},
        "roofline_decode_tok_s": {f"{n}_thread": round(b / per_token, 2) for n, b in copy.items()},
        "read_bandwidth_GB_s": {f"{n}_thread": round(b / 1e9, 2) for n, b in read.items()},
        "read_roofline_decode_tok_s": {f"{n}_thread": round(b / per_token, 2) for n, b in read.items()},
    }
    results["mlcbuild_fraction_of_roofline"] = round(mlc["decode_tok_s"] / (max(copy.values()) / per_token), 4)
    results["mlcbuild_fraction_of_read_roofline"] = round(mlc["decode_tok_s"] / (max(read.values()) / per_token), 4)
    if "hf" in engines:
        results["transformers_cpu"] = _best([r["hf"] for r in rounds])
    if why_not_llama:
        results["llama_cpp"] = {"not_run": why_not_llama}
    elif "llama" in engines:
        results["llama_cpp"] = _best([r["llama"] for r in rounds])
    if "transformers_cpu" in results:
        results["logits_correlation_vs_transformers"] = {
            kind: logits_correlation(kind) for kind in ("mlc", "llama") if _ran(results, kind)
        }
    results["rounds"] = rounds
    write_json(WORK / "decode.json", results)
    print_table(results)
    return results


def _round(engines: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """Every engine once, then the bandwidth probes (bytes/s, 1 and 2 threads)."""
    out: dict[str, Any] = {kind: run_engine() for kind, run_engine in engines.items()}
    out["copy_bandwidth_B_s"] = {n: bandwidth("copy", n) for n in (1, 2)}
    out["read_bandwidth_B_s"] = {n: bandwidth("read", n) for n in (1, 2)}
    return out


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's rounds: the first round's record with the best prefill and decode of them all,
    and every round's (prefill, decode) tok/s."""
    best = dict(runs[0])
    for key in ("prefill_tok_s", "decode_tok_s"):
        best[key] = max(r[key] for r in runs)
    best["decode_ms_per_token_median"] = min(r["decode_ms_per_token_median"] for r in runs)
    best["per_round_prefill_decode_tok_s"] = [[r["prefill_tok_s"], r["decode_tok_s"]] for r in runs]
    return best


def _ran(results: dict[str, Any], kind: str) -> bool:
    key = {"mlc": "mlcbuild_q4f16_1_llvm", "llama": "llama_cpp"}[kind]
    return key in results and "not_run" not in results[key]


def print_table(r: dict[str, Any]) -> None:
    s = r["shape"]
    mlc = r["mlcbuild_q4f16_1_llvm"]
    print(f"\nRedPajama-3B-shaped GPT-NeoX ({s['layers']} layers, mlcbuild target {s.get('target', 'llvm')}), random weights, this CPU, {s['threads']} threads, "
          f"warm, batch 1: prefill {s['prompt']} tokens, then {s['decode']} greedy steps; best of {s.get('rounds', 1)} interleaved rounds")
    print(f"  {'engine':<34} {'prefill tok/s':>14} {'decode tok/s':>13} {'mlcbuild prefill, decode ÷ this':>32}   rounds (prefill, decode)")
    digits = s.get("int8_digits", 2)
    rows = [(f"mlcbuild q4f16_1 {s.get('target', 'llvm')}" + (f" int8x{digits}" if digits != 2 else ""), mlc)]
    for key, label in (("transformers_cpu", "transformers bf16"), ("llama_cpp", "llama.cpp Q4_0")):
        if key in r:
            rows.append((label, r[key]))
    for label, row in rows:
        if "not_run" in row:
            print(f"  {label:<34} not run: {row['not_run']}")
            continue
        ratios = f"{mlc['prefill_tok_s'] / row['prefill_tok_s']:.2f}×, {mlc['decode_tok_s'] / row['decode_tok_s']:.2f}×"
        spread = " ".join(f"({p:g}, {d:g})" for p, d in row.get("per_round_prefill_decode_tok_s", []))
        print(f"  {label:<34} {row['prefill_tok_s']:>14.2f} {row['decode_tok_s']:>13.3f} {ratios:>32}   {spread}")
    for kind, prefix in (("copy", ""), ("read", "read_")):
        for n, tps in r.get(f"{prefix}roofline_decode_tok_s", {}).items():
            gbs = r[f"{kind}_bandwidth_GB_s"][n]
            print(f"  {f'roofline, {kind} bw ' + n.replace('_', ' ') + f' {gbs} GB/s':<34} {'':>14} {tps:>13.2f} {mlc['decode_tok_s'] / tps:>31.4f}×")
    for kind, corr in r.get("logits_correlation_vs_transformers", {}).items():
        print(f"  same model check: next-token logits of {kind} vs transformers, Pearson r = {corr}")
    print(f"  weight bytes read per decoded token: {mlc['weight_bytes_per_token'] / 1e9:.3f} GB (q4f16_1 weights + scales, one embedding row)")


if __name__ == "__main__":
    main(sys.argv[1:])
