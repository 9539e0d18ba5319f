"""Valid recipes: typed result, defaults, paths relative to the recipe file, speed and lightness."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcbuild.errors import Location
from mlcbuild.recipe import Recipe, Source, TargetRef, load_recipe
from mlcbuild.recipe.schema import SCHEMA_PATH

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """\
source:
  hf: togethercomputer/RedPajama-INCITE-Chat-3B-v1
quantizations: [q4f16_1]
targets: [llvm]
conv_template: redpajama_chat
"""


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    return path


def test_redpajama_recipe() -> None:
    recipe = load_recipe(REPO / "recipes" / "redpajama.yaml")
    assert recipe.name == "RedPajama-INCITE-Chat-3B-v1"
    assert recipe.source == Source(hf="togethercomputer/RedPajama-INCITE-Chat-3B-v1", revision="main")
    assert recipe.source.ref == "togethercomputer/RedPajama-INCITE-Chat-3B-v1@main"
    assert recipe.quantizations == ("q4f16_1", "q0f16")
    assert [t.name for t in recipe.targets] == ["cuda", "llvm"]
    assert recipe.conv_template == "redpajama_chat"
    assert recipe.model_type == "gpt_neox"
    assert recipe.overrides["context_window_size"] == 2048
    assert recipe.overrides["prefill_chunk_size"] == 2048
    assert recipe.overrides["temperature"] == 0.7
    assert recipe.overrides["top_p"] == 0.95
    assert recipe.compile_options == {"opt": "O3"}
    assert recipe.path == (REPO / "recipes" / "redpajama.yaml").resolve()


def test_example_recipes_point_editors_at_the_schema() -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, f"{path.name}: first line must be the yaml-language-server schema comment"
        assert (path.parent / match.group(1)).resolve() == SCHEMA_PATH.resolve()


def test_example_recipes_load() -> None:
    """Every shipped recipe loads as it is: a local source folder that is missing fails here (it
    would break `make demo`), it is not skipped."""
    paths = sorted((REPO / "recipes").glob("*.yaml"))
    assert REPO / "recipes" / "demo.yaml" in paths
    for path in paths:
        recipe = load_recipe(path)
        if recipe.source.path is not None:
            assert (Path(recipe.source.path) / "config.json").is_file(), f"{path.name}: source folder {recipe.source.path} has no config.json"


def test_schema_ships_in_the_package() -> None:
    assert SCHEMA_PATH.parent == REPO / "mlcbuild" / "recipe"
    assert json.loads(SCHEMA_PATH.read_text())["additionalProperties"] is False


def test_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "r", MINIMAL))
    assert recipe.name == "RedPajama-INCITE-Chat-3B-v1"
    assert recipe.source.revision == "main"
    assert recipe.output == tmp_path / "r" / "dist"
    assert recipe.overrides == {}
    assert recipe.compile_options == {"opt": "O2"}
    assert recipe.model_type is None
    assert recipe.targets == (TargetRef("llvm"),)
    assert isinstance(recipe, Recipe)


def test_local_source_relative_to_recipe_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_folder(tmp_path / "models" / "tiny-gpt")
    text = MINIMAL.replace("hf: togethercomputer/RedPajama-INCITE-Chat-3B-v1", "path: ../models/tiny-gpt")
    path = write(tmp_path / "recipes", text + "output: ../out\n")
    monkeypatch.chdir(tmp_path / "models")
    recipe = load_recipe(path)
    assert recipe.source == Source(path=model)
    assert recipe.source.ref is None
    assert recipe.name == "tiny-gpt"
    assert recipe.output == tmp_path / "out"


def test_absolute_paths_kept(tmp_path: Path) -> None:
    model = model_folder(tmp_path / "m")
    text = MINIMAL.replace("hf: togethercomputer/RedPajama-INCITE-Chat-3B-v1", f"path: {model}")
    recipe = load_recipe(write(tmp_path / "elsewhere", text + f"output: {tmp_path / 'o'}\n"))
    assert recipe.source.path == model
    assert recipe.output == tmp_path / "o"


@pytest.fixture
def fixed_targets(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Target definitions of our own, so the test does not move when targets/*.yaml changes."""
    from mlcbuild.targets import load_targets

    folder = tmp_path_factory.mktemp("targets")
    (folder / "cuda.yaml").write_text("name: cuda\ntvm_target: {kind: cuda}\nsuffix: so\nvariants: {sm_80: {arch: sm_80}}\n")
    (folder / "llvm.yaml").write_text("name: llvm\ntvm_target: {kind: llvm}\nsuffix: so\n")
    monkeypatch.setenv("MLCBUILD_TARGETS_DIR", str(folder))
    load_targets.cache_clear()
    yield folder
    load_targets.cache_clear()


