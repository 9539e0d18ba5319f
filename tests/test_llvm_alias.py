"""Every PrimFunc of an llvm library is compiled noalias (mlcbuild/compiler/llvm_alias.py).

TVM's LLVM codegen takes the alias mode of the function it declares last for the whole module: one
function without `tirx.noalias` sorting last costs every kernel its noalias parameters and TBAA tags
(LLVM IR shows the one catch-all "tvm-alias" tag). Micro-module, no model compile.
"""
from __future__ import annotations

import pytest

pytest.importorskip("tvm")


def _module():
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kernel(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32"), c: T.Buffer((64,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(64):
            with T.sblock("c"):
                vi = T.axis.remap("S", [i])
                c[vi] = a[vi] * b[vi] + c[vi]

    @T.prim_func(s_tir=True)
    def zzz_other(x: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("x"):
                vi = T.axis.remap("S", [i])
                x[vi] = x[vi] + T.float32(1)

    return tvm.IRModule({"kernel": kernel.with_attr("global_symbol", "kernel"), "zzz_other": zzz_other.with_attr("global_symbol", "zzz_other")})


def _llvm_ir(mod) -> str:
    import tvm

    from mlcbuild.targets import resolve_target

    lib = tvm.compile(mod, target=tvm.target.Target(resolve_target("llvm", None).tvm_target_config()))
    return (lib.mod.imports[0] if lib.mod.imports else lib.mod).inspect_source("ll")


def test_a_last_function_without_noalias_no_longer_takes_every_kernels_own() -> None:
    import tvm

    from mlcbuild.compiler.llvm_alias import noalias_everywhere

    mod = _module()
    alone = tvm.IRModule({"kernel": mod["kernel"]})
    assert "tvm-alias" not in _llvm_ir(alone), "a noalias kernel alone keeps its TBAA tags"
    assert "tvm-alias" in _llvm_ir(mod), "TVM's codegen: the last function's alias mode for all (if this fails, TVM fixed it)"
    fixed = noalias_everywhere()(mod)
    assert all(func.attrs["tirx.noalias"] for _, func in fixed.functions_items())
    assert "tvm-alias" not in _llvm_ir(fixed)
