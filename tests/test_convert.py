"""convert: HF checkpoints (single/sharded safetensors, .bin) → MLC tensor cache; format fidelity
with tvm.contrib.tvmjs, determinism, and one-line errors that leave nothing behind."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mlcbuild.artifact.tensor_cache import load_tensor_cache
from mlcbuild.errors import StepError
from mlcbuild.steps.base import RunContext
from mlcbuild.steps.convert import ConvertStep, convert_checkpoint
from mlcbuild.weights.tensor_cache import TensorCacheWriter

try:
    from tiny_models import make_tiny_gpt_neox, make_tiny_llama
except ImportError:
    from tests.tiny_models import make_tiny_gpt_neox, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("conv") / "llama", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt_neox(tmp_path_factory.mktemp("conv") / "neox")


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _convert(source: Path, out: Path, quantization: str, model_type: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ConvertStep().run(RunContext(params={"quantization": quantization, "model_type": model_type}, inputs={"source": source}, out=out))
    return out


@pytest.mark.parametrize("background", [False, True])
def test_writer_matches_tvmjs_dump_tensor_cache_byte_for_byte(tmp_path: Path, background: bool) -> None:
    from tvm.contrib import tvmjs

    rng = np.random.default_rng(0)
    arrays = [
        ("a", rng.standard_normal((3, 5)).astype(np.float16)),
        ("big", rng.integers(0, 2**32, (1 << 20) // 4 * 3, dtype=np.uint32)),
        ("b", rng.standard_normal((1000, 100)).astype(np.float32)),
        ("c", rng.standard_normal((7,)).astype(np.float16)),
    ]
    meta = {"ParamSize": 4, "ParamBytes": 123, "BitsPerParam": 4.5}
    ours = TensorCacheWriter(tmp_path / "ours", shard_cap_bytes=2 << 20, background=background)
    for name, arr in arrays:
        ours.add(name, arr)
    ours.finish(meta)
    tvmjs.dump_tensor_cache(iter(arrays), str(tmp_path / "tvm"), encode_format="raw", meta_data=meta, shard_cap_mb=2, show_progress=False)
    assert _files(tmp_path / "ours") == _files(tmp_path / "tvm")
    assert len(json.loads((tmp_path / "ours" / "tensor-cache.json").read_text())["records"]) > 1


def test_default_shards_are_capped_at_32_mib(tmp_path: Path) -> None:
    writer = TensorCacheWriter(tmp_path)
    for i in range(5):
        writer.add(f"w{i}", np.zeros((3 << 20,), np.float32))
    writer.finish({})
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("params_shard_*.bin"))]
    assert len(sizes) == 3 and max(sizes) <= 32 << 20


def test_llama_q0f32_is_exact_and_fused(tiny_llama: Path, tmp_path: Path) -> None:
    out = _convert(tiny_llama, tmp_path / "out", "q0f32")
    params = load_tensor_cache(out, verify_md5=True)
    hf = _hf_tensors(tiny_llama)
    a = "model.layers.1.self_attn"
    np.testing.assert_array_equal(
        params[f"{a}.qkv_proj.weight"], np.concatenate([hf[f"{a}.q_proj.weight"], hf[f"{a}.k_proj.weight"], hf[f"{a}.v_proj.weight"]])
    )
    assert params[f"{a}.qkv_proj.weight"].shape == ((4 + 2 * 2) * 16, 64)
    m = "model.layers.0.mlp"
    np.testing.assert_array_equal(params[f"{m}.gate_up_proj.weight"], np.concatenate([hf[f"{m}.gate_proj.weight"], hf[f"{m}.up_proj.weight"]]))
    np.testing.assert_array_equal(params["model.embed_tokens.weight"], hf["model.embed_tokens.weight"])
    assert "lm_head.weight" not in params
    info = json.loads((out / "tensor-cache.json").read_text())
    assert info["metadata"]["ParamSize"] == len(params) and info["metadata"]["BitsPerParam"] == 32.0
    assert sorted(p.name for p in out.iterdir()) == ["params_shard_0.bin", "tensor-cache.json"]


def test_gpt_neox_qkv_is_regrouped_per_head(tiny_neox: Path, tmp_path: Path) -> None:
    params = load_tensor_cache(_convert(tiny_neox, tmp_path / "out", "q0f32"))
    hf = _hf_tensors(tiny_neox)
    name = "gpt_neox.layers.0.attention.query_key_value"
    w, b = hf[f"{name}.weight"], hf[f"{name}.bias"]
    heads, d = 4, 16
    q = np.concatenate([w[h * 3 * d : h * 3 * d + d] for h in range(heads)])
    k = np.concatenate([w[h * 3 * d + d : h * 3 * d + 2 * d] for h in range(heads)])
    v = np.concatenate([w[h * 3 * d + 2 * d : h * 3 * d + 3 * d] for h in range(heads)])
    np.testing.assert_array_equal(params[f"{name}.weight"], np.concatenate([q, k, v]))
    bq = np.concatenate([b[h * 3 * d : h * 3 * d + d] for h in range(heads)])
    np.testing.assert_array_equal(params[f"{name}.bias"][: heads * d], bq)
    np.testing.assert_array_equal(params["embed_out.weight"], hf["lm_head.weight"])


def test_q4f16_1_round_trip_and_shapes(tiny_llama: Path, tmp_path: Path) -> None:
    from mlcbuild.quantization import SCHEMES
    from mlcbuild.quantization.numpy_quant import group_dequantize

    params = load_tensor_cache(_convert(tiny_llama, tmp_path / "out", "q4f16_1"))
    hf = _hf_tensors(tiny_llama)
    scheme = SCHEMES["q4f16_1"]
    name = "model.layers.0.self_attn.o_proj"
    qw, qs = params[f"{name}.q_weight"], params[f"{name}.q_scale"]
    assert qw.dtype == np.uint32 and qw.shape == (64, 64 // 8)
    assert qs.dtype == np.float16 and qs.shape == (64, 64 // 32)
    w = hf[f"{name}.weight"].astype(np.float16).astype(np.float32)
    back = group_dequantize(qw, qs, 64, scheme)
    assert np.all(np.abs(back - w) <= np.repeat(qs.astype(np.float32), 32, axis=1) * 0.501)
    assert params["model.layers.0.input_layernorm.weight"].dtype == np.float16


def test_sharded_and_bin_checkpoints_give_identical_bytes(tmp_path: Path) -> None:
    single = make_tiny_llama(tmp_path / "single", seed=3)
    sharded = make_tiny_llama(tmp_path / "sharded", seed=3, shards=3)
    pt_bin = make_tiny_llama(tmp_path / "bin", seed=3, fmt="bin")
    assert (sharded / "model.safetensors.index.json").exists()
    ref = _files(_convert(single, tmp_path / "o1", "q4f16_1"))
    assert _files(_convert(sharded, tmp_path / "o2", "q4f16_1")) == ref
    assert _files(_convert(pt_bin, tmp_path / "o3", "q4f16_1")) == ref
    again = _files(_convert(single, tmp_path / "o4", "q4f16_1"))
    assert again == ref


def test_bfloat16_checkpoint_quantizes_like_its_float16_cast(tmp_path: Path) -> None:
    bf16 = make_tiny_gpt_neox(tmp_path / "bf16", dtype="bfloat16", seed=4)
    params = load_tensor_cache(_convert(bf16, tmp_path / "out", "q3f16_1"))
    assert params["embed_out.q_weight"].shape == (256, 8) and params["embed_out.q_scale"].shape == (256, 2)
    assert params["gpt_neox.final_layer_norm.weight"].dtype == np.float16


def test_tvm_loaders_read_the_cache(tiny_neox: Path, tmp_path: Path) -> None:
    import tvm
    from tvm.contrib import tvmjs

    out = _convert(tiny_neox, tmp_path / "out", "q4f16_1")
    ours = load_tensor_cache(out)
    theirs = tvmjs.load_tensor_cache(str(out), tvm.cpu())[0]
    assert set(theirs) == set(ours)
    assert ours["gpt_neox.layers.0.mlp.dense_4h_to_h.bias"].dtype == np.float32
    assert ours["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"].dtype == np.float32  # MLC: both MLP biases in ffn_out_dtype
    for name, arr in ours.items():
        np.testing.assert_array_equal(theirs[name].numpy(), arr)
    tvm.get_global_func("vm.builtin.tensor_cache.load")(str(out), tvm.cpu().dlpack_device_type(), 0)
    try:
        for name, arr in ours.items():
            np.testing.assert_array_equal(tvm.get_global_func("vm.builtin.tensor_cache.get")(name).numpy(), arr)
    finally:
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()


def _copy_with_state(src: Path, dst: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), "missing tensor model.layers.1.mlp.up_proj.weight"),
        (lambda s: s.__setitem__("model.layers.0.extra.weight", np.zeros(3, np.float32)), "unexpected tensor model.layers.0.extra.weight"),
        (
            lambda s: s.__setitem__("model.layers.0.self_attn.k_proj.weight", np.zeros((16, 64), np.float32)),
            "tensor model.layers.0.self_attn.k_proj.weight has shape [16, 64], config.json implies [32, 64]",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_checkpoint_fails_with_one_line_and_leaves_nothing(tiny_llama: Path, tmp_path: Path, edit, message: str) -> None:
    bad = _copy_with_state(tiny_llama, tmp_path / "bad", edit)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StepError) as err:
        _convert(bad, out, "q4f16_1")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(out.iterdir()) == []


def test_failure_midway_removes_partial_output(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcbuild.weights import plan

    calls = {"n": 0}
    real = plan.WeightPlan.produce

    def flaky(self, p, arrays):
        calls["n"] += 1
        if calls["n"] == 5:
            raise StepError("boom")
        return real(self, p, arrays)

    monkeypatch.setattr(plan.WeightPlan, "produce", flaky)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StepError, match="boom"):
        convert_checkpoint(tiny_llama, out, "q0f32")
    assert list(out.iterdir()) == []


def test_bin_without_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                                 "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 32,
                                                 "max_position_embeddings": 64}))
    (src / "pytorch_model.bin").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StepError, match=r"pip install mlcbuild\[torch\]"):
        convert_checkpoint(src, out, "q0f32")


def test_unknown_model_type_and_quantization_are_user_errors(tiny_llama: Path) -> None:
    from mlcbuild.errors import UserError

    with pytest.raises(UserError, match="q4f16_1"):
        ConvertStep().check({"quantization": "q9", "model_type": None})
    with pytest.raises(UserError, match="gpt_neox, llama"):
        ConvertStep().check({"quantization": "q0f16", "model_type": "bert"})