def test_all_fields(tmp_path: Path, fixed_targets: Path) -> None:
    text = MINIMAL + """\
name: rp-3b
model_type: gpt_neox
overrides:
  context_window_size: 2048.0
  sliding_window_size: -1
  attention_sink_size: 0
  max_batch_size: 4
  tensor_parallel_shards: 2
  temperature: 1
  top_p: 1
  presence_penalty: 0.5
  frequency_penalty: -0.5
  repetition_penalty: 1.1
  pad_token_id: 0
  bos_token_id: 0
  eos_token_id: [0, 2]
compile: {opt: O3, cudagraph: false}
"""
    text = text.replace("targets: [llvm]", "targets: [llvm, 'cuda:sm_80']")
    text = text.replace("hf: togethercomputer/RedPajama-INCITE-Chat-3B-v1", "hf: org/x\n  revision: v1.0")
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.name == "rp-3b"
    assert recipe.source == Source(hf="org/x", revision="v1.0")
    assert recipe.targets == (TargetRef("llvm"), TargetRef("cuda", "sm_80"))
    assert str(recipe.targets[1]) == "cuda:sm_80" and recipe.targets[1].id == "cuda-sm_80"
    o = recipe.overrides
    assert o["context_window_size"] == 2048 and type(o["context_window_size"]) is int
    assert o["temperature"] == 1.0 and type(o["temperature"]) is float
    assert o["eos_token_id"] == [0, 2]
    assert recipe.compile_options == {"opt": "O3", "cudagraph": False}


def test_where_points_at_fields(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path)
    assert recipe.where("targets[0]") == Location(str(path), 4, 11)
    assert recipe.where("conv_template") == Location(str(path), 5, 16)
    assert recipe.where("nonexistent") == Location(str(path))


def test_equal_recipes_are_equal(tmp_path: Path) -> None:
    a = load_recipe(write(tmp_path, MINIMAL))
    b = load_recipe(write(tmp_path, "# moved around\n" + MINIMAL))
    assert a == b


def test_load_is_fast(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    load_recipe(path)
    start = time.perf_counter()
    for _ in range(20):
        load_recipe(path)
    assert (time.perf_counter() - start) / 20 < 0.05


def test_loading_imports_nothing_heavy(tmp_path: Path) -> None:
    """A no-op build must not pay for jsonschema, YAML, TVM or torch just to read its recipe: the second
    load of unchanged bytes comes from the recipe cache, equal to a fresh validation."""
    path = write(tmp_path, MINIMAL)
    cache = tmp_path / "cache"
    code = (
        "import sys; from mlcbuild.recipe import load_recipe; r = load_recipe(sys.argv[1], sys.argv[2]);"
        "heavy = [m for m in ('jsonschema', 'yaml', 'tvm', 'torch', 'numpy', 'transformers', 'huggingface_hub') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    first = subprocess.run([sys.executable, "-c", code, str(path), str(cache)], cwd=REPO, capture_output=True, text=True, check=True)
    assert "jsonschema" in first.stdout
    out = subprocess.run([sys.executable, "-c", code, str(path), str(cache)], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert load_recipe(path, cache) == load_recipe(path)
