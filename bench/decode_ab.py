"""Several model libraries of one weight folder in one process, interleaved: before/after comparisons of
a compiler change without the machine's drift between processes.

Each round, every library in turn: `Engine.prefill` of the same random prompt (timed), then `--steps`
greedy decode steps (median step time); best of `--rounds` for prefill, per-round medians for decode.
The next-token logits after the prompt are compared with the first library's.

    TVM_NUM_THREADS=2 python -m bench.decode_ab MODEL_DIR LIB_A LIB_B ... [--rounds 3] [--steps 16] [--prompt 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def main(argv: list[str]) -> list[dict[str, Any]]:
    import numpy as np

    from mlcbuild.runtime.engine import Engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("libs", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    args = ap.parse_args(argv)
    engines = {lib: Engine.load(args.model_dir, lib, "cpu") for lib in args.libs}
    ids = np.random.default_rng(7).integers(1, next(iter(engines.values())).vocab_size, args.prompt).tolist()
    prefill_s = {lib: float("inf") for lib in args.libs}
    steps_ms: dict[str, list[float]] = {lib: [] for lib in args.libs}
    logits: dict[str, Any] = {}
    for engine in engines.values():
        engine.prefill(ids[:4])
        engine.decode(1)
        engine.reset()
    for _ in range(args.rounds):
        for lib, engine in engines.items():
            engine.reset()
            t0 = time.perf_counter()
            out = engine.prefill(ids)
            prefill_s[lib] = min(prefill_s[lib], time.perf_counter() - t0)
            logits[lib] = np.asarray(out, dtype=np.float32)
            token, times = int(np.argmax(out)), []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                out = engine.decode(token)
                times.append(time.perf_counter() - t0)
                token = int(np.argmax(out))
            steps_ms[lib].append(1000 * float(np.median(times)))
    first = logits[args.libs[0]]
    rows = []
    for lib in args.libs:
        rows.append({
            "lib": lib,
            "prefill_tok_s_best": round(args.prompt / prefill_s[lib], 2),
            "decode_ms_median_per_round": [round(x, 1) for x in steps_ms[lib]],
            "decode_tok_s_best_round": round(1000 / min(steps_ms[lib]), 2),
            "logits_max_abs_diff_vs_first": float(np.abs(logits[lib] - first).max()),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
