"""convert: an HF checkpoint folder → MLC tensor cache in one quantization.

Everything that can be checked from headers (missing, unexpected, mis-shaped tensors) is checked
before any data is read; tensors are then streamed one parameter at a time into a staging folder
that is renamed into place only when the whole cache is written.
"""
from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.artifact.names import SHARD_PREFIX, TENSOR_CACHE
from mlcbuild.errors import StepError
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.store.manifest import Manifest

_STAGING = ".convert-partial"
BASE_MEMORY = 512 * 2**20


class ConvertStep(Step):
    kind = "convert"
    version = "convert-2"  # 2: GPT-NeoX MLP biases in ffn_out_dtype (float32), as MLC stores them

    def check(self, params: Mapping[str, JSON]) -> None:
        from mlcbuild.models import get_family
        from mlcbuild.quantization import get_scheme

        get_scheme(str(params.get("quantization")))
        if params.get("model_type") is not None:
            get_family(str(params["model_type"]))

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        return {"quantization": params.get("quantization")}

    def resources(self, params: Mapping[str, JSON], inputs: Mapping[str, Manifest]) -> dict[str, float]:
        """One CPU; memory for the largest source file twice over (tensors stream one at a time) plus the interpreter."""
        source = inputs.get("source")
        largest = max((e.size for e in source.files.values()), default=0) if source else 0
        return {"CPU": 1, "memory": float(BASE_MEMORY + 2 * largest)}

    def view(self, role: str, manifest: Manifest, read: Callable[[str], bytes]) -> JSON:
        """Weights and config.json only: a new tokenizer or generation_config re-converts nothing."""
        from mlcbuild.weights.model_files import is_weight_file

        return {p: e.digest for p, e in sorted(manifest.files.items()) if is_weight_file(p) or p == "config.json"}

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        """The shards and their index, as `TensorCacheWriter` names them."""
        return rel == TENSOR_CACHE or re.fullmatch(rf"{SHARD_PREFIX}_[0-9]+\.bin", rel) is not None

    def run(self, ctx: RunContext) -> None:
        convert_checkpoint(
            Path(ctx.inputs["source"]),
            Path(ctx.out),
            str(ctx.params["quantization"]),
            ctx.params.get("model_type"),
            progress=ctx.progress,
        )


def convert_checkpoint(
    source: Path,
    out: Path,
    quantization: str,
    model_type: str | None = None,
    progress: Any = lambda fraction, message: None,
) -> dict[str, Any]:
    """Convert and return the tensor-cache metadata; raises StepError/UserError with one line."""
    from mlcbuild.models import detect_model_type, get_family
    from mlcbuild.quantization import get_scheme
    from mlcbuild.weights.hf_source import HFCheckpoint
    from mlcbuild.weights.tensor_cache import TensorCacheWriter

    from mlcbuild.inputs import read_json, step_error

    config_path = source / "config.json"
    if not config_path.exists():
        raise StepError("no config.json in the model folder")
    hf_config = read_json(config_path, "config.json", error=step_error)
    family = get_family(model_type or detect_model_type(hf_config))
    get_scheme(quantization)
    cfg = family.config_from_hf(hf_config, {})
    plan = family.weight_plan(cfg, quantization)
    ckpt = HFCheckpoint.open(source)
    ckpt.tensors = _canonical_names(plan, ckpt.tensors)
    _check_names_and_shapes(plan, ckpt)

    staging = out / _STAGING
    if staging.exists():
        shutil.rmtree(staging)
    writer = TensorCacheWriter(staging, background=True)
    try:
        total = len(plan.params)
        for idx, p in enumerate(plan.params):
            arrays = [ckpt.read(n) for n in p.hf_names]
            try:
                outputs = plan.produce(p, arrays)
            except ValueError as exc:
                raise StepError(f"tensor {p.hf_names[0]}: {exc}") from None
            del arrays
            for name, arr in outputs:
                writer.add(name, arr)
            del outputs
            progress((idx + 1) / total, p.name)
        bits = writer.total_bytes * 8.0 / max(plan.source_param_count(), 1)
        metadata = {"ParamSize": len(plan.all_outputs()), "ParamBytes": writer.total_bytes, "BitsPerParam": bits}
        writer.finish(metadata)
        for f in sorted(staging.iterdir()):
            f.rename(out / f.name)
        staging.rmdir()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        ckpt.close()
    return metadata


def _canonical_names(plan: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in tensors.items():
        canon = plan.canonical(name)
        if canon in out:
            raise StepError(f"tensor {canon} appears twice in the checkpoint (also as {name})")
        out[canon] = info
    return out


def _check_names_and_shapes(plan: Any, ckpt: Any) -> None:
    expected: dict[str, tuple[int, ...]] = plan.hf_shapes()
    available = ckpt.tensors
    for name in expected:
        if name not in available:
            raise StepError(f"missing tensor {name} in the checkpoint")
    for name in sorted(available):
        if name not in expected and not plan.ignored(name):
            raise StepError(f"unexpected tensor {name} in the checkpoint (not part of this model_type)")
    for name, shape in expected.items():
        got = tuple(available[name].shape)
        if got != tuple(shape):
            raise StepError(f"tensor {name} has shape {list(got)}, config.json implies {list(shape)}")


__all__ = ["ConvertStep", "convert_checkpoint"]
