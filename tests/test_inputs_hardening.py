"""Inputs that escape or exhaust, and failing well: one regression test (or a few) per class.

Every case must end in one line naming the user's file (and field, where there is one); nothing
may hang, read without bound, follow a link out of the model folder, or print a credential.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcbuild.errors import MlcbuildError, StepError, UserError, redact
from mlcbuild.recipe import load_recipe
from mlcbuild.steps.base import RunContext
from mlcbuild.steps.download import DownloadStep
from mlcbuild.weights.model_files import local_model_files

REPO = Path(__file__).resolve().parent.parent

CONFIG = {
    "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 128,
    "rotary_pct": 0.25, "layer_norm_eps": 1e-5,
}
TOKENIZER = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
RECIPE = "source:\n  path: model\nquantizations: [q0f32]\ntargets: [llvm]\nconv_template: chatml\n"


def safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD_WEIGHTS = safetensors({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))


def model_folder(root: Path, **files: bytes | str) -> Path:
    """A small but real HF model folder (valid config, tokenizer, safetensors), with `files` replaced."""
    root.mkdir(parents=True, exist_ok=True)
    contents: dict[str, bytes | str] = {
        "config.json": json.dumps(CONFIG), "tokenizer.json": json.dumps(TOKENIZER), "model.safetensors": GOOD_WEIGHTS,
    }
    contents.update({name.replace("__", "."): data for name, data in files.items()})
    for name, data in contents.items():
        (root / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def download_local(folder: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    DownloadStep().run(RunContext(params={"path": str(folder), "files": local_model_files(folder)}, inputs={}, out=out))


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def mlcbuild(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=full,
                          cwd=cwd or REPO, timeout=timeout)


# --- symlinks and index paths that leave the model folder ---------------------------------------

def test_symlink_out_of_the_model_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('{"password": "hunter2"}')
    folder = model_folder(tmp_path / "model")
    (folder / "special_tokens_map.json").symlink_to(secret)
    with pytest.raises(UserError) as info:
        local_model_files(folder)
    message = one_line(info.value)
    assert f"{folder / 'special_tokens_map.json'} is a symlink to {secret}, outside the model folder" in message
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    cache = tmp_path / "cache"
    result = mlcbuild("build", str(tmp_path / "recipe.yaml"), env={"MLCBUILD_CACHE_DIR": str(cache)})
    assert result.returncode == 2 and "outside the model folder" in result.stderr, result.stderr
    assert not any("hunter2" in p.read_text(errors="replace") for p in cache.rglob("*") if p.is_file())


def test_symlinks_inside_the_folder_and_into_hf_blobs_are_fine(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "model")
    (folder / "real-tokenizer.json").write_text(json.dumps(TOKENIZER))
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("real-tokenizer.json")
    assert "tokenizer.json" in local_model_files(folder)
    repo = tmp_path / "hub" / "models--org--m"
    snapshot = model_folder(repo / "snapshots" / ("a" * 40))
    (repo / "blobs").mkdir()
    (repo / "blobs" / "abc").write_text(json.dumps(CONFIG))
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(Path("..") / ".." / "blobs" / "abc")
    assert "config.json" in local_model_files(snapshot)


@pytest.mark.parametrize("target", ["/etc/hostname", "../outside.safetensors", "sub/model.safetensors"])
def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path: Path, target: str) -> None:
    from mlcbuild.weights.hf_source import HFCheckpoint

    index = json.dumps({"weight_map": {"x": target}})
    folder = model_folder(tmp_path / "model", model__safetensors__index__json=index)
    with pytest.raises(UserError) as info:
        download_local(folder, tmp_path / "out")
    assert one_line(info.value) == (
        f"{folder / 'model.safetensors.index.json'}: weight_map.x: {target!r} is not a file name in the model folder (no paths)"
    )
    with pytest.raises(StepError, match="is not a file name in the model folder"):
        HFCheckpoint.open(folder)


# --- recipes and files that exhaust: size, aliases, FIFOs, devices, quadratic checks ------------

def test_alias_bomb_fails_fast_with_one_line(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + RECIPE)
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert time.perf_counter() - start < 5
    assert "YAML aliases expand to more than 100000 values" in one_line(info.value)


def test_oversized_and_deep_recipes(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(RECIPE + "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(UserError, match=r"big\.yaml: recipe is \d+ bytes; at most 1048576 are accepted"):
        load_recipe(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text(RECIPE + "overrides: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(UserError) as info:
        load_recipe(deep)
    one_line(info.value)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_recipe_that_is_not_a_regular_file_fails_at_once(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "recipe.yaml"
        os.mkfifo(path)
        expected = "recipe is a FIFO (named pipe), not a regular file"
    else:
        path = Path("/dev/zero")
        expected = "recipe is a device, not a regular file"
    result = mlcbuild("plan", str(path), env={"MLCBUILD_CACHE_DIR": str(tmp_path / "cache")}, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"mlcbuild: error: {path}: {expected}"


def test_fifo_lock_file_and_fifo_tokenizer_do_not_hang(tmp_path: Path) -> None:
    model_folder(tmp_path / "model")
    os.mkfifo(tmp_path / "model" / "tokenizer_config.json")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    result = mlcbuild("plan", "recipe.yaml", cwd=tmp_path, env={"MLCBUILD_CACHE_DIR": str(tmp_path / "cache")}, timeout=30)
    assert result.returncode == 2
    assert "tokenizer_config.json: is a FIFO (named pipe), not a regular file" in result.stderr
    os.unlink(tmp_path / "model" / "tokenizer_config.json")
    hf = tmp_path / "hf.yaml"
    hf.write_text(RECIPE.replace("  path: model\n", "  hf: org/model\n"))
    os.mkfifo(tmp_path / "hf.lock.json")
    result = mlcbuild("plan", "hf.yaml", cwd=tmp_path, env={"MLCBUILD_CACHE_DIR": str(tmp_path / "cache")}, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "mlcbuild: error: hf.lock.json: lock file is a FIFO (named pipe), not a regular file"


def test_unique_items_over_20k_entries_is_linear(tmp_path: Path) -> None:
    quants = [f"q{i}" for i in range(20_000)] + ["q7"]
    path = tmp_path / "many.yaml"
    path.write_text(RECIPE.replace("[q0f32]", "[" + ", ".join(quants) + "]"))
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert time.perf_counter() - start < 3
    assert "quantizations[20000]: duplicate entry 'q7' (already at line 3)" in one_line(info.value)
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(RECIPE.replace("[q0f32]", "[" + ", ".join(["{a: %d}" % i for i in range(20_000)] + ["x", "x"]) + "]"))
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"mixed\.yaml:3:17: quantizations\[0\]: expected a string, got a mapping"):
        load_recipe(mixed)
    assert time.perf_counter() - start < 3


# --- numbers that are not numbers, revisions that are paths, configs that cannot be models ------

@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        ('"layer_norm_eps": NaN', "layer_norm_eps", "NaN and infinities are not allowed"),
        ('"num_attention_heads": 0', "num_attention_heads", "must be ≥ 1 (got 0)"),
        ('"num_attention_heads": 5', "num_attention_heads", "hidden_size 64 is not divisible by num_attention_heads 5"),
        ('"hidden_size": -64', "hidden_size", "must be ≥ 1 (got -64)"),
        ('"hidden_size": "sixty-four"', "hidden_size", "expected an integer, got a string ('sixty-four')"),
        ('"rotary_pct": 1e999', "rotary_pct", "NaN and infinities are not allowed"),
    ],
)
def test_config_values_are_checked_naming_the_users_file(tmp_path: Path, edit: str, field: str, message: str) -> None:
    key = edit.split(":")[0].strip('"')
    text = json.dumps({k: v for k, v in CONFIG.items() if k != key})[:-1] + ", " + edit + "}"
    folder = model_folder(tmp_path / "model", config__json=text)
    with pytest.raises(UserError) as info:
        download_local(folder, tmp_path / "out")
    assert one_line(info.value) == f"{folder / 'config.json'}: {field}: {message}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "config.json must hold a JSON object, got a list"),
        (b'{"model_type": "gpt_neox",\n "x": "\xff\xfe"}', "config.json is not UTF-8 text (byte 0xff)"),
        (b"{not json", "config.json is not valid JSON: Expecting property name enclosed in double quotes"),
    ],
)
def test_malformed_config_json_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    folder = model_folder(tmp_path / "model", config__json=content)
    with pytest.raises(UserError) as info:
        download_local(folder, tmp_path / "out")
    text = one_line(info.value)
    assert text.startswith(str(folder / "config.json")) and message in text
    assert "/tmp/" not in text.replace(str(tmp_path), "")


def test_steps_name_config_json_never_their_work_folder(tmp_path: Path) -> None:
    from mlcbuild.steps.convert import convert_checkpoint
    from mlcbuild.steps.gen_config import build_config

    work = model_folder(tmp_path / "work-1234", config__json=b"\x00\x01binary")
    with pytest.raises(StepError) as info:
        build_config(work, tmp_path / "out", {"quantization": "q0f32", "conv_template": "chatml"})
    assert one_line(info.value) == "config.json:1:1: config.json is not valid JSON: Expecting value"
    with pytest.raises(MlcbuildError) as info:
        convert_checkpoint(work, tmp_path / "out2", "q0f32")
    assert "work-1234" not in one_line(info.value) and "config.json" in str(info.value)


# --- malformed checkpoint files -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (struct.pack("<Q", 1 << 62) + b"{}", "header length 4611686018427387904 exceeds the file (10 bytes)"),
        (safetensors([1, 2, 3]), "header must be a JSON object, got list"),
        (safetensors({"x": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "tensor x has no dtype"),
        (safetensors({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}}, bytes(8)),
         "tensor x: data_offsets [0, 8000] lie outside the 8 data bytes"),
        (safetensors({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
         "tensor x: 8 data bytes, but shape [3] F32 needs 12"),
        (safetensors({"x": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, bytes(8)),
         "tensor x: shape must be a list of non-negative integers, got '2'"),
        (b"\x01\x02", "shorter than its 8-byte header length"),
    ],
)
def test_malformed_safetensors_are_one_line(tmp_path: Path, weights: bytes, message: str) -> None:
    from mlcbuild.weights.hf_source import HFCheckpoint

    folder = model_folder(tmp_path / "model", model__safetensors=weights)
    with pytest.raises(UserError) as info:
        download_local(folder, tmp_path / "out")
    assert one_line(info.value) == f"{folder / 'model.safetensors'}: not a valid safetensors file: {message}"
    with pytest.raises(StepError) as info:
        HFCheckpoint.open(folder)
    assert one_line(info.value) == f"model.safetensors: not a valid safetensors file: {message}"


def test_garbage_tokenizer_json_is_one_line(tmp_path: Path) -> None:
    from mlcbuild.steps.gen_config import build_config

    folder = model_folder(tmp_path / "model", tokenizer__json=json.dumps({"model": {"type": "Nonsense"}}))
    with pytest.raises(UserError) as info:
        download_local(folder, tmp_path / "out")
    assert one_line(info.value).startswith(f"{folder / 'tokenizer.json'}: not a tokenizer the `tokenizers` library can load (")
    (tmp_path / "gen").mkdir()
    with pytest.raises(StepError) as info:
        build_config(folder, tmp_path / "gen", {"quantization": "q0f32", "conv_template": "chatml"})
    assert one_line(info.value).startswith("tokenizer.json: not a tokenizer the `tokenizers` library can load (")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # runs a shell command when unpickled without weights_only
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_bin_is_refused_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    from mlcbuild.weights.hf_source import HFCheckpoint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    marker = tmp_path / "pwned"
    torch.save({"gpt_neox.embed_in.weight": _Evil(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(StepError) as info:
        HFCheckpoint.open(folder)
    message = one_line(info.value)
    assert message.startswith("pytorch_model.bin: refused to load: the pickle holds more than tensors")
    assert message.endswith("convert the checkpoint to safetensors")
    assert not marker.exists()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(StepError) as info:
        HFCheckpoint.open(folder)
    assert one_line(info.value).startswith("pytorch_model.bin: ")


# --- credentials in URLs ------------------------------------------------------------------------

def test_redact_masks_userinfo_and_token_query_values() -> None:
    text = "GET http://user:s3cret@host:8080/x?token=abc&a=1&X-Amz-Signature=zz failed (Bearer abcdefghijk) hf_abcdefghijklmnopqrstu"
    out = redact(text)
    for secret in ("s3cret", "user:", "abc&", "zz", "abcdefghijk", "hf_abcdefghijklmnopqrstu"):
        assert secret not in out, out
    assert "http://***@host:8080/x?token=***&a=1" in out
    assert str(StepError("see https://u:p@x.y/z?api_key=1")) == "see https://***@x.y/z?api_key=***"
    assert str(UserError("at http://u:p@h/")) == "at http://***@h/"


def test_credentials_in_hf_endpoint_never_printed(tmp_path: Path) -> None:
    hf = tmp_path / "hf.yaml"
    hf.write_text(RECIPE.replace("  path: model\n", "  hf: org/model\n"))
    env = {"HF_ENDPOINT": "http://alice:tok3n@127.0.0.1:9/?access_token=tok4n", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "MLCBUILD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": ""}
    for args in (("lock", str(hf)), ("build", str(hf))):
        result = mlcbuild(*args, env=env)
        assert result.returncode != 0
        assert "tok3n" not in result.stderr + result.stdout and "tok4n" not in result.stderr + result.stdout
        assert "http://***@127.0.0.1:9" in result.stderr, result.stderr


# --- offline planning ---------------------------------------------------------------------------

def test_flagship_recipe_plans_offline_and_build_names_the_remedies(tmp_path: Path) -> None:
    recipe = REPO / "recipes" / "redpajama.yaml"
    assert not (REPO / "recipes" / "redpajama.lock.json").exists()
    env = {"MLCBUILD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "200"}
    for args in (("plan", str(recipe)), ("graph", str(recipe)), ("build", "--dry-run", str(recipe))):
        result = mlcbuild(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert "RedPajama-INCITE-Chat-3B-v1@main (unresolved)" in result.stdout
    assert not (REPO / "recipes" / "redpajama.lock.json").exists()
    offline = mlcbuild("build", str(recipe), env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE)" in offline.stderr
    assert "pre-download it into the HF cache" in offline.stderr and "source: {path: ...}" in offline.stderr
    online = mlcbuild("build", str(recipe), env=env)
    assert online.returncode == 1 and "cannot reach the Hugging Face Hub" in online.stderr
    assert "pre-download it into the HF cache" in online.stderr


def test_offline_resolution_uses_the_hf_cache_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcbuild.hub import resolve_revision

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = tmp_path / "models--org--m" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("AB" * 20)
    assert resolve_revision("org/m", "main") == "ab" * 20
    with pytest.raises(StepError, match="HF cache does not know 'org/m'@v2"):
        resolve_revision("org/m", "v2")


# --- the recipe cache ---------------------------------------------------------------------------

def test_recipe_cache_follows_recipe_lock_and_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcbuild.recipe import cache

    model_folder(tmp_path / "model")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    store = tmp_path / "cache"
    first = load_recipe(path, store)
    entries = set((store / "recipes").iterdir())
    assert len(entries) == 1 and load_recipe(path, store) == first
    assert load_recipe(path, store).where("targets[0]") == first.where("targets[0]")
    path.write_text(RECIPE.replace("q0f32", "q0f16"))
    assert load_recipe(path, store).quantizations == ("q0f16",)
    assert len(list((store / "recipes").iterdir())) == 1, "one entry per recipe file"
    path.write_text(RECIPE.replace("q0f32", "q0f16x"))
    with pytest.raises(UserError, match="unknown quantization 'q0f16x'"):
        load_recipe(path, store)
    path.write_text(RECIPE)
    (tmp_path / "recipe.lock.json").write_text("{}")
    key_with_lock = cache.cache_key(path, path.read_bytes())
    targets = tmp_path / "targets"
    targets.mkdir()
    monkeypatch.setenv("MLCBUILD_TARGETS_DIR", str(targets))
    assert cache.cache_key(path, path.read_bytes()) != key_with_lock
    monkeypatch.delenv("MLCBUILD_TARGETS_DIR")
    (tmp_path / "recipe.lock.json").unlink()
    assert load_recipe(path, store) == first
    (entry,) = (store / "recipes").iterdir()
    entry.write_text("{broken")
    assert load_recipe(path, store) == first
    assert json.loads(entry.read_text())["name"] == first.name
    (tmp_path / "model" / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json in"):
        load_recipe(path, store)


def test_log_records_are_redacted_once_hub_code_runs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from mlcbuild.hub import hub_errors

    with hub_errors("org/m", "main"):
        logging.getLogger("huggingface_hub.test").warning("retrying %s", "https://bob:pw1234@hub.example/x?token=t0k")
    assert "pw1234" not in caplog.text and "t0k" not in caplog.text
    assert "https://***@hub.example/x?token=***" in caplog.text
