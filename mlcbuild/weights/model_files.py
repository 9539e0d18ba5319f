"""Which files of a model folder or Hub repo are the model: selection by pattern (one weight
format), the config/tokenizer subset every compile needs, and the checks that keep a local folder's
files inside it. Shared by the planner (what to key) and the download step (what to fetch)."""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Sequence

from mlcbuild.artifact.names import CHAT_CONFIG, LEGACY_TENSOR_CACHE, MODEL_SUFFIX, SHARD_PREFIX, TENSOR_CACHE
from mlcbuild.errors import UserError

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",  # transformers >= 4.48 saves the chat template here (conv_template: auto reads it)
)
SAFETENSORS_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
PYTORCH_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
META_PATTERNS: tuple[str, ...] = CONFIG_FILES + TOKENIZER_FILES
"""What gen-config (and so every compile) needs of a model: never a weight file."""
DEFAULT_PATTERNS: tuple[str, ...] = CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_PATTERNS + PYTORCH_PATTERNS

WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")

MLC_CONFIG = CHAT_CONFIG
MLC_META_PATTERNS: tuple[str, ...] = (MLC_CONFIG, *TOKENIZER_FILES)
"""What compiling an already-converted MLC folder needs: its config (and tokenizer, for smoke runs)."""
MLC_PATTERNS: tuple[str, ...] = (*MLC_META_PATTERNS, TENSOR_CACHE, LEGACY_TENSOR_CACHE, f"{SHARD_PREFIX}_*.bin")
"""An MLC weight folder as MLC's convert_weight + gen_config write it (or `mlc-ai/*-MLC` publishes it)."""


def is_mlc_folder(folder: Path) -> bool:
    """A folder MLC already converted: mlc-chat-config.json and no Hugging Face weights (a checkpoint
    folder that gen_config also wrote into is still a checkpoint)."""
    if not (folder / MLC_CONFIG).is_file():
        return False
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return False
    return not any(matches(n, SAFETENSORS_PATTERNS + PYTORCH_PATTERNS) for n in names)


def is_mlc_repo(repo: str) -> bool:
    """A Hub repo of converted weights, by the `*-MLC` name mlc-ai publishes them under."""
    return repo.endswith(MODEL_SUFFIX)


def is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in WEIGHT_PATTERNS)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_files(names: Iterable[str], patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[str]:
    """The files to fetch: top-level ones matching `patterns`, with one weight format only.

    Sub-folders are skipped: the output is a flat model folder, and repos such as Llama 3 keep a
    second, original-format copy of the weights under `original/`.

    safetensors win over pytorch .bin (same tensors, no pickle, mmap-able). Among safetensors,
    HF-style `model*.safetensors` win over extra copies such as Mistral's `consolidated.safetensors`,
    which would double the download.
    """
    chosen = sorted({n for n in names if "/" not in n and matches(n, patterns)})
    safetensors = [n for n in chosen if n.endswith(".safetensors")]
    if safetensors:
        chosen = [n for n in chosen if not (n.endswith(".bin") or n.endswith(".bin.index.json"))]
        hf_style = [n for n in safetensors if Path(n).name.startswith("model")]
        if hf_style:
            chosen = [n for n in chosen if not n.endswith(".safetensors") or n in hf_style]
    return chosen


def _allowed_roots(folder: Path) -> list[Path]:
    """Where a symlink in `folder` may point: inside it, or (for a snapshot folder of the HF cache,
    whose files are links to `../../blobs/<hash>`) into that repo's blobs."""
    real = folder.resolve()
    roots = [real]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def local_file_problem(folder: Path, name: str) -> str | None:
    """Why `folder/name` must not be read as part of a local model (None when it may).

    A symlink leading outside the folder would copy an arbitrary file (`/etc/...`) into the cache
    and the artifact; a FIFO or device would hang or never end.
    """
    from mlcbuild.inputs import regular_file_problem

    path = folder / name
    if path.is_symlink():
        target = path.resolve()
        if not any(target == root or root in target.parents for root in _allowed_roots(folder)):
            return f"{path} is a symlink to {target}, outside the model folder; copy the file in instead"
    problem = regular_file_problem(path)
    return f"{path}: {problem}" if problem else None


def local_model_files(folder: Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[str]:
    """The files of a local model folder a build reads (as `select_files` picks them), each checked
    to be a regular file inside the folder: one UserError naming the first that is not."""
    try:
        names = [e.name for e in os.scandir(folder) if not e.name.startswith(".") and not e.is_dir()]
    except OSError as e:
        raise UserError(f"cannot list the model folder {folder}: {e.strerror or e}", field="source.path") from None
    chosen = select_files(names, patterns)
    for name in chosen:
        problem = local_file_problem(folder, name)
        if problem:
            raise UserError(problem, field="source.path")
    return chosen
