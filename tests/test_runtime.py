"""Runtime: weight checks, sampling, generation over a compiled tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlcbuild.artifact import ChatConfig
from mlcbuild.recipe.model import TargetRef
from mlcbuild.runtime import SamplingParams, TensorCacheIndex, WeightsMismatchError, check_weights
from mlcbuild.runtime.sampling import sample_from_probs

META = {
    "model_type": "llama",
    "quantization": "q4f16_1",
    "params": [
        {"name": "a.q_weight", "shape": [8, 2], "dtype": "uint32"},
        {"name": "a.q_scale", "shape": [8, 1], "dtype": "float16"},
    ],
}


def _cache(tmp_path: Path, records: list[dict], metadata: dict | None = None) -> TensorCacheIndex:
    recs, offset = [], 0
    for r in records:
        nbytes = int(np.prod(r["shape"])) * np.dtype(r["dtype"]).itemsize
        recs.append({"format": "raw", "byteOffset": offset, "nbytes": nbytes, **r})
        offset += nbytes
    shard = {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": offset, "records": recs}
    data = {"metadata": metadata or {}, "records": [shard]}
    (tmp_path / "tensor-cache.json").write_text(json.dumps(data))
    return TensorCacheIndex.read(tmp_path)


def _config(model_type: str, quantization: str) -> ChatConfig:
    return ChatConfig(model_type=model_type, quantization=quantization, model_config={})


def test_matching_weights_pass(tmp_path: Path) -> None:
    check_weights(META, _cache(tmp_path, [dict(p) for p in META["params"]]), _config("llama", "q4f16_1"))


def test_missing_parameter_is_named(tmp_path: Path) -> None:
    index = _cache(tmp_path, [{"name": "a.weight", "shape": [8, 16], "dtype": "float16"}])
    with pytest.raises(WeightsMismatchError, match=r"'a\.q_weight' \(uint32\[8, 2\]\) is missing") as info:
        check_weights(META, index)
    assert "q4f16_1" in str(info.value) and "\n" not in str(info.value)


def test_dtype_mismatch_is_named(tmp_path: Path) -> None:
    records = [dict(META["params"][0]), {**META["params"][1], "dtype": "float32"}]
    with pytest.raises(WeightsMismatchError, match=r"'a\.q_scale' is float32\[8, 1\] .* expects float16\[8, 1\]"):
        check_weights(META, _cache(tmp_path, records))


def test_extra_parameter_is_named(tmp_path: Path) -> None:
    records = [dict(p) for p in META["params"]] + [{"name": "b.bias", "shape": [8], "dtype": "float16"}]
    with pytest.raises(WeightsMismatchError, match=r"'b\.bias' that the library does not take"):
        check_weights(META, _cache(tmp_path, records))


def test_config_and_cache_quantization_are_checked(tmp_path: Path) -> None:
    index = _cache(tmp_path, [dict(p) for p in META["params"]], {"quantization": "q3f16_1"})
    with pytest.raises(WeightsMismatchError, match="quantized as 'q3f16_1'"):
        check_weights(META, index)
    with pytest.raises(WeightsMismatchError, match="model_type='gpt_neox'"):
        check_weights(META, _cache(tmp_path, [dict(p) for p in META["params"]]), _config("gpt_neox", "q4f16_1"))


def test_top_p_keeps_the_nucleus() -> None:
    rng = np.random.default_rng(0)
    probs = np.array([0.6, 0.3, 0.1])
    assert {sample_from_probs(probs, 0.5, rng.random()) for _ in range(50)} == {0}
    assert {sample_from_probs(probs, 0.8, rng.random()) for _ in range(200)} == {0, 1}
    draws = [sample_from_probs(probs, 1.0, rng.random()) for _ in range(3000)]
    assert abs(np.mean(np.array(draws) == 2) - 0.1) < 0.03
    assert sample_from_probs(np.zeros(4), 0.9, 0.5) == 0
    assert [sample_from_probs(probs, 1.0, u) for u in (0.0, 0.59, 0.61, 0.89, 0.91, 0.999)] == [0, 0, 1, 1, 2, 2]


def _word_tokenizer(folder: Path, vocab: int = 256) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.slow
def test_greedy_generation_follows_logits(compiled_model) -> None:
    from mlcbuild.runtime.engine import Engine

    built = compiled_model("llama", "q0f32")
    engine = Engine.load(built.model_dir, built.lib)
    prompt = [5, 17, 99, 3]
    tokens = list(engine.generate_tokens(prompt, 8, SamplingParams(temperature=0.0), stop=False))
    assert len(tokens) == 8
    logits = engine.logits_for(prompt, tokens[:-1])
    assert tokens == [int(t) for t in logits.argmax(-1)]


@pytest.mark.slow
def test_temperature_sampling_is_seeded_and_uses_library_softmax(compiled_model) -> None:
    from mlcbuild.runtime.engine import Engine

    built = compiled_model("llama", "q0f32")
    engine = Engine.load(built.model_dir, built.lib)
    logits = engine.logits_for([1, 2, 3])[0]
    probs = engine._probs(logits, 0.7)
    expected = np.exp((logits - logits.max()) / 0.7)
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-4, atol=1e-6)
    sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=3)
    first = list(engine.generate_tokens([1, 2, 3], 6, sampling, stop=False))
    assert first == list(engine.generate_tokens([1, 2, 3], 6, sampling, stop=False))
    assert all(0 <= t < 256 for t in first)


@pytest.mark.slow
def test_run_recipe_generates_text_from_build_outputs(compiled_model, tmp_path: Path) -> None:
    from mlcbuild.runtime import run_recipe

    built = compiled_model("llama", "q0f32")
    out = tmp_path / "dist"
    model_dir = out / "tiny-q0f32-MLC"
    shutil.copytree(built.model_dir, model_dir)
    _word_tokenizer(model_dir)
    (out / "libs").mkdir()
    shutil.copy(built.lib, out / "libs" / "tiny-q0f32-llvm-x86_64.so")
    recipe = SimpleNamespace(
        name="tiny", quantizations=("q0f32",), targets=(TargetRef("llvm"),), output=out, path=tmp_path / "tiny.yaml"
    )
    text = run_recipe(recipe, "w5 w17 w99", max_tokens=5, temperature=0.0)
    words = text.split()
    assert 1 <= len(words) <= 5 and all(w.startswith("w") for w in words)
