"""`make tools`: an aarch64 Python with TVM's runtime, in which the tests run llvm:aarch64* libraries under
qemu-user (tests/conftest.py: `aarch64_python`).

Debian's arm64 python3.11 (its packages unpacked into DEST/root: `dpkg --add-architecture arm64`, then
`apt-get download`) and the aarch64 wheels of the venv's own numpy, apache-tvm and apache-tvm-ffi
versions (a library runs on the runtime of the TVM that compiled it) in DEST/site, without TVM's compiler
library: the tests load TVM with TVM_USE_RUNTIME_LIB=1, as a deployment would.

    python tests/aarch64/make_env.py DEST
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "zlib1g", "libexpat1", "libffi8",
    "libbz2-1.0", "liblzma5", "libuuid1", "libssl3", "libcrypt1", "libsqlite3-0", "libncursesw6", "libtinfo6",
)
WHEELS = ("numpy", "apache-tvm", "apache-tvm-ffi", "ml_dtypes", "typing_extensions")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")


def make(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / "env"
        debs = Path(tmp) / "debs"
        debs.mkdir()
        if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True).stdout.split():
            subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
            subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", "-qq", *(f"{name}:arm64" for name in DEBS)], cwd=debs, check=True)
        (staged / "root").mkdir(parents=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staged / "root")], check=True)
        pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", *platforms,
                        "--python-version", "3.11", "--implementation", "cp", "--target", str(staged / "site"), *pins], check=True)
        (staged / "site" / "tvm" / "lib" / "libtvm_compiler.so").unlink()
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staged), dest)


if __name__ == "__main__":
    make(Path(sys.argv[1]).resolve())
