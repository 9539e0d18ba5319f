"""argsort_probs for WebGPU: a bitonic sort of each row, in place, any row length.

apache-tvm 0.27's GPU sort launches on blockIdx.z, which its WebGPU code generator refuses, and WebLLM
needs `argsort_probs`. This sort is the "flip" form of the bitonic network: every merge sorts in the
same direction, so a row of length v behaves as if padded with elements that sort last and never
move; pairs reaching past v are skipped. ceil(log2 v)·(ceil(log2 v)+1)/2 passes, each one kernel over
b·v threads. Order: descending probability, ties by ascending index (as a stable argsort).
The CPU form (the same passes as serial loops) exists so the tests can check the network on llvm.
"""
from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

THREADS = 256


@T.macro(hygienic=False)
def _compare_swap(values, indices, r, i, j, n):  # noqa: ANN001
    if j < n:
        if values[r, j] > values[r, i] or (values[r, j] == values[r, i] and indices[r, j] < indices[r, i]):
            kept_value = values[r, i]
            kept_index = indices[r, i]
            values[r, i] = values[r, j]
            indices[r, i] = indices[r, j]
            values[r, j] = kept_value
            indices[r, j] = kept_index


@T.macro(hygienic=False)
def _flip(values, indices, r, i, stage, n):  # noqa: ANN001
    """Merge of blocks of 2^(stage+1): element i (first half) against its mirror in the block."""
    if T.bitwise_and(i, T.shift_left(T.int64(1), stage)) == T.int64(0):
        _compare_swap(values, indices, r, i, i + T.shift_left(T.int64(2), stage) - T.int64(1) - T.bitwise_and(i, T.shift_left(T.int64(2), stage) - T.int64(1)) * T.int64(2), n)


@T.macro(hygienic=False)
def _clean(values, indices, r, i, dist, n):  # noqa: ANN001
    if T.bitwise_and(i, dist) == T.int64(0):
        _compare_swap(values, indices, r, i, i + dist, n)


@T.prim_func(private=True)
def _cpu(var_probs: T.handle, var_values: T.handle, var_indices: T.handle) -> None:
    T.func_attr({"tirx.noalias": True})
    batch_size = T.int64()
    vocab_size = T.int64()
    probs = T.match_buffer(var_probs, (batch_size, vocab_size), "float32")
    values = T.match_buffer(var_values, (batch_size, vocab_size), "float32")
    indices = T.match_buffer(var_indices, (batch_size, vocab_size), "int32")
    for r, i in T.grid(batch_size, vocab_size):
        values[r, i] = probs[r, i]
        indices[r, i] = T.Cast("int32", i)
    for stage in T.serial(T.Cast("int64", T.ceil(T.log2(T.Cast("float64", T.max(vocab_size, T.int64(1))))))):
        for r, i in T.grid(batch_size, vocab_size):
            _flip(values, indices, r, i, stage, vocab_size)
        for step in T.serial(stage):
            for r, i in T.grid(batch_size, vocab_size):
                _clean(values, indices, r, i, T.shift_left(T.int64(1), stage - T.int64(1) - step), vocab_size)


@T.prim_func(private=True)
def _gpu(var_probs: T.handle, var_values: T.handle, var_indices: T.handle) -> None:
    T.func_attr({"tirx.noalias": True})
    batch_size = T.int64()
    vocab_size = T.int64()
    probs = T.match_buffer(var_probs, (batch_size, vocab_size), "float32")
    values = T.match_buffer(var_values, (batch_size, vocab_size), "float32")
    indices = T.match_buffer(var_indices, (batch_size, vocab_size), "int32")
    blocks = T.meta_var((batch_size * vocab_size + THREADS - 1) // THREADS)
    for bx in T.thread_binding(blocks, thread="blockIdx.x"):
        for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
            if bx * THREADS + tx < batch_size * vocab_size:
                values[(bx * THREADS + tx) // vocab_size, (bx * THREADS + tx) % vocab_size] = probs[(bx * THREADS + tx) // vocab_size, (bx * THREADS + tx) % vocab_size]
                indices[(bx * THREADS + tx) // vocab_size, (bx * THREADS + tx) % vocab_size] = T.Cast("int32", (bx * THREADS + tx) % vocab_size)
    for stage in T.serial(T.Cast("int64", T.ceil(T.log2(T.Cast("float64", T.max(vocab_size, T.int64(1))))))):
        for bx in T.thread_binding(blocks, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                if bx * THREADS + tx < batch_size * vocab_size:
                    _flip(values, indices, (bx * THREADS + tx) // vocab_size, (bx * THREADS + tx) % vocab_size, stage, vocab_size)
        for step in T.serial(stage):
            for bx in T.thread_binding(blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                    if bx * THREADS + tx < batch_size * vocab_size:
                        _clean(
                            values, indices, (bx * THREADS + tx) // vocab_size, (bx * THREADS + tx) % vocab_size,
                            T.shift_left(T.int64(1), stage - T.int64(1) - step), vocab_size,
                        )


def bitonic_argsort(target: Any) -> Any:
    """The sort for `target`: one thread per element and pass on GPUs, serial loops on CPUs."""
    from mlcbuild.compiler.abi.threads import is_gpu

    return (_gpu if is_gpu(target) else _cpu).with_attr("tirx.is_scheduled", True)
