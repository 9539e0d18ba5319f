"""Each family from a recipe that names neither `model_type` nor `conv_template`, as a user writes one
for a checkpoint fresh from the Hub: the family comes from config.json, the conversation template is
fitted to the checkpoint's own chat template (`conv_template: auto`), both quantizations build for
llvm, and a chat turn runs through the built artifacts.

The tiny checkpoints carry a byte-level tokenizer with each family's special tokens at their real
ids (so the vocabulary is as wide as the real one: Qwen's <|im_end|> is 151645) and the test copies
of the published chat templates in test_conv_template_auto.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    from conftest import _tiny_maker
    from test_conv_template_auto import FAMILIES, make_tokenizer
except ImportError:
    from tests.conftest import _tiny_maker
    from tests.test_conv_template_auto import FAMILIES, make_tokenizer

# family -> (chat template case in FAMILIES, the MLC template auto must pick, vocab_size)
CASES = {
    "llama": ("llama3.1", "llama-3_1", 128256),
    "qwen2": ("qwen2.5", "qwen2", 151936),
    "qwen3": ("qwen3", "qwen3", 151936),
    "gemma2": ("gemma2", "gemma_instruction", 600),
    "gemma3": ("gemma3", "gemma3_instruction", 600),
    "phi3": ("phi3", "phi-3", 32064),
}


def _checkpoint(folder: Path, family: str) -> Path:
    template, ids, bos, eos, gen_eos, _, _ = FAMILIES[CASES[family][0]]
    _tiny_maker(family)(folder, vocab_size=CASES[family][2])
    make_tokenizer(ids).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos, "chat_template": template}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos, "bos_token_id": ids.get(bos or "")}))
    return folder


def _mlcbuild(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_recipe_without_model_type_or_template_builds_and_chats(tmp_path: Path, family: str) -> None:
    _checkpoint(tmp_path / "model", family)
    recipe = {
        "name": family,
        "source": {"path": "model"},
        "quantizations": ["q0f32", "q4f16_1"],
        "targets": ["llvm"],
        "overrides": {"context_window_size": 128, "prefill_chunk_size": 16},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    built = _mlcbuild("build", "recipe.yaml", "-j", "2", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    for quant in ("q0f32", "q4f16_1"):
        config = json.loads((tmp_path / "dist" / f"{family}-{quant}-MLC" / "mlc-chat-config.json").read_text())
        assert config["model_type"] == family and config["conv_template"]["name"] == CASES[family][1]
        stops = set(config["conv_template"]["stop_token_ids"])
        assert stops and stops <= set(FAMILIES[CASES[family][0]][1].values())
    chat = _mlcbuild("run", "recipe.yaml", "-q", "q4f16_1", "--temperature", "0", "--max-tokens", "8", "--prompt", "Hello there", cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
