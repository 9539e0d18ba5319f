"""Same key ⇒ same bytes: the compile-side fixes for TVM's run-to-run variation.

relax's VMShapeLower emits `shape_func*` PrimFuncs whose independent stores (e.g. `H[3] = 4*H[0]*H[1]`
and `H[2] = 4*H[1]`) come out in either order from one run to the next (about one build in four;
PYTHONHASHSEED, ASLR and TVM_NUM_THREADS do not change it). Both orders compute the same thing,
but they give different machine code, so the library's digest changes. `canonical_store_order`
rewrites every run of consecutive BufferStores into one canonical order that keeps every dependency:
the lexicographically smallest topological order (by the store's script text) of the "must stay
before" relation, which is the same whichever legal order TVM produced.

Static libraries (`.tar`) are written by `reproducible_tar` instead of TVM's `tar -czf`, whose member
times, owners and listing order vary. Found by dumping the TIR handed to codegen and the library of
builds in fresh processes and diffing them; nothing else varied (llvm, cuda fatbins, opencl).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

WHOLE = None
"""An access whose index is not a constant touches, as far as we can tell, the whole buffer."""


@dataclass(frozen=True)
class _Access:
    buffer: Any  # the buffer Var
    index: tuple[int, ...] | None

    def overlaps(self, other: "_Access") -> bool:
        """Two different buffer Vars may share storage (declared over one data pointer, match_buffer
        views; `tirx.noalias` speaks of parameters only), so only distinct constant elements of one
        buffer are known apart."""
        if not self.buffer.same_as(other.buffer):
            return True
        return self.index is WHOLE or other.index is WHOLE or self.index == other.index


@dataclass(frozen=True)
class _StoreEffects:
    writes: _Access
    reads: tuple[_Access, ...]


def _access(buffer: Any, indices: Any) -> _Access:
    from tvm import tirx

    if all(isinstance(i, tirx.IntImm) for i in indices):
        return _Access(buffer, tuple(int(i) for i in indices))
    return _Access(buffer, WHOLE)


def _effects(store: Any) -> _StoreEffects | None:
    """What a BufferStore reads and writes; None when it may do more (a call: side effects)."""
    import tvm_ffi
    from tvm import ir

    reads: list[_Access] = []
    opaque = False

    def visit(node: Any) -> None:
        nonlocal opaque
        if isinstance(node, ir.TensorLoad):  # what tirx.BufferLoad builds
            reads.append(_access(node.source, node.indices))
        elif isinstance(node, ir.Call):
            opaque = True

    parts = [store.value, *store.indices] + ([store.predicate] if getattr(store, "predicate", None) is not None else [])
    for part in parts:
        tvm_ffi.structural_walk(part, visit)
    if opaque:
        return None
    return _StoreEffects(_access(store.buffer, store.indices), tuple(reads))


def _conflict(a: _StoreEffects, b: _StoreEffects) -> bool:
    """Whether a and b must keep their relative order (write/write, write/read, read/write)."""
    if a.writes.overlaps(b.writes):
        return True
    return any(a.writes.overlaps(r) for r in b.reads) or any(b.writes.overlaps(r) for r in a.reads)


def canonical_order(stores: list[Any], effects: list[_StoreEffects]) -> list[int]:
    """Indices of `stores` in the smallest topological order (by script text) of their dependencies."""
    n = len(stores)
    succ: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if _conflict(effects[i], effects[j]):
                succ[i].append(j)
                indegree[j] += 1
    keys = [str(s) for s in stores]
    ready = [(keys[i], i) for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, (keys[j], j))
    return order


def canonicalize_stmt(body: Any) -> Any:
    """`body` with every run of consecutive, side-effect-free BufferStores in canonical order."""
    import tvm_ffi
    from tvm import tirx

    def seq(node: Any) -> Any:
        items = list(node.seq)
        out: list[Any] = []
        changed = False
        i = 0
        while i < len(items):
            run: list[Any] = []
            effects: list[_StoreEffects] = []
            while i < len(items) and isinstance(items[i], tirx.BufferStore) and (e := _effects(items[i])) is not None:
                run.append(items[i])
                effects.append(e)
                i += 1
            if len(run) > 1:
                order = canonical_order(run, effects)
                changed |= order != sorted(order)
                out.extend(run[k] for k in order)
            elif run:
                out.extend(run)
            else:
                out.append(items[i])
                i += 1
        return tirx.SeqStmt(out, node.span) if changed else node

    return tvm_ffi.structural_map(body, [(tirx.SeqStmt, seq)])


def canonical_store_order():
    """Module pass: `canonicalize_stmt` on every PrimFunc (run it after VMShapeLower)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="CanonicalStoreOrder")
    def canonical(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            body = canonicalize_stmt(func.body)
            if not body.same_as(func.body):
                out.update_func(gv, func.with_body(body))
        return out

    return canonical


def reproducible_tar(output: str, files: list[str], **_options: object) -> None:
    """A drop-in for `tvm.support.tar.tar` (static libraries) whose bytes depend only on the members.

    TVM's runs `tar -czf`: member mtimes (the copy's time), owner names, directory listing order and
    the gzip header time change from one build to the next though every member is identical. Here:
    members sorted by name, mtime 0, uid/gid 0, no owner names, mode 0644, gzip header time 0.
    """
    import gzip
    import os
    import tarfile

    members: dict[str, str] = {}
    for path in files:
        base = os.path.basename(path)
        if base in members:
            raise ValueError(f"duplicate file name {base}")
        members[base] = path
    with open(output, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(members):
                info = tar.gettarinfo(members[name], arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with open(members[name], "rb") as f:
                    tar.addfile(info, f)


reproducible_tar.output_format = "tar"  # type: ignore[attr-defined]  (what export_library reads off tar.tar)
