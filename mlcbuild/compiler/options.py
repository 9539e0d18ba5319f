"""Compile options (MLC's --opt syntax), resolved once per target so equal meaning gives equal keys.

`opt` is what MLC's `--opt` takes: a level (O0..O3) and/or `name=0|1` flags, `;`-separated
("O3;cudagraph=0", "flashinfer=0;cublas_gemm=0;faster_transformer=1;cudagraph=0"; no level: O2).
Each of MLC's flags (mlc_llm/interface/compiler_flags.py) maps to what we build: `cudagraph` is
honoured (CUDA only); the rest need kernels the apache-tvm wheel from PyPI does not have, so `=1`
is a one-line warning (`compile_warnings`) and `=0` changes nothing. An ignored flag never enters
the key, so it does not split the cache.

Importing this module must not import TVM: the planner resolves options while computing keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlcbuild.errors import UserError
from mlcbuild.suggest import closest, unknown

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

HONOURED_FLAGS = ("cudagraph",)
"""MLC flags that map to a CompileOptions field of the same name."""
IGNORED_FLAGS: dict[str, str] = {
    "flashinfer": "the apache-tvm wheel from PyPI has no FlashInfer kernels; attention runs TVM's own kernels",
    "cublas_gemm": "mlcbuild's pipeline has no cuBLAS GEMM dispatch (it would split the fused dequantize+matmul kernels)",
    "faster_transformer": "the apache-tvm wheel from PyPI has no FasterTransformer (CUTLASS) kernels",
    "cutlass": "the apache-tvm wheel from PyPI has no CUTLASS kernels",
    "ipc_allreduce_strategy": "mlcbuild builds single-device libraries (no tensor-parallel all-reduce)",
}
"""MLC flags we cannot honour, and why: asking for one is a warning, never an error."""
ALLREDUCE = ("NONE", "ONESHOT", "TWOSHOT", "AUTO")


def parse_opt(text: str) -> tuple[str, dict[str, bool], tuple[str, ...]]:
    """MLC's `--opt` string → (level, honoured flags, `name=value` of ignored flags asked on).
    A malformed part is a UserError naming it and what is accepted."""
    level: str | None = None
    flags: dict[str, bool] = {}
    ignored: list[str] = []
    names = (*HONOURED_FLAGS, *IGNORED_FLAGS)
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if part in OPT_LEVELS:
            if level not in (None, part):
                raise UserError(f"{text!r} names two levels ({level}, {part})", field="compile.opt")
            level = part
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip().lstrip("-"), value.strip()
        if not eq:
            guess = closest(part, OPT_LEVELS)
            hint = f" — did you mean {guess!r}?" if guess else f", nor a flag name=0|1 ({', '.join(names)}), `;`-separated"
            raise UserError(f"{part!r} is not one of {', '.join(OPT_LEVELS)}{hint}", field="compile.opt")
        if name not in names:
            raise UserError(unknown("flag", name, names) + " (MLC's --opt flags)", field="compile.opt")
        if name == "ipc_allreduce_strategy":
            if value not in ALLREDUCE:
                raise UserError(f"ipc_allreduce_strategy must be one of {', '.join(ALLREDUCE)}, got {value!r}", field="compile.opt")
            if value != "NONE":
                ignored.append(f"{name}={value}")
            continue
        if value not in ("0", "1"):
            raise UserError(f"{name} must be 0 or 1, got {value!r}", field="compile.opt")
        if name in HONOURED_FLAGS:
            flags[name] = value == "1"
        elif value == "1":
            ignored.append(f"{name}=1")
    return level or DEFAULT_OPT, flags, tuple(ignored)


def compile_warnings(options: Mapping[str, Any] | None) -> list[str]:
    """One line per flag asked on that this build cannot honour, saying why (empty: nothing ignored)."""
    return [f"compile.opt: {flag} is ignored: {IGNORED_FLAGS[flag.partition('=')[0]]}" for flag in CompileOptions.from_json(options).ignored]


@dataclass(frozen=True)
class CompileOptions:
    opt: str = DEFAULT_OPT
    cudagraph: bool | None = None
    cublas: bool | None = None
    embed_ptx: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    """MLC flags asked on that this build cannot honour (`flashinfer=1`): warned about, never keyed."""
    cpu_int8_digits: int = 2
    """int8 digits per activation in the llvm q4 matmuls (compiler/int8_gemv.py): 2 keeps the float
    path's numerics, 1 is llama.cpp's Q8_0 (faster, looser), 0 the float dequantize path; decode and
    prefill alike."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "CompileOptions":
        """The `compile` section (or a compile node's options): `opt` in MLC's --opt syntax."""
        data = dict(data or {})
        known = {k: data.pop(k) for k in ("cudagraph", "cublas", "embed_ptx") if k in data}
        level, flags, ignored = parse_opt(data.pop("opt", DEFAULT_OPT))
        for name, value in flags.items():
            if name in known and known[name] != value:
                raise UserError(f"opt says {name}={int(value)} but {name}: {str(known[name]).lower()} is set too", field=f"compile.{name}")
            known[name] = value
        if data.pop("flashinfer", False):
            ignored += ("flashinfer=1",)
        digits = data.pop("cpu_int8_digits", 2)
        if isinstance(digits, bool) or digits not in (0, 1, 2):
            raise UserError(
                f"must be 0 (float decode), 1 (llama.cpp's Q8_0) or 2 int8 digits per activation, got {digits!r}",
                field="compile.cpu_int8_digits",
            )
        return cls(opt=level, **known, extra=data, ignored=ignored, cpu_int8_digits=int(digits))

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
            **({"cpu_int8_digits": self.cpu_int8_digits} if kind == "llvm" else {}),
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
    from mlcbuild.toolchain import tvm_capabilities

    return "ext:cublas" in tvm_capabilities()


def resolve_options(options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A recipe's `compile` section made explicit for one target kind (what enters the key)."""
    return CompileOptions.from_json(options).resolved(kind, cublas_available(kind))
