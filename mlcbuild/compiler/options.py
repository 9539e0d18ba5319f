"""Compile options (MLC's --opt levels), resolved once per target so equal meaning gives equal keys.

Importing this module must not import TVM: the planner resolves options while computing keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlcbuild.errors import UserError

OPT_LEVELS = ("O0", "O1", "O2", "O3")
DEFAULT_OPT = "O2"
LEVEL_DEFAULTS: dict[str, dict[str, bool]] = {
    "O0": {"cudagraph": False, "cublas": False},
    "O1": {"cudagraph": False, "cublas": False},
    "O2": {"cudagraph": False, "cublas": False},
    "O3": {"cudagraph": True, "cublas": False},
}
"""What cudagraph and cublas default to at each level. No level turns cuBLAS on: the pipeline has no
cuBLAS dispatch yet (it would split the fused dequantize+matmul kernels), and an explicit
`cublas: true` is refused by the compiler."""


@dataclass(frozen=True)
class CompileOptions:
    opt: str = DEFAULT_OPT
    cudagraph: bool | None = None
    cublas: bool | None = None
    embed_ptx: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "CompileOptions":
        data = dict(data or {})
        known = {k: data.pop(k) for k in ("opt", "cudagraph", "cublas", "embed_ptx") if k in data}
        if data.pop("flashinfer", False):
            raise UserError("flashinfer is not available in this build (apache-tvm wheel)", field="compile.flashinfer")
        opts = cls(**known, extra=data)
        if opts.opt not in OPT_LEVELS:
            raise UserError(f"opt must be one of {', '.join(OPT_LEVELS)}, got {opts.opt!r}", field="compile.opt")
        return opts

    @property
    def level(self) -> int:
        return int(self.opt[1])

    def resolved(self, kind: str, cublas_available: bool) -> dict[str, Any]:
        """Every choice made explicit for one target kind: this is what enters the compile key."""
        cuda = kind == "cuda"
        defaults = LEVEL_DEFAULTS[self.opt]
        if cuda and self.cublas and not cublas_available:
            raise UserError("cublas: this TVM build has no cuBLAS support", field="compile.cublas")
        cublas = self.cublas if self.cublas is not None else defaults["cublas"] and cublas_available
        cudagraph = self.cudagraph if self.cudagraph is not None else defaults["cudagraph"]
        return {
            "opt": self.opt,
            "cudagraph": cuda and bool(cudagraph),
            "cublas": cuda and bool(cublas),
            "embed_ptx": cuda and self.embed_ptx,
            **self.extra,
        }

    def use_cudagraph(self, kind: str) -> bool:
        return self.resolved(kind, cublas_available=bool(self.cublas))["cudagraph"]

    def use_cublas(self, kind: str) -> bool:
        return kind == "cuda" and bool(self.cublas)


def cublas_available(kind: str) -> bool:
    """Whether this TVM build has cuBLAS for `kind` (found without importing TVM)."""
    if kind != "cuda":
        return False
    from mlcbuild.targets import tvm_capabilities

    return "ext:cublas" in tvm_capabilities()


def resolve_options(options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A recipe's `compile` section made explicit for one target kind (what enters the key)."""
    return CompileOptions.from_json(options).resolved(kind, cublas_available(kind))
