"""What this machine can build: TVM's codegens and LLVM backends, the tools a target needs, the
host CPU. Target definitions are `mlcbuild.targets`; this module probes the machine for them.

Nothing here imports TVM: capabilities come from scanning libtvm_compiler.so for each codegen's
registered name, and the host CPU from a subprocess, both remembered on disk by the library's
stat (`toolmemo`). A reason a target cannot be built is a `Missing` (what kind of thing, which
one), which the compile step and `mlcbuild targets` read without parsing text.
"""
from __future__ import annotations

import importlib.util
import mmap
import os
import shutil
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.errors import UserError
from mlcbuild.targets import ResolvedTarget, Target, get_target, load_targets
from mlcbuild.toolmemo import remember

_HOST_CPU_PROBE = """
import json, tvm
from tvm.target import codegen
cpu = codegen.llvm_get_system_cpu()
arch, vendor, *rest = codegen.llvm_get_system_triple().split("-")
triple = "-".join([arch, *rest] if vendor in ("conda", "pc", "unknown") and rest else [arch, vendor, *rest])
host = {str(k): bool(v) for k, v in dict(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()).items()}
implied = set(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu, "mtriple": triple})))
mattr = [("+" if on else "-") + f for f, on in sorted(host.items()) if on != (f in implied)]
print(json.dumps({"mcpu": cpu, "mtriple": triple, "mattr": mattr}))
"""


