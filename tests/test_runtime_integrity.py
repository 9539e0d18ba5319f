"""Runtime integrity: a tampered, truncated, swapped or escaping artifact is refused with one line.

Each test copies the session's tiny converted llama (q0f32) and breaks one thing. Most check the
model folder the way a run opens it before touching TVM (`open_model_folder`, no compile); the
`slow` ones load the compiled library too (`Engine.load`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mlcbuild.artifact import CHAT_CONFIG, TENSOR_CACHE, ChatConfig
from mlcbuild.artifact.tensor_cache import TensorCacheIndex
from mlcbuild.errors import UserError
from mlcbuild.runtime.loader import open_model_folder


@pytest.fixture(autouse=True)
def _private_verified_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def built(compiled_model):
    return compiled_model("llama", "q0f32")


@pytest.fixture
def model(compiled_model, tmp_path: Path) -> Path:
    return Path(shutil.copytree(compiled_model.model_dir("llama", "q0f32"), tmp_path / "model"))


def _load(built, model: Path):
    from mlcbuild.runtime.engine import Engine

    return Engine.load(model, built.lib)


def _refused(model: Path, *needles: str, built=None) -> str:
    with pytest.raises(UserError) as info:
        _load(built, model) if built is not None else open_model_folder(model)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _edit_cache(model: Path, edit) -> None:
    path = model / TENSOR_CACHE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _first_shard(model: Path) -> Path:
    return model / json.loads((model / TENSOR_CACHE).read_text())["records"][0]["dataPath"]


@pytest.mark.slow
def test_intact_copy_loads(built, model: Path) -> None:
    engine = _load(built, model)
    assert engine.chat_config.quantization == "q0f32"


@pytest.mark.slow
def test_flipped_bytes_fail_the_md5_check(built, model: Path) -> None:
    shard = _first_shard(model)
    data = bytearray(shard.read_bytes())
    for i in (100, 101, 102, 103):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    _refused(model, shard.name, "md5", "does not match", built=built)


def test_verified_shards_are_trusted_by_stat_until_they_change(model: Path, monkeypatch) -> None:
    import mlcbuild.store.hashing as hashing

    shard = _first_shard(model)
    past = shard.stat().st_mtime_ns - 60 * 10**9
    os.utime(shard, ns=(past, past))
    calls: list[Path] = []
    real = hashing.md5_file
    monkeypatch.setattr(hashing, "md5_file", lambda p: calls.append(Path(p)) or real(p))
    open_model_folder(model)
    assert len(calls) == 1
    open_model_folder(model)
    assert len(calls) == 1, "a verified, unchanged shard was hashed again"
    data = bytearray(shard.read_bytes())
    data[7] ^= 1
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(past, past))
    _refused(model, "md5")
    assert len(calls) == 2


def test_truncated_shard(model: Path) -> None:
    shard = _first_shard(model)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 10)
    _refused(model, shard.name, "truncated")


@pytest.mark.parametrize("data_path", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_data_path_outside_the_folder(model: Path, data_path: str) -> None:
    shutil.copy(_first_shard(model), model.parent / "outside.bin")
    _edit_cache(model, lambda d: d["records"][0].update(dataPath=data_path))
    _refused(model, TENSOR_CACHE, "dataPath", "outside the model folder")


def test_symlinked_shard_escaping_the_folder(model: Path) -> None:
    shard = _first_shard(model)
    outside = model.parent / "elsewhere.bin"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    _refused(model, TENSOR_CACHE, "outside the model folder")


def test_record_without_name(model: Path) -> None:
    _edit_cache(model, lambda d: d["records"][0]["records"][0].pop("name"))
    _refused(model, TENSOR_CACHE, "records[0].records[0].name")


def test_byte_range_past_the_shard_end(model: Path) -> None:
    def edit(d):
        shard = d["records"][0]
        shard["records"][-1]["byteOffset"] = shard["nbytes"] - shard["records"][-1]["nbytes"] + 4

    _edit_cache(model, edit)
    _refused(model, TENSOR_CACHE, "byteOffset", "past the end")


def test_shard_swapped_in_from_another_quantization(compiled_model, model: Path) -> None:
    other = compiled_model.model_dir("llama", "q4f16_1")
    shard = _first_shard(model)
    shutil.copy(other / shard.name, shard)
    _refused(model, shard.name)
    with open(shard, "r+b") as f:
        f.truncate(TensorCacheIndex.read(model).shards[0].nbytes)
    _refused(model, shard.name, "md5")


@pytest.mark.slow
def test_whole_weights_from_another_quantization(built, compiled_model, model: Path) -> None:
    other = compiled_model.model_dir("llama", "q4f16_1")
    for p in model.glob("params_shard_*.bin"):
        p.unlink()
    for p in other.glob("params_shard_*.bin"):
        shutil.copy(p, model / p.name)
    shutil.copy(other / TENSOR_CACHE, model / TENSOR_CACHE)
    _refused(model, TENSOR_CACHE, "library quantization 'q0f32'", built=built)


@pytest.mark.parametrize(
    "content, needles",
    [
        (b"{not json", ("not valid JSON",)),
        (b"\xff\xfe\x00garbage", ("not UTF-8",)),
        (b"[1, 2]", ("must hold a JSON object",)),
        (b"", ("not valid JSON",)),
    ],
    ids=["syntax", "binary", "list", "empty"],
)
def test_garbage_chat_config(model: Path, content: bytes, needles: tuple[str, ...]) -> None:
    (model / CHAT_CONFIG).write_bytes(content)
    _refused(model, CHAT_CONFIG, *needles)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("temperature", float("nan"), "temperature: NaN and infinities are not allowed"),
        ("top_p", 1.5, "top_p: must be in (0, 1] (got 1.5)"),
        ("model_config", "llama", "model_config: must be a JSON object"),
        ("quantization", None, "quantization: missing"),
        ("eos_token_id", "two", "eos_token_id: must be an integer or a list of integers"),
        ("context_window_size", "big", "context_window_size: must be an integer"),
        ("tokenizer_info", {"token_postproc_method": "rot13"}, "tokenizer_info.token_postproc_method: must be"),
    ],
    ids=lambda v: v if isinstance(v, str) and "_" in v else None,
)
def test_bad_chat_config_field_is_named(model: Path, field: str, value, needle: str) -> None:
    path = model / CHAT_CONFIG
    data = json.loads(path.read_text())
    if value is None:
        data.pop(field)
    else:
        data[field] = value
    path.write_text(json.dumps(data))
    _refused(model, f"{CHAT_CONFIG}: {needle}")


def test_garbage_tokenizer_json(model: Path) -> None:
    (model / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    _refused(model, "tokenizer.json", "not a valid tokenizer")


def test_fifo_tokenizer_is_refused_not_read(model: Path) -> None:
    (model / "tokenizer.json").unlink(missing_ok=True)
    os.mkfifo(model / "tokenizer.json")
    _refused(model, "tokenizer.json", "not a regular file")


def test_chat_config_round_trips_the_bytes_gen_config_wrote(model: Path) -> None:
    raw = (model / CHAT_CONFIG).read_bytes()
    assert ChatConfig.loads(raw, CHAT_CONFIG).dumps() == raw
