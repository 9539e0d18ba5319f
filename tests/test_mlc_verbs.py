"""MLC's verbs (convert_weight, gen_config, compile) and an MLC weight folder as a recipe source.

The session's cache (conftest `shared_cache`) already holds the tiny recipe's convert, gen-config
and llvm compile; the verbs asking the same things get the same keys, so no test here compiles."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "recipes" / "models" / "tiny-redpajama"
SIZES = ["--context-window-size", "512", "--prefill-chunk-size", "128", "--max-batch-size", "1"]

pytestmark = pytest.mark.slow


def cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def mlc_folder(tmp_path: Path, cache: Path) -> Path:
    """convert_weight + gen_config into one folder, as MLC's docs run them."""
    shutil.copytree(DEMO_MODEL, tmp_path / "hf")
    out = tmp_path / "dist" / "tiny-q0f32-MLC"
    conv = cli("convert_weight", "hf", "--quantization", "q0f32", "-o", str(out), cache=cache, cwd=tmp_path)
    assert conv.returncode == 0, conv.stderr
    gen = cli("gen_config", "hf/config.json", "--quantization", "q0f32", "--conv-template", "redpajama_chat", *SIZES, "-o", str(out), cache=cache, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    assert conv.stdout.startswith("convert_weight: cached") and gen.stdout.startswith("gen_config: cached"), conv.stdout + gen.stdout
    return out


def test_verbs_share_the_recipes_cache_and_write_mlcs_layout(tmp_path: Path, cache: Path) -> None:
    out = mlc_folder(tmp_path, cache)
    assert {"params_shard_0.bin", "tensor-cache.json", "mlc-chat-config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "mlc-chat-config.json").read_text())
    assert (config["quantization"], config["context_window_size"], config["conv_template"]["name"]) == ("q0f32", 512, "redpajama_chat")
    lib = tmp_path / "dist" / "libs" / "tiny-q0f32-llvm.so"
    for _ in range(2):
        comp = cli("compile", str(out / "mlc-chat-config.json"), "--device", "cpu", "--opt", "O2;flashinfer=1", "-o", str(lib), cache=cache, cwd=tmp_path)
        assert comp.returncode == 0, comp.stderr
        assert comp.stdout.startswith("compile: cached"), comp.stdout
        assert "--opt: flashinfer=1 is ignored" in comp.stderr
    assert lib.read_bytes()[:4] == b"\x7fELF"


def test_a_repeated_verb_is_a_cache_hit(tmp_path: Path) -> None:
    shutil.copytree(DEMO_MODEL, tmp_path / "hf")
    runs = [cli("convert_weight", "hf", "--quantization", "q0f32", "-o", "out", cache=tmp_path / "cache", cwd=tmp_path) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout.startswith("convert_weight: built") and runs[1].stdout.startswith("convert_weight: cached")
    assert (tmp_path / "out" / "tensor-cache.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "hf", "--device", "llvm", "-o", "x.so"], "has no mlc-chat-config.json"),
        (["compile", "hf/config.json", "--device", "llvm", "-o", "x.so"], "is not a mlc-chat-config.json"),
        (["convert_weight", "hf", "--quantization", "q9", "-o", "o"], "--quantization: unknown quantization 'q9'"),
        (["convert_weight", "org/name", "--quantization", "q0f32", "-o", "o"], "not a local folder"),
        (["convert_weight", "hf", "--quantization", "q0f32", "--lora-adapter", "a", "-o", "o"], "--lora-adapter: LoRA"),
        (["gen_config", "hf", "--quantization", "q0f32", "--conv-template", "chatmll", "-o", "o"], "did you mean 'chatml'"),
    ],
)
def test_verb_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    shutil.copytree(DEMO_MODEL, tmp_path / "hf")
    out = cli(*args, cache=tmp_path / "cache", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_an_mlc_folder_as_source_compiles_and_places_without_converting(tmp_path: Path, cache: Path) -> None:
    source = mlc_folder(tmp_path, cache)
    recipe = tmp_path / "published.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"path": str(source)}, "quantizations": ["q0f32"], "targets": ["llvm"], "output": "out"}))
    built = cli("build", str(recipe), cache=cache, cwd=tmp_path)
    assert built.returncode == 0, built.stderr + built.stdout
    assert "convert" not in built.stdout + built.stderr and "gen-config" not in built.stdout + built.stderr
    placed = tmp_path / "out" / "tiny-q0f32-MLC"
    assert {"params_shard_0.bin", "tensor-cache.json", "mlc-chat-config.json"} <= {p.name for p in placed.iterdir()}
    assert (tmp_path / "out" / "libs" / "tiny-q0f32-llvm-x86_64.so").is_file()
    plan = cli("plan", str(recipe), cache=cache, cwd=tmp_path)
    assert "compile tiny q0f32 llvm" in plan.stdout and " cached " in plan.stdout.split("compile tiny q0f32 llvm")[1].splitlines()[0]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"source": {"path": str(source)}, "quantizations": ["q4f16_1"], "targets": ["llvm"]}))
    refused = cli("plan", str(wrong), cache=cache, cwd=tmp_path)
    assert refused.returncode == 2 and "converted with q0f32" in refused.stderr and "quantizations: [q0f32]" in refused.stderr


def test_an_mlc_ai_hub_repo_as_source_downloads_mlc_files_and_compiles(tmp_path: Path, cache: Path, fake_hub) -> None:
    """`mlc-ai/*-MLC`: the repo's params_shard_*/tensor-cache/mlc-chat-config are fetched, not converted."""
    source = mlc_folder(tmp_path, cache)
    fake_hub.add_repo("mlc-ai/tiny-q0f32-MLC", source)
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"hf": "mlc-ai/tiny-q0f32-MLC"}, "quantizations": ["q0f32"], "targets": ["llvm"], "output": "out"}))
    built = cli("build", str(recipe), cache=cache, cwd=tmp_path)
    assert built.returncode == 0, built.stderr + built.stdout
    placed = tmp_path / "out" / "tiny-q0f32-MLC"
    assert (placed / "params_shard_0.bin").read_bytes() == (source / "params_shard_0.bin").read_bytes()
    assert (tmp_path / "out" / "libs" / "tiny-q0f32-llvm-x86_64.so").is_file()
    assert "convert" not in built.stdout + built.stderr


def test_an_mlc_folder_sources_matrix_has_a_weights_cell_placing_the_folder(tmp_path: Path) -> None:
    """The folder is the weights cell's artifact (nothing to convert); each target cell compiles."""
    folder = tmp_path / "Tiny-q0f32-MLC"
    folder.mkdir()
    shutil.copy(DEMO_MODEL / "tokenizer.json", folder / "tokenizer.json")
    (folder / "mlc-chat-config.json").write_text(json.dumps({"model_type": "gpt_neox", "quantization": "q0f32"}))
    (folder / "params_shard_0.bin").write_bytes(b"\0" * 16)
    (folder / "tensor-cache.json").write_text('{"records": []}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"path": str(folder)}, "quantizations": ["q0f32"], "targets": ["llvm"]}))
    out = cli("matrix", str(recipe), cache=tmp_path / "cache", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cells = {c["cell"]: c for c in json.loads(out.stdout)["cells"]}
    assert set(cells) == {"weights", "llvm-x86_64"}
    (artifact,) = cells["weights"]["artifacts"]
    assert artifact.endswith("dist/Tiny-q0f32-MLC/"), artifact
