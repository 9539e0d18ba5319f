"""`mlcbuild init HF_ID|FOLDER`: a starter recipe from the model's config.json, which loads as written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlcbuild.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "recipes" / "models" / "tiny-redpajama"


def init(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLCBUILD_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "mlcbuild", "init", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_a_checkpoint_folder_gives_architecture_template_and_sizes(tmp_path: Path) -> None:
    shutil.copytree(DEMO_MODEL, tmp_path / "models" / "tiny")
    out = init("models/tiny", "-o", "recipes/tiny.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    recipe = load_recipe(tmp_path / "recipes" / "tiny.yaml")
    assert recipe.source.path == (tmp_path / "models" / "tiny").resolve()
    assert (recipe.model_type, recipe.conv_template, recipe.quantizations) == ("gpt_neox", "redpajama_chat", ("q4f16_1",))
    assert dict(recipe.overrides) == {"context_window_size": 512, "prefill_chunk_size": 512}
    assert "source: {path: \"../models/tiny\"}" in (tmp_path / "recipes" / "tiny.yaml").read_text()
    again = init("models/tiny", "-o", "recipes/tiny.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_a_tokenizer_with_a_chat_template_gets_auto(tmp_path: Path) -> None:
    folder = shutil.copytree(DEMO_MODEL, tmp_path / "tiny")
    config = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    out = init("tiny", cwd=tmp_path)
    assert out.returncode == 0 and "\nconv_template: auto\n" in out.stdout, out.stdout + out.stderr


def test_an_unsupported_architecture_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    out = init("bert", "-o", "r.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "unsupported model_type 'bert'" in out.stderr and "llama" in out.stderr
    assert not (tmp_path / "r.yaml").exists()


def test_an_mlc_folder_gets_its_quantization(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny-Chat-q4f16_1-MLC"
    folder.mkdir()
    (folder / "mlc-chat-config.json").write_text('{"model_type": "llama", "quantization": "q4f16_1"}')
    (folder / "params_shard_0.bin").write_bytes(b"\0" * 8)
    out = init(str(folder), "-o", "r.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    recipe = load_recipe(tmp_path / "r.yaml")
    assert (recipe.name, recipe.quantizations, recipe.model_type) == ("Tiny-Chat", ("q4f16_1",), None)


def test_a_hub_repo_id_reads_config_through_the_hub_client(tmp_path: Path, fake_hub) -> None:
    fake_hub.add_repo("someorg/tiny-talker", DEMO_MODEL)
    out = init("someorg/tiny-talker", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'source: {hf: "someorg/tiny-talker", revision: "main"}' in out.stdout and "model_type: gpt_neox" in out.stdout
