"""Tiny random Hugging Face models for tests (hidden 64, 2 layers), made with transformers on CPU torch.

    from tests.tiny_models import make_tiny_llama, make_tiny_gpt_neox, make_tiny_mistral, hf_logits
    path = make_tiny_llama(tmp_path / "llama", num_key_value_heads=2, tie_word_embeddings=True)

Each maker writes config.json + model.safetensors into `path` (or shards with
model.safetensors.index.json when `shards > 1`, or pytorch_model.bin when `fmt="bin"`) and returns
`path`. Keyword overrides go to the transformers config. Weights are seeded, so the same call gives
the same files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TINY_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def _save(model: Any, path: Path, shards: int, fmt: str, dtype: str) -> Path:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    config = model.config.to_dict()
    config["torch_dtype"] = dtype
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k not in ("lm_head.weight", "embed_out.weight")}
    names = sorted(state)
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
        return path
    from safetensors.torch import save_file

    if shards <= 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    groups = [names[i::shards] for i in range(shards)]
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in group}, str(path / fname), metadata={"format": "pt"})
        for k in group:
            weight_map[k] = fname
            total += state[k].numel() * state[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def _init(model: Any, seed: int, std: float) -> Any:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_tiny_gpt_neox(
    path: Path | str, *, seed: int = 0, shards: int = 1, fmt: str = "safetensors", dtype: str = "float32", std: float = 0.15, **overrides: Any
) -> Path:
    """Tiny GPTNeoXForCausalLM (rotary_pct 0.5, parallel residual unless overridden)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    kwargs = {**TINY_COMMON, "rotary_pct": 0.5, "use_parallel_residual": True, "tie_word_embeddings": False, **overrides}
    config = GPTNeoXConfig(**kwargs)
    config.architectures = ["GPTNeoXForCausalLM"]
    return _save(_init(GPTNeoXForCausalLM(config), seed, std), Path(path), shards, fmt, dtype)


def make_tiny_llama(
    path: Path | str, *, seed: int = 0, shards: int = 1, fmt: str = "safetensors", dtype: str = "float32", std: float = 0.15, **overrides: Any
) -> Path:
    """Tiny LlamaForCausalLM (GQA with 2 KV heads unless overridden)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = {**TINY_COMMON, "num_key_value_heads": 2, "rope_theta": 10000.0, **overrides}
    config = LlamaConfig(**kwargs)
    config.architectures = ["LlamaForCausalLM"]
    return _save(_init(LlamaForCausalLM(config), seed, std), Path(path), shards, fmt, dtype)


def make_tiny_mistral(
    path: Path | str, *, seed: int = 0, shards: int = 1, fmt: str = "safetensors", dtype: str = "float32", std: float = 0.15, **overrides: Any
) -> Path:
    """Tiny MistralForCausalLM (GQA, sliding_window 16 unless overridden)."""
    from transformers import MistralConfig, MistralForCausalLM

    kwargs = {**TINY_COMMON, "num_key_value_heads": 2, "sliding_window": 16, "head_dim": 16, **overrides}
    config = MistralConfig(**kwargs)
    config.architectures = ["MistralForCausalLM"]
    return _save(_init(MistralForCausalLM(config), seed, std), Path(path), shards, fmt, dtype)


def hf_logits(path: Path | str, input_ids: np.ndarray, quantization: str | None = None) -> np.ndarray:
    """float32 logits [seq, vocab] of the saved model on one sequence, computed by transformers.

    With `quantization`, weights are first replaced by what that scheme stores (quantized then
    dequantized, or rounded to the model dtype), so the result isolates compute error from
    quantization error.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if quantization is not None:
        _fake_quantize(model, Path(path), quantization)
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(input_ids, dtype=np.int64))[None])
    return out.logits[0].float().numpy()


def _fake_quantize(model: Any, path: Path, quantization: str) -> None:
    import torch

    from mlcbuild.models import MODELS, detect_model_type
    from mlcbuild.quantization import get_scheme
    from mlcbuild.quantization.numpy_quant import cast_weight, group_dequantize, group_quantize
    from mlcbuild.quantization.scheme import GroupQuantize

    hf = json.loads((path / "config.json").read_text())
    family = MODELS[detect_model_type(hf)]
    plan = family.weight_plan(family.config_from_hf(hf, {}), quantization)
    scheme = get_scheme(quantization)
    kinds = {n: p.kind for p in plan.params for n in p.hf_names}
    dtypes = {n: p.dtype for p in plan.params for n in p.hf_names}
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = p.detach().numpy()
            kind = kinds.get(plan.canonical(name), "other")
            stored = dtypes.get(plan.canonical(name))
            if isinstance(scheme, GroupQuantize) and kind in ("linear", "embedding"):
                q, s = group_quantize(cast_weight(w, scheme), scheme)
                new = group_dequantize(q, s, w.shape[1], scheme)
            elif stored is not None:
                new = w.astype(stored).astype(np.float32)
            else:
                new = cast_weight(w, scheme).astype(np.float32)
            p.copy_(torch.from_numpy(np.ascontiguousarray(new)))


def compile_llvm(src: Path, quantization: str) -> tuple[Any, list[Any], Any]:
    """Convert the checkpoint at `src` beside it and compile its family's nn module for llvm with
    TVM's default pipeline (the model's own functions, no MLC ABI): (VirtualMachine, parameters in
    the module's order, model config). One call per (checkpoint, quantization): tests cache it."""
    import tvm
    from tvm import relax

    from mlcbuild.artifact.tensor_cache import load_tensor_cache
    from mlcbuild.models import MODELS, detect_model_type
    from mlcbuild.steps.convert import convert_checkpoint

    src = Path(src)
    out = src.parent / f"{src.name}-{quantization}"
    out.mkdir(exist_ok=True)
    convert_checkpoint(src, out, quantization)
    weights = load_tensor_cache(out)
    hf = json.loads((src / "config.json").read_text())
    family = MODELS[detect_model_type(hf)]
    cfg = family.config_from_hf(hf, {})
    target = tvm.target.Target("llvm")
    with target:
        model = family.create_model(cfg, quantization)
        mod, named = model.export_tvm(spec=model.get_default_spec())
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return vm, [tvm.runtime.tensor(weights[name]) for name, _ in named], cfg
