"""Read an HF checkpoint folder one tensor at a time.

safetensors files are parsed directly (8-byte header length, JSON header, raw data) and each tensor
is read with seek + readinto into its own buffer: no mmap of whole shards, so resident memory is the
tensors in flight, and bfloat16 works without torch (via ml_dtypes). PyTorch .bin checkpoints go
through torch.load(mmap=True) when torch is installed. Mistral-style `consolidated*.safetensors`
(a second copy of the weights in another naming) are skipped.
"""
from __future__ import annotations

import json
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


def _safetensors_header(path: Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise StepError(f"{path.name}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise StepError(f"{path.name}: bad safetensors header: {exc}") from None
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _ST_DTYPES:
            raise StepError(f"{path.name}: tensor {name} has unsupported dtype {meta['dtype']}")
        b, e = meta["data_offsets"]
        out[name] = TensorInfo(name, path, _ST_DTYPES[meta["dtype"]], tuple(meta["shape"]), base + b, e - b)
    return out


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
            weight_map = json.loads(st_index.read_text())["weight_map"]
            return cls(folder, cls._from_safetensors(folder, sorted(set(weight_map.values())), weight_map), "safetensors")
        if st_files:
            return cls(folder, cls._from_safetensors(folder, [p.name for p in st_files], None), "safetensors")
        bin_index = folder / "pytorch_model.bin.index.json"
        bin_files = sorted(folder.glob("pytorch_model*.bin"))
        if bin_index.exists() or bin_files:
            torch = _import_torch()
            files = sorted(set(json.loads(bin_index.read_text())["weight_map"].values())) if bin_index.exists() else [p.name for p in bin_files]
            tensors: dict[str, TensorInfo] = {}
            for fname in files:
                state = torch.load(folder / fname, map_location="cpu", mmap=True, weights_only=True)
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
            for name, info in _safetensors_header(path).items():
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
            self._torch_state = torch.load(info.file, map_location="cpu", mmap=True, weights_only=True)
            self._torch_file = info.file
        assert self._torch_state is not None
        t = self._torch_state[info.name].contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np_dtype("bfloat16")).copy()
        return t.numpy().copy()

    def close(self) -> None:
        self._torch_state = None
        self._torch_file = None


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise StepError("reading PyTorch .bin checkpoints needs torch: pip install mlcbuild[torch]") from None
    return torch
