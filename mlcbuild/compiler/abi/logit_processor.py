"""apply_logit_bias_inplace, apply_penalty_inplace, apply_bitmask_inplace (MLC's logit processor).

Argument shapes and semantics are MLC's (`compiler_pass/attach_logit_processor.py`):
- logit bias: logits[pos2seq_id[i], token_ids[i]] += logit_bias[i]
- penalty (penalties[s] = presence, frequency, repetition): subtract presence + count * frequency,
  then divide a positive logit by repetition (multiply a negative one)
- bitmask: a token whose bit in bitmask[seq_ids[s], v // 32] is 0 gets the lowest float32
The in-place update reads what it writes, so each block declares its reads without `logits`
(the schedule's dataflow check would refuse the thread binding otherwise). One difference, on purpose: an index outside its buffer (a token id ≥ vocab_size, a row past the
batch) is skipped instead of written out of bounds.
"""
from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

from mlcbuild.compiler.abi.threads import for_target

FUNCTIONS = ("apply_logit_bias_inplace", "apply_penalty_inplace", "apply_bitmask_inplace")


@T.prim_func(s_tir=True)
def _logit_bias(var_logits: T.handle, var_pos2seq_id: T.handle, var_token_ids: T.handle, var_logit_bias: T.handle) -> None:
    T.func_attr({"global_symbol": "apply_logit_bias_inplace", "tirx.noalias": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_token = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
    token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
    logit_bias = T.match_buffer(var_logit_bias, (num_token,), "float32")
    for i in T.serial(num_token):
        with T.sblock("bias"):
            vi = T.axis.spatial(num_token, i)
            T.reads(pos2seq_id[vi], token_ids[vi], logit_bias[vi])
            T.writes(logits[0:batch_size, 0:vocab_size])
            if 0 <= pos2seq_id[vi] and pos2seq_id[vi] < batch_size and 0 <= token_ids[vi] and token_ids[vi] < vocab_size:
                logits[pos2seq_id[vi], token_ids[vi]] = logits[pos2seq_id[vi], token_ids[vi]] + logit_bias[vi]


@T.prim_func(s_tir=True)
def _penalty(
    var_logits: T.handle,
    var_seq_ids: T.handle,
    var_pos2seq_id: T.handle,
    var_token_ids: T.handle,
    var_token_cnt: T.handle,
    var_penalties: T.handle,
) -> None:
    T.func_attr({"global_symbol": "apply_penalty_inplace", "tirx.noalias": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_token = T.int32()
    num_seq = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
    token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
    token_cnt = T.match_buffer(var_token_cnt, (num_token,), "int32")
    penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")
    for i in T.serial(num_token):
        with T.sblock("penalty"):
            vi = T.axis.spatial(num_token, i)
            T.reads(pos2seq_id[vi], token_ids[vi], token_cnt[vi], seq_ids[0:num_seq], penalties[0:num_seq, 0:3])
            T.writes(logits[0:batch_size, 0:vocab_size])
            if 0 <= pos2seq_id[vi] and pos2seq_id[vi] < num_seq and 0 <= token_ids[vi] and token_ids[vi] < vocab_size:
                if 0 <= seq_ids[pos2seq_id[vi]] and seq_ids[pos2seq_id[vi]] < batch_size:
                    logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] = logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] - (
                        penalties[pos2seq_id[vi], 0] + T.Cast("float32", token_cnt[vi]) * penalties[pos2seq_id[vi], 1]
                    )
                    logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] = T.if_then_else(
                        logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] < T.float32(0),
                        logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] * penalties[pos2seq_id[vi], 2],
                        logits[seq_ids[pos2seq_id[vi]], token_ids[vi]] / penalties[pos2seq_id[vi], 2],
                    )


@T.prim_func(s_tir=True)
def _bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle) -> None:
    T.func_attr({"global_symbol": "apply_bitmask_inplace", "tirx.noalias": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_seq = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    bitmask = T.match_buffer(var_bitmask, (batch_size, (vocab_size + 31) // 32), "int32")
    for s, v in T.grid(num_seq, vocab_size):
        with T.sblock("mask"):
            vs, vv = T.axis.remap("SS", [s, v])
            T.reads(seq_ids[vs], bitmask[0:batch_size, 0 : (vocab_size + 31) // 32])
            T.writes(logits[0:batch_size, vv])
            if 0 <= seq_ids[vs] and seq_ids[vs] < batch_size:
                logits[seq_ids[vs], vv] = T.if_then_else(
                    T.bitwise_and(T.shift_right(bitmask[seq_ids[vs], vv // 32], vv % 32), 1) == 1,
                    logits[seq_ids[vs], vv],
                    T.min_value("float32"),
                )


def attach(target: Any) -> Any:
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="AttachLogitProcessor")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        mod = mod.clone()
        mod["apply_logit_bias_inplace"] = for_target(_logit_bias, target, "bias")
        mod["apply_penalty_inplace"] = for_target(_penalty, target, "penalty")
        mod["apply_bitmask_inplace"] = for_target(_bitmask, target, "mask")
        return mod

    return run
