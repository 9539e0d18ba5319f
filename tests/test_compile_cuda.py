"""CUDA libraries built here (no GPU driver) hold nvcc-compiled device code, not CUDA source;
static (.tar) mobile targets build without their platform toolchains."""
from __future__ import annotations

import shutil
import tarfile

import pytest

from mlcbuild.compiler.cuda import LibraryBlob, fatbin_entries, library_blob_of, packed_modules, payload_format

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.mark.slow
@needs_nvcc
def test_cuda_sm90a_library_holds_sass_and_no_cuda_source(compiled_model) -> None:
    built = compiled_model("llama", "q4f16_1", "cuda:sm_90a")
    data = built.lib.read_bytes()
    assert b'extern "C" __global__' not in data and b"__global__" not in data
    assert b"#include" not in data
    cuda = [m for m in packed_modules(built.lib) if m.kind == "cuda"]
    assert len(cuda) == 1
    payload = cuda[0].payload
    assert payload_format(payload) == "fatbin"
    fatbin = payload[payload.index(b"\x50\xed\x55\xba") :]
    assert ("elf", 90) in fatbin_entries(fatbin)
    assert all(kind == "elf" for kind, _ in fatbin_entries(fatbin))
    kinds = [m.kind for m in LibraryBlob.parse(library_blob_of(built.lib)).modules]
    assert kinds[0] == "relax.VMExecutable" and "_lib" in kinds
    assert built.metadata["mlcbuild"]["target"]["attrs"]["arch"] == "sm_90a"


def test_blob_rewrite_keeps_function_table() -> None:
    """The CUDA payload rewrite swaps only fmt and data; the function table bytes stay as they were."""
    import struct

    from mlcbuild.compiler.cuda import PackedModule, compile_device_code

    def raw(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    source = 'extern "C" __global__ void k() {}'
    fmap = struct.pack("<Q", 1) + raw(b"k") + raw(b"k") + b"\x00" * 24
    lib = LibraryBlob([0, 1, 1], [1], [PackedModule("_lib", None), PackedModule("cuda", raw(b"cuda") + fmap + raw(source.encode()))])
    out, count = compile_device_code(lib.to_bytes(), [source], lambda src: b"FATBIN:" + src[:4].encode())
    assert count == 1
    new = LibraryBlob.parse(out).modules[1].payload
    assert new == raw(b"fatbin") + fmap + raw(b"FATBIN:exte")


@pytest.mark.slow
def test_opencl_android_emits_tar_of_aarch64_objects(compiled_model) -> None:
    built = compiled_model("llama", "q4f16_1", "opencl:android")
    assert built.lib.suffix == ".tar"
    with tarfile.open(built.lib) as tar:
        names = tar.getnames()
        assert "lib0.o" in names and any(n.endswith("devc.o") for n in names)
        header = tar.extractfile("lib0.o").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
