"""`make tools`: the aarch64 TVM runtime that runs the llvm:aarch64* kernels under qemu-user in the tests.

Downloads the aarch64 wheels of the venv's own apache-tvm and apache-tvm-ffi versions (a library runs on
the runtime of the TVM that compiled it) and keeps libtvm_runtime.so, libtvm_ffi.so and the C headers:

    python tests/aarch64/fetch_runtime.py DEST
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_24_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
KEEP = {"tvm/lib/libtvm_runtime.so": "libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so"}


def fetch(dest: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("apache-tvm", "apache-tvm-ffi")]
    with tempfile.TemporaryDirectory() as tmp:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        python = f"{sys.version_info.major}{sys.version_info.minor}"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *platforms,
                        "--python-version", python, "-d", tmp, *pins], check=True)
        staged = Path(tmp) / "runtime"
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name in KEEP:
                        (staged / KEEP[name]).parent.mkdir(parents=True, exist_ok=True)
                        (staged / KEEP[name]).write_bytes(zf.read(name))
                    elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                        out = staged / name.removeprefix("tvm_ffi/")
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_bytes(zf.read(name))
        missing = [k for k in KEEP.values() if not (staged / k).is_file()]
        if missing or not (staged / "include" / "tvm" / "ffi" / "c_api.h").is_file():
            raise SystemExit(f"the aarch64 wheels of {', '.join(pins)} lack {missing or 'tvm/ffi/c_api.h'}")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), dest)


if __name__ == "__main__":
    fetch(Path(sys.argv[1]))
