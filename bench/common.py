"""Shared helpers for benchmarks: timing, peak RSS, a large synthetic checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
DEMO_MODEL = REPO / "recipes" / "models" / "tiny-redpajama"


def median_wall(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(cmd: Sequence[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def make_big_gpt_neox(folder: Path, vocab: int = 200_000, hidden: int = 2560, layers: int = 2) -> int:
    """A GPT-NeoX checkpoint of random fp16 weights (≈2.3 GB at the defaults); returns its bytes.

    Names and shapes come from transformers on the meta device, so the file is exactly what a
    real checkpoint of this architecture holds.
    """
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    marker = folder / ".complete"
    if marker.exists():
        return int(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 80,
        intermediate_size=4 * hidden,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    rng = np.random.default_rng(0)
    tensors = {
        name: (rng.standard_normal(tuple(p.shape), dtype=np.float32) * 0.02).astype(np.float16)
        for name, p in model.state_dict().items()
        if p.dtype.is_floating_point
    }
    save_file(tensors, str(folder / "model.safetensors"))
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (DEMO_MODEL / name).exists():
            shutil.copy(DEMO_MODEL / name, folder / name)
    size = sum(t.nbytes for t in tensors.values())
    marker.write_text(str(size))
    return size


def write_recipe(
    path: Path,
    name: str,
    model: Path,
    quantizations: Sequence[str],
    targets: Sequence[str],
    context_window_size: int,
    prefill_chunk_size: int,
    **extra: object,
) -> Path:
    """A benchmark's recipe over a local GPT-NeoX folder (YAML, as a user writes it)."""
    import yaml

    overrides = {"context_window_size": context_window_size, "prefill_chunk_size": prefill_chunk_size,
                 "max_batch_size": 1, **extra.pop("overrides", {})}  # type: ignore[dict-item]
    data = {
        "name": name,
        "source": {"path": str(model)},
        "quantizations": list(quantizations),
        "targets": list(targets),
        "conv_template": "redpajama_chat",
        "model_type": "gpt_neox",
        "overrides": overrides,
        "output": "dist",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def drop_page_cache(paths: Sequence[Path]) -> None:
    """Evict the files' pages (posix_fadvise DONTNEED: no root needed) so the next read is cold."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
