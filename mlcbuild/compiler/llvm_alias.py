"""Every PrimFunc of an llvm library compiled as `tirx.noalias`, so that no kernel loses its own.

TVM's LLVM codegen takes one alias mode for the whole module: the `tirx.noalias` of the function it
declares last (by symbol name). When that function lacks it, every kernel is compiled as if its
buffers might alias: no `noalias` parameters, one TBAA tag for all accesses, so LLVM keeps the
accumulators of a scheduled matmul in memory and reloads the activation once per output row. A
library's last function is TVM's `tree_attn_paged_kv_cpu` (no `tirx.noalias`), and so every kernel of
ours compiled that way: the 3B prefill qkv matmul ran 13.5 ms, 8.2 ms compiled alone (measured by
compiling the kernel beside that one function, then beside it renamed to sort first).

The functions without the attribute are TVM's KV-cache, sampler and shape kernels; the runtime hands
each of their buffer parameters a distinct tensor, which is what `noalias` promises (and what they
are compiled as in any module whose last function has it).
"""
from __future__ import annotations

from typing import Any

NOALIAS = "tirx.noalias"


def noalias_everywhere() -> Any:
    """Module pass: `tirx.noalias` on every PrimFunc (run it last, after VMShapeLower adds its own)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="NoaliasEverywhere")
    def mark(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get(NOALIAS)):
                out.update_func(gv, func.with_attr(NOALIAS, True))
        return out

    return mark