def _cpu_identity() -> str:
    """What names this CPU without TVM (the memo's salt): /proc/cpuinfo's vendor, model and flags."""
    import hashlib
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
        text = "\n".join(line for line in lines if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU part"))
    except OSError:
        text = f"{platform.machine()} {platform.processor()} {platform.platform()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def host_cpu() -> dict[str, Any]:
    """{mcpu, mtriple, mattr} of this machine, as LLVM detects it; run in a subprocess (planning does not
    import TVM) and remembered per TVM library and CPU."""
    import json
    import subprocess
    import sys

    lib = tvm_compiler_library()
    if lib is None:
        raise UserError("llvm native: detecting this CPU needs apache-tvm (pip install apache-tvm)", field="targets")

    def probe() -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", _HOST_CPU_PROBE], capture_output=True, text=True, timeout=120)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"llvm native: LLVM's host CPU detection failed: {tail}", field="targets")
        return json.loads(lines[-1])

    return dict(remember("host-cpu", lib, _cpu_identity(), probe))


_TOOL_HINTS = {
    "cc": "a C compiler (cc) on PATH",
    "nvcc": "the CUDA toolkit (nvcc) on PATH",
    "xcrun": "Xcode command line tools (xcrun, macOS only)",
    "emcc": "Emscripten (emcc) on PATH, and TVM's wasm runtime (web/dist/wasm)",
    "ndk": "the Android NDK (set ANDROID_NDK or TVM_NDK_CC)",
    "ld.lld": "LLVM's linker (ld.lld) on PATH",
    "rocm": "ROCm device libraries (ROCM_PATH or /opt/rocm)",
    "spirv": "SPIR-V tools (spirv-val) on PATH",
}

_LLVM_BACKENDS = {
    "x86_64": b"64-bit X86: EM64T and AMD64",
    "aarch64": b"AArch64 (little endian)",
    "arm64": b"ARM64 (little endian)",
    "wasm32": b"WebAssembly 32-bit",
    "amdgcn": b"AMD GCN GPUs",
    "nvptx64": b"NVIDIA PTX 64-bit",
}


@lru_cache(maxsize=None)
def _have_tool(tool: str) -> bool:
    if tool == "ndk":
        for var in ("TVM_NDK_CC", "ANDROID_NDK", "ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
            value = os.environ.get(var)
            if value and Path(value).exists():
                return True
        return False
    if tool == "rocm":
        return Path(os.environ.get("ROCM_PATH", "/opt/rocm"), "amdgcn", "bitcode").is_dir()
    if tool == "spirv":
        return shutil.which("spirv-val") is not None
    return shutil.which(tool) is not None


def tvm_compiler_library() -> Path | None:
    """libtvm_compiler.so of the installed apache-tvm, found without importing tvm."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for name in ("libtvm_compiler.so", "libtvm.so", "libtvm_compiler.dylib", "libtvm.dylib"):
            path = Path(root, "lib", name)
            if path.exists():
                return path
    return None


@lru_cache(maxsize=None)
def tvm_version() -> str | None:
    """apache-tvm's version, read from its dist-info folder name (importlib.metadata costs ~30 ms)."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    for dist in ("apache_tvm", "tvm", "mlc_ai_nightly"):
        for info in sorted(site.glob(f"{dist}-*.dist-info")):
            return info.name[len(dist) + 1 : -len(".dist-info")]
    return None


_PROBES: dict[str, bytes] = {
    **{f"codegen:{k}": f"target.build.{k}\0".encode() for k in ("llvm", "c", "cuda", "metal", "opencl", "webgpu", "rocm", "vulkan", "nvptx")},
    **{f"llvm:{k}": v for k, v in _LLVM_BACKENDS.items()},
    "ext:cublas": b"relax.ext.cublas\0",
}


@lru_cache(maxsize=None)
def tvm_capabilities() -> frozenset[str]:
    """Which codegens/LLVM backends the installed TVM has, by scanning its compiler library."""
    lib = tvm_compiler_library()
    if lib is None:
        return frozenset()

    def scan() -> list[str]:
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return sorted(name for name, probe in _PROBES.items() if m.find(probe) >= 0)

    return frozenset(remember("tvm-capabilities", lib, ",".join(sorted(_PROBES)), scan))


def _triple_arch(host: Mapping[str, Any] | None) -> str | None:
    if not host:
        return None
    triple = host.get("mtriple")
    return str(triple).split("-")[0] if triple else None


class Lack(Enum):
    """What kind of thing this machine lacks to build a target."""

    TVM = "apache-tvm"
    CODEGEN = "codegen"
    LLVM_BACKEND = "llvm backend"
    TOOL = "tool"


@dataclass(frozen=True)
class Missing:
    """Why this machine cannot build a target: what kind of thing is lacking, which one (a codegen,
    an LLVM arch, a tool name), and one line for people."""

    lack: Lack
    what: str
    detail: str

    def __str__(self) -> str:
        return self.detail

    @property
    def elsewhere(self) -> str:
        """What the plan says of a node this machine cannot build."""
        if self.lack is Lack.TOOL:
            return f"needs {self.detail}: build it where that is"
        return f"cannot build here ({self.detail}): build it where that is"


def check_resolved(target: ResolvedTarget, have_tool: Callable[[str], bool] = _have_tool) -> Missing | None:
    """None when this machine can build `target`, else what it lacks (the first of TVM, a codegen,
    an LLVM backend, a tool)."""
    caps = tvm_capabilities()
    version = tvm_version()
    if not caps:
        return Missing(Lack.TVM, "apache-tvm", "apache-tvm is not installed (pip install apache-tvm)")
    for codegen in target.codegen:
        if f"codegen:{codegen}" not in caps:
            return Missing(Lack.CODEGEN, codegen, f"no {codegen} codegen in this TVM build (apache-tvm {version})")
    arch = _triple_arch(target.host) or (_triple_arch(target.tvm_target) if target.tvm_target.get("kind") == "llvm" else None)
    if arch in _LLVM_BACKENDS and f"llvm:{arch}" not in caps:
        return Missing(Lack.LLVM_BACKEND, arch, f"this TVM's LLVM has no {arch} backend (apache-tvm {version})")
    for tool in target.toolchain:
        if not have_tool(tool):
            return Missing(Lack.TOOL, tool, _TOOL_HINTS.get(tool, tool + " on PATH"))
    return None


def check_available(target: Target | ResolvedTarget | str, variant: str | None = None) -> Missing | None:
    """None = buildable here; else what is missing (codegen or toolchain)."""
    if isinstance(target, str):
        target = get_target(target)
    if isinstance(target, Target):
        target = target.resolve(variant)
    return check_resolved(target)


@dataclass(frozen=True)
class TargetStatus:
    name: str
    variant: str | None
    suffix: str
    missing: Missing | None
    description: str

    @property
    def available(self) -> bool:
        return self.missing is None


def list_targets() -> list[TargetStatus]:
    """Every target and variant with whether this machine can build it (for `mlcbuild targets`)."""
    rows: list[TargetStatus] = []
    for name, target in sorted(load_targets().items()):
        for variant in list(target.variants) or [None]:
            resolved = target.resolve(variant)
            desc = target.variant_overrides.get(variant or "", {}).get("description", target.description)
            rows.append(TargetStatus(name, variant, resolved.suffix, check_resolved(resolved), str(desc)))
    return rows
