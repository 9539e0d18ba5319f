"""CUDA device code compiled ahead of time.

Without a GPU driver, apache-tvm cannot load its CUDA runtime module, so codegen falls back to a
module of kind "cuda" whose payload is CUDA C++ source (fmt "cuda"), to be compiled by whoever
loads the library. An artifact must not depend on the loader's toolchain, so at export time we
rewrite the packed import tree: every "cuda" module's payload becomes an nvcc fatbin for the
target's arch (fmt "fatbin"), which the CUDA runtime loads with cuModuleLoadData.

Library blob layout (tvm-ffi ProcessLibraryBin): <nbytes u64> <indptr vec<u64>> <children vec<u64>>
then per module <kind str> [<payload bytes>] ("_lib" has no payload). A CUDA payload is
<fmt str> <fmap> <data bytes>, data last. str/bytes are <u64 length><raw>; vec is <u64 n><items>.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mlcbuild.errors import StepError
from mlcbuild.toolmemo import remember

LIBRARY_BIN_SYMBOL = "__tvm_ffi__library_bin"

NVCC_FLAGS = (
    "-O3",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
)


@lru_cache(maxsize=None)
def nvcc_version(nvcc: str = "nvcc") -> str | None:
    """`nvcc --version`'s release line (e.g. "13.0, V13.0.48"), or None without nvcc.

    Remembered per binary (path, inode, size, mtime) in ~/.cache/mlcbuild, so a no-op build
    does not spawn nvcc once per compile node.
    """
    path = shutil.which(nvcc)
    if path is None:
        return None

    def ask() -> str:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"release ([^\n]+)", out)
        return match.group(1).strip() if match else out.strip().splitlines()[-1]

    return remember("nvcc-version", path, "", ask)


def gencode_flags(arch: str, embed_ptx: bool = False) -> list[str]:
    """nvcc flags for SASS of one arch ("sm_90a"), plus its PTX when asked (forward compatibility)."""
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise StepError(f"cuda arch must look like sm_90a, got {arch!r}")
    num = arch[3:]
    codes = [f"sm_{num}"] + ([f"compute_{num}"] if embed_ptx else [])
    return ["-gencode", f"arch=compute_{num},code=[{','.join(codes)}]"]


def compile_cuda_source(source: str, arch: str, *, embed_ptx: bool = False, workdir: Path | None = None) -> bytes:
    """CUDA C++ → fatbin for `arch` with nvcc (raises StepError with nvcc's output on failure)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise StepError("nvcc not found on PATH: needed to compile CUDA device code ahead of time")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp, "kernels.cu")
        out = Path(tmp, "kernels.fatbin")
        src.write_text(source)
        cmd = [nvcc, "--fatbin", *gencode_flags(arch, embed_ptx), *NVCC_FLAGS, "-o", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            tail = [ln for ln in lines if ": error" in ln][:5] + lines[-2:]
            raise StepError(f"nvcc failed for {arch}: " + " | ".join(tail))
        return out.read_bytes()


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return value

    def raw(self) -> bytes:
        n = self.u64()
        if self.pos + n > len(self.data):
            raise ValueError("truncated library blob")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u64_vec(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]


def _raw(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


@dataclass
class PackedModule:
    kind: str
    payload: bytes | None


@dataclass
class LibraryBlob:
    """The packed import tree of a runtime module (what `__tvm_ffi__library_bin` holds)."""

    indptr: list[int]
    children: list[int]
    modules: list[PackedModule]

    @classmethod
    def parse(cls, blob: bytes) -> "LibraryBlob":
        head = _Reader(blob)
        nbytes = head.u64()
        if nbytes + 8 != len(blob):
            raise ValueError(f"library blob says {nbytes} bytes, has {len(blob) - 8}")
        r = _Reader(blob, 8)
        indptr, children = r.u64_vec(), r.u64_vec()
        modules = []
        for _ in range(len(indptr) - 1):
            kind = r.raw().decode()
            modules.append(PackedModule(kind, None if kind == "_lib" else r.raw()))
        if r.pos != len(blob):
            raise ValueError("trailing bytes after the last module in the library blob")
        return cls(indptr, children, modules)

    def to_bytes(self) -> bytes:
        body = bytearray()
        for vec in (self.indptr, self.children):
            body += struct.pack("<Q", len(vec)) + b"".join(struct.pack("<Q", v) for v in vec)
        for m in self.modules:
            body += _raw(m.kind.encode())
            if m.payload is not None:
                body += _raw(m.payload)
        return struct.pack("<Q", len(body)) + bytes(body)


def split_cuda_payload(payload: bytes, sources: list[str]) -> tuple[str, bytes, bytes]:
    """(fmt, fmap bytes, data) of a serialized CUDA module; data is found as one of `sources`."""
    r = _Reader(payload)
    fmt = r.raw().decode()
    for source in sources:
        data = source.encode()
        tail = _raw(data)
        if payload.endswith(tail) and len(payload) - len(tail) >= r.pos:
            return fmt, payload[r.pos : len(payload) - len(tail)], data
    raise ValueError(f"cannot locate the device code in a CUDA module (fmt {fmt!r})")


def cuda_sources(mod: Any) -> list[str]:
    """CUDA C++ source of every "cuda" module in a runtime module's import tree."""
    seen, stack, out = set(), [mod], []
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if m.kind == "cuda":
            out.append(m.inspect_source())
        stack.extend(m.imports)
    return out


def compile_device_code(blob: bytes, sources: list[str], compile_fn: Callable[[str], bytes]) -> tuple[bytes, int]:
    """Replace every CUDA-source module in `blob` by `compile_fn(source)` (fmt "fatbin")."""
    lib = LibraryBlob.parse(blob)
    count = 0
    for m in lib.modules:
        if m.kind != "cuda" or m.payload is None:
            continue
        fmt, fmap, data = split_cuda_payload(m.payload, sources)
        if fmt != "cuda":
            continue
        binary = compile_fn(data.decode())
        m.payload = _raw(b"fatbin") + fmap + _raw(binary)
        count += 1
    return lib.to_bytes(), count


def write_blob_object(blob: bytes, workspace: Path, symbol: str = LIBRARY_BIN_SYMBOL) -> Path:
    """An assembler file exporting `symbol` = blob, for the host linker (ELF hosts)."""
    data = Path(workspace, "devc.bin")
    data.write_bytes(blob)
    asm = Path(workspace, "devc.S")
    asm.write_text(
        f'\t.section .rodata.{symbol},"a"\n'
        f"\t.globl {symbol}\n"
        f"\t.type {symbol}, @object\n"
        "\t.balign 16\n"
        f"{symbol}:\n"
        f'\t.incbin "{data}"\n'
        f"\t.size {symbol}, . - {symbol}\n"
        '\t.section .note.GNU-stack,"",@progbits\n'
    )
    return asm


def make_fpack_imports(arch: str, *, embed_ptx: bool = False, report: Callable[[int], None] | None = None):
    """An `export_library(fpack_imports=...)` hook that packs imports with compiled device code."""

    def fpack_imports(mod: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        import numpy as np
        import tvm_ffi

        if is_system_lib or prefix:
            raise StepError("cuda ahead-of-time packing supports shared libraries only (no system-lib)")
        tensor = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod)
        blob = np.asarray(tensor.numpy(), dtype=np.uint8).tobytes()
        sources = cuda_sources(mod)
        new_blob, count = compile_device_code(
            blob, sources, lambda src: compile_cuda_source(src, arch, embed_ptx=embed_ptx, workdir=Path(workspace_dir))
        )
        if report is not None:
            report(count)
        return str(write_blob_object(new_blob, Path(workspace_dir)))

    return fpack_imports


def library_blob_of(so_path: Path) -> bytes:
    """The packed import tree of an exported shared library (`__tvm_ffi__library_bin`)."""
    from mlcbuild.compiler.elf import symbol_bytes

    data = symbol_bytes(Path(so_path).read_bytes(), LIBRARY_BIN_SYMBOL)
    (nbytes,) = struct.unpack_from("<Q", data, 0)
    return data[: 8 + nbytes] if len(data) >= 8 + nbytes else data


def packed_modules(so_path: Path) -> list[PackedModule]:
    """The modules packed into an exported shared library (kind + serialized payload)."""
    return LibraryBlob.parse(library_blob_of(so_path)).modules


def payload_format(payload: bytes) -> str:
    """The `fmt` string that device modules (cuda, rocm, metal...) serialize first."""
    return _Reader(payload).raw().decode(errors="replace")


FATBIN_MAGIC = 0xBA55ED50


def fatbin_entries(blob: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of each entry of a CUDA fatbin: kind "elf" is SASS (cubin), "ptx" is PTX."""
    out: list[tuple[str, int]] = []
    pos = 0
    while pos + 16 <= len(blob):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != FATBIN_MAGIC:
            break
        entry = pos + header_size
        end = entry + fat_size
        while entry + 32 <= end:
            kind, _v, hsize, size = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            out.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            entry += hsize + size
        pos = end
    return out
