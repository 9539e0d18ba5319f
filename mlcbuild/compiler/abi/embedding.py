"""alloc_embedding_tensor() -> [prefill_chunk_size, hidden] in the embedding dtype.

MLC's C++ engine prefills several requests in one call by writing each one's embeddings into this
buffer (`attach_embedding_allocator.py`); its shape comes from the library's own `embed`.
"""
from __future__ import annotations

from typing import Any

FUNCTIONS = ("alloc_embedding_tensor",)


def attach(prefill_chunk_size: int) -> Any:
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="AttachAllocEmbeddingTensor")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        embed = next((f for gv, f in mod.functions_items() if gv.name_hint == "embed"), None)
        if embed is None:
            return mod
        ret = embed.ret_ty
        bb = relax.BlockBuilder(mod)
        with bb.function("alloc_embedding_tensor", []):
            shape = relax.ShapeExpr([prefill_chunk_size, ret.shape[-1]])
            out = bb.emit(relax.op.builtin.alloc_tensor(shape, str(ret.dtype), runtime_device_index=0))
            bb.emit_func_output(out)
        return bb.finalize()

    return run
