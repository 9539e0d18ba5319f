"""softmax_with_temperature(logits [b, 1, v] f32, temperature [b] f32) -> probs [b, 1, v] f32.

MLC's semantics (`compiler_pass/attach_softmax_with_temperature.py`): a row whose temperature is
≤ 1e-5 is greedy, its probabilities a one-hot on the argmax (split evenly between ties), so a
runtime that clamps temperature 0 to a tiny value (WebLLM uses 1e-6) still decodes greedily; tokens
at or past `active_vocab_size` (the tokenizer's real size, below a padded vocab_size) get 0.
"""
from __future__ import annotations

from typing import Any

FUNCTIONS = ("softmax_with_temperature",)
GREEDY_BELOW = 1e-5


def _softmax_te(logits: Any, temperature: Any, active_vocab_size: int | None) -> Any:
    from tvm import te, tirx

    b, _, v = logits.shape
    limit = v if active_vocab_size is None else tirx.min(v, tirx.const(active_vocab_size, "int64"))
    lowest = tirx.min_value("float32")
    hot = lambda i: temperature[i] > tirx.const(GREEDY_BELOW, "float32")  # noqa: E731
    scaled = te.compute(
        (b, v),
        lambda i, j: tirx.if_then_else(
            j < limit, tirx.if_then_else(hot(i), logits[i, 0, j] / temperature[i], logits[i, 0, j]), lowest
        ),
        name="scaled_logits",
    )
    k = te.reduce_axis((0, v), name="k")
    peak = te.compute((b,), lambda i: te.max(scaled[i, k], axis=k), name="row_max")
    weight = te.compute(
        (b, v),
        lambda i, j: tirx.if_then_else(
            j < limit,
            tirx.if_then_else(hot(i), tirx.exp(scaled[i, j] - peak[i]), (scaled[i, j] == peak[i]).astype("float32")),
            tirx.const(0, "float32"),
        ),
        name="row_weight",
    )
    k2 = te.reduce_axis((0, v), name="k2")
    total = te.compute((b,), lambda i: te.sum(weight[i, k2], axis=k2), name="row_sum")
    return te.compute((b, 1, v), lambda i, _, j: weight[i, j] / total[i], name="softmax_with_temperature")


def attach(active_vocab_size: int | None) -> Any:
    import tvm
    from tvm import relax, tirx

    @tvm.transform.module_pass(opt_level=0, name="AttachSoftmaxWithTemperature")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        batch_size = tirx.Var("batch_size", "int64")
        vocab_size = tirx.Var("vocab_size", "int64")
        logits = relax.Var("logits", relax.TensorType([batch_size, 1, vocab_size], "float32"))
        temperature = relax.Var("temperature", relax.TensorType([batch_size], "float32"))
        with bb.function("softmax_with_temperature", [logits, temperature]):
            with bb.dataflow():
                probs = bb.emit_te(_softmax_te, logits, temperature, active_vocab_size, primfunc_name_hint="temperature_softmax")
                out = bb.emit_output(probs)
            bb.emit_func_output(out)
        return bb.finalize()

    return run
