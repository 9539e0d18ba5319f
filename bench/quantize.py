"""q4f16_1 quantization throughput against gguf's numpy Q4_0 on the same tensors, and the peak RSS
of converting a ≥ 2 GB checkpoint (streaming convert: should stay near largest tensor + one shard).

    python -m bench.quantize            # or bench.quantize.main() from `make bench`
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# One RedPajama-INCITE-3B layer (GPT-NeoX, hidden 2560): the matrices convert quantizes.
LAYER_SHAPES = [(7680, 2560), (2560, 2560), (10240, 2560), (2560, 10240)]

BIG_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_attention_heads": 32,
    "num_hidden_layers": 10,
    "vocab_size": 50432,
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "max_position_embeddings": 2048,
    "layer_norm_eps": 1e-5,
    "use_parallel_residual": False,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def _random_fp16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(0.02)
    return w.astype(np.float16)


def _best_of(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def quant_throughput(repeat: int = 3) -> dict[str, Any]:
    """GB/s of fp16 input: ours (1 thread, default threads) and gguf Q4_0 on the same tensors."""
    from gguf import GGMLQuantizationType, quants

    from mlcbuild.quantization import SCHEMES
    from mlcbuild.quantization.numpy_quant import _threads, group_quantize

    rng = np.random.default_rng(0)
    tensors = [_random_fp16(rng, s) for s in LAYER_SHAPES]
    nbytes = sum(t.nbytes for t in tensors)
    scheme = SCHEMES["q4f16_1"]

    def ours(threads: int) -> None:
        for t in tensors:
            group_quantize(t, scheme, threads=threads)

    def peer() -> None:
        for t in tensors:
            quants.quantize(t, GGMLQuantizationType.Q4_0)

    ours(1)
    t_peer = _best_of(peer, repeat)
    t_one = _best_of(lambda: ours(1), repeat)
    threads = _threads()
    t_all = _best_of(lambda: ours(threads), repeat)
    return {
        "input_bytes": nbytes,
        "gguf_q4_0_gbps": nbytes / t_peer / 1e9,
        "q4f16_1_1thread_gbps": nbytes / t_one / 1e9,
        "q4f16_1_threaded_gbps": nbytes / t_all / 1e9,
        "threads": threads,
        "speedup_1thread": t_peer / t_one,
        "speedup": t_peer / t_all,
    }


def write_synthetic_checkpoint(folder: Path, config: dict[str, Any] = BIG_CONFIG) -> int:
    """A GPT-NeoX safetensors checkpoint of random fp16, written tensor by tensor (little memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"gpt_neox.embed_in.weight": (v, h)}
    for layer in range(config["num_hidden_layers"]):
        p = f"gpt_neox.layers.{layer}"
        shapes.update({
            f"{p}.input_layernorm.weight": (h,), f"{p}.input_layernorm.bias": (h,),
            f"{p}.post_attention_layernorm.weight": (h,), f"{p}.post_attention_layernorm.bias": (h,),
            f"{p}.attention.query_key_value.weight": (3 * h, h), f"{p}.attention.query_key_value.bias": (3 * h,),
            f"{p}.attention.dense.weight": (h, h), f"{p}.attention.dense.bias": (h,),
            f"{p}.mlp.dense_h_to_4h.weight": (i, h), f"{p}.mlp.dense_h_to_4h.bias": (i,),
            f"{p}.mlp.dense_4h_to_h.weight": (h, i), f"{p}.mlp.dense_4h_to_h.bias": (h,),
        })
    shapes.update({"gpt_neox.final_layer_norm.weight": (h,), "gpt_neox.final_layer_norm.bias": (h,), "embed_out.weight": (v, h)})
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(1)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for shape in shapes.values():
            rows = shape[0] if len(shape) == 2 else 1
            step = max(1, (8 << 20) // (int(np.prod(shape)) // rows))
            for r0 in range(0, rows, step):
                part = (min(step, rows - r0), *shape[1:]) if len(shape) == 2 else shape
                f.write(_random_fp16(rng, part).tobytes())
    return offset


def _child_peak_rss(code: str) -> tuple[int, float]:
    """(peak RSS bytes, wall seconds) of `python -c code`.

    Peak is the child's own VmHWM: rusage maxrss of a fresh child can inherit the parent's
    high-water mark from before exec, which would count this benchmark's own arrays.
    """
    probe = "; print('VmHWM', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code + probe], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}): {result.stderr[-2000:]}")
    kib = int(result.stdout.split("VmHWM")[-1].strip().strip("[]'\""))
    return kib * 1024, wall


def convert_peak_rss(workdir: Path, quantization: str = "q4f16_1") -> dict[str, Any]:
    src, out = workdir / "src", workdir / "out"
    size = write_synthetic_checkpoint(src)
    out.mkdir()
    imports = "from mlcbuild.steps.convert import convert_checkpoint; from pathlib import Path"
    baseline, _ = _child_peak_rss(imports)
    peak, wall = _child_peak_rss(f"{imports}; convert_checkpoint(Path({str(src)!r}), Path({str(out)!r}), {quantization!r})")
    largest = max(
        int(np.prod(s)) * 2 for s in [(BIG_CONFIG["vocab_size"], BIG_CONFIG["hidden_size"]), (BIG_CONFIG["intermediate_size"], BIG_CONFIG["hidden_size"])]
    )
    written = sum(p.stat().st_size for p in out.iterdir())
    return {
        "checkpoint_bytes": size,
        "output_bytes": written,
        "largest_tensor_bytes": largest,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "convert_seconds": wall,
        "convert_gbps": size / wall / 1e9,
    }


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main(rss: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": quant_throughput()}
    t = results["throughput"]
    rows = [
        ("input (one 3B GPT-NeoX layer, fp16)", f"{t['input_bytes'] / 1e6:.0f} MB"),
        ("gguf numpy Q4_0", f"{t['gguf_q4_0_gbps']:.3f} GB/s"),
        ("mlcbuild q4f16_1, 1 thread", f"{t['q4f16_1_1thread_gbps']:.3f} GB/s  ({t['speedup_1thread']:.1f}x gguf)"),
        (f"mlcbuild q4f16_1, {t['threads']} threads", f"{t['q4f16_1_threaded_gbps']:.3f} GB/s  ({t['speedup']:.1f}x gguf)"),
    ]
    if rss:
        with tempfile.TemporaryDirectory(prefix="mlcbuild-bench-") as tmp:
            r = convert_peak_rss(Path(tmp))
        results["convert"] = r
        mib = 1 << 20
        rows += [
            ("synthetic checkpoint (fp16 safetensors)", f"{r['checkpoint_bytes'] / 1e9:.2f} GB"),
            ("convert q4f16_1 wall", f"{r['convert_seconds']:.1f} s  ({r['convert_gbps']:.2f} GB/s end to end)"),
            ("peak RSS converting", f"{r['peak_rss_bytes'] / mib:.0f} MiB"),
            ("  of which python + imports", f"{r['baseline_rss_bytes'] / mib:.0f} MiB"),
            ("  largest tensor / shard cap", f"{r['largest_tensor_bytes'] / mib:.0f} MiB / 32 MiB"),
        ]
    print("quantize / convert benchmark")
    print(_table(rows))
    return results


if __name__ == "__main__":
    main()
