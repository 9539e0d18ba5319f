"""Read an HF checkpoint folder one tensor at a time.

safetensors files are parsed directly (8-byte header length, JSON header, raw data) and each tensor
is read with seek + readinto into its own buffer: no mmap of whole shards, so resident memory is the
tensors in flight, and bfloat16 works without torch (via ml_dtypes). PyTorch .bin checkpoints go
through torch.load(mmap=True) when torch is installed. Mistral-style `consolidated*.safetensors`
(a second copy of the weights in another naming) are skipped.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcbuild.errors import StepError
from mlcbuild.quantization.numpy_quant import np_dtype

_ST_DTYPES = {
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0
    nbytes: int = 0


MAX_HEADER_BYTES = 100 << 20
"""The safetensors library's own bound on a header; a larger length field is a corrupt file."""

_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}


def _step_error(message: str, location: Any, field: str | None = None) -> Exception:
    from mlcbuild.inputs import step_error

    return step_error(message, location, field)


def read_safetensors_header(path: Path, shown: str | None = None, error: Any = _step_error) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, every field checked against the file's size before
    any of it is trusted (a length of 2^62, a list header, a missing dtype, offsets past the end)."""
    from mlcbuild.errors import Location
    from mlcbuild.inputs import regular_file_problem

    where = Location(shown or path.name)

    def bad(message: str) -> Exception:
        return error(f"not a valid safetensors file: {message}", where, None)

    problem = regular_file_problem(path)
    if problem is not None:
        raise error(problem, where, None)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"header length {n} exceeds the file ({size} bytes)" if n > size - 8 else f"header length {n} is over {MAX_HEADER_BYTES}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise bad(f"header must be a JSON object, got {type(header).__name__}")
    base, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise bad(f"tensor {name}: expected an object with dtype, shape, data_offsets")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype is None:
            raise bad(f"tensor {name} has no dtype")
        if dtype not in _ST_DTYPES:
            raise bad(f"tensor {name} has unsupported dtype {dtype!r} (supported: {', '.join(_ST_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name}: shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {name}: data_offsets must be [begin, end], got {offsets!r}")
        b, e = offsets
        if not 0 <= b <= e <= data_size:
            raise bad(f"tensor {name}: data_offsets [{b}, {e}] lie outside the {data_size} data bytes")
        expected = _ITEMSIZE[dtype] * math.prod(shape)
        if e - b != expected:
            raise bad(f"tensor {name}: {e - b} data bytes, but shape {shape} {dtype} needs {expected}")
        out[name] = TensorInfo(name, path, _ST_DTYPES[dtype], tuple(shape), base + b, e - b)
    return out


def weight_map_files(index: Path, shown: str | None = None, error: Any = _step_error) -> dict[str, str]:
    """The weight_map of a `*.index.json`: tensor name → a file name in the same folder.

    A file named by an absolute path, `..` or a sub-folder would be read from outside the model
    folder (and outside every key), so it is refused.
    """
    from mlcbuild.errors import Location
    from mlcbuild.inputs import read_json

    where = shown or index.name
    data = read_json(index, where, 64 << 20, error=error)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise error("expected a non-empty 'weight_map' object", Location(where), "weight_map")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file or os.path.isabs(file):
            raise error(f"{file!r} is not a file name in the model folder (no paths)", Location(where), f"weight_map.{name}")
    return weight_map


class HFCheckpoint:
    """The tensors of an HF model folder, by name, with lazy reads."""

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo], kind: str):
        self.folder = folder
        self.tensors = tensors
        self.kind = kind
        self._torch_file: Path | None = None
        self._torch_state: dict[str, Any] | None = None

    @classmethod
    def open(cls, folder: Path | str) -> "HFCheckpoint":
        folder = Path(folder)
        st_index = folder / "model.safetensors.index.json"
        st_files = [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else [
            p for p in sorted(folder.glob("*.safetensors")) if not p.name.startswith("consolidated")
        ]
        if st_index.exists():
            weight_map = weight_map_files(st_index)
            return cls(folder, cls._from_safetensors(folder, sorted(set(weight_map.values())), weight_map), "safetensors")
        if st_files:
            return cls(folder, cls._from_safetensors(folder, [p.name for p in st_files], None), "safetensors")
        bin_index = folder / "pytorch_model.bin.index.json"
        bin_files = sorted(folder.glob("pytorch_model*.bin"))
        if bin_index.exists() or bin_files:
            torch = _import_torch()
            files = sorted(set(weight_map_files(bin_index).values())) if bin_index.exists() else [p.name for p in bin_files]
            tensors: dict[str, TensorInfo] = {}
            for fname in files:
                state = _torch_load(torch, folder / fname)
                for name, t in state.items():
                    tensors[name] = TensorInfo(name, folder / fname, str(t.dtype).removeprefix("torch."), tuple(t.shape))
                del state
            return cls(folder, tensors, "pytorch")
        raise StepError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin found")

    @staticmethod
    def _from_safetensors(folder: Path, files: list[str], weight_map: dict[str, str] | None) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for fname in files:
            path = folder / fname
            if not path.exists():
                raise StepError(f"{fname}: listed in model.safetensors.index.json but missing")
            for name, info in read_safetensors_header(path).items():
                if weight_map is not None and weight_map.get(name) != fname:
                    continue
                tensors[name] = info
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise StepError(f"tensor {missing[0]} is in model.safetensors.index.json but not in {weight_map[missing[0]]}")
        return tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def read(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if self.kind == "safetensors":
            arr = np.empty(info.shape, np_dtype(info.dtype))
            if arr.nbytes != info.nbytes:
                raise StepError(f"tensor {name}: header says {info.nbytes} bytes for shape {info.shape} {info.dtype}")
            with open(info.file, "rb") as f:
                f.seek(info.offset)
                if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != info.nbytes:
                    raise StepError(f"tensor {name}: {info.file.name} is truncated")
            return arr
        return self._read_torch(info)

    def _read_torch(self, info: TensorInfo) -> np.ndarray:
        torch = _import_torch()
        if self._torch_file != info.file:
            self._torch_state = None
            self._torch_state = _torch_load(torch, info.file)
            self._torch_file = info.file
        assert self._torch_state is not None
        t = self._torch_state[info.name].contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np_dtype("bfloat16")).copy()
        return t.numpy().copy()

    def close(self) -> None:
        self._torch_state = None
        self._torch_file = None


def _torch_load(torch: Any, path: Path) -> dict[str, Any]:
    """torch.load restricted to tensors (weights_only); a refused or broken pickle is one line."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        culprit = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), None)
        why = f" ({culprit.rstrip('.')})" if culprit else ""
        raise StepError(
            f"{path.name}: refused to load: the pickle holds more than tensors{why}; convert the checkpoint to safetensors"
        ) from None
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise StepError(f"{path.name}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(state, dict) or not all(hasattr(t, "dtype") and hasattr(t, "shape") for t in state.values()):
        raise StepError(f"{path.name}: expected a mapping of tensor names to tensors")
    return state


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise StepError("reading PyTorch .bin checkpoints needs torch: pip install mlcbuild[torch]") from None
    return torch
