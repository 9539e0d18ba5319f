"""An architecture no family builds is a recipe mistake (exit 2, one line at the recipe's `source`),
found before any weight file is read or downloaded: by `plan` wherever config.json is at hand
without the network, by `build` right after fetching config.json alone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

try:
    from test_build import DEMO_MODEL, mlcbuild, write_recipe
except ImportError:
    from tests.test_build import DEMO_MODEL, mlcbuild, write_recipe


def _falcon(folder: Path) -> Path:
    shutil.copytree(DEMO_MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "falcon", "architectures": ["FalconForCausalLM"]}))
    return folder


def _one_line_at_source(result, recipe: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{recipe.name}:" in lines[0] and ": source: " in lines[0]
    assert "unsupported model_type 'falcon'" in lines[0] and "qwen2" in lines[0] and "gemma3" in lines[0]


def test_local_folder_unsupported_architecture_is_a_recipe_error(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    _falcon(folder / "model")
    recipe = write_recipe(folder)
    cache = tmp_path / "cache"
    _one_line_at_source(mlcbuild("plan", str(recipe), cache=cache), recipe)
    _one_line_at_source(mlcbuild("build", str(recipe), cache=cache), recipe)
    assert not (cache / "objects").exists() or not any((cache / "objects").rglob("*.safetensors*"))


def test_hub_source_fails_after_config_json_and_before_any_weight(tmp_path: Path, fake_hub) -> None:
    fake_hub.add_repo("acme/falcon-tiny", _falcon(tmp_path / "falcon"), branch="main")
    folder = tmp_path / "r"
    recipe = write_recipe(folder, source={"hf": "acme/falcon-tiny", "revision": "main"})
    cache = tmp_path / "cache"
    fake_hub.clear_requests()
    _one_line_at_source(mlcbuild("build", str(recipe), cache=cache), recipe)
    fetched = [r.path for r in fake_hub.requests if "/resolve/" in r.path]
    assert fetched and all(p.endswith("/config.json") for p in fetched), fetched
    _one_line_at_source(mlcbuild("plan", str(recipe), cache=cache), recipe)  # config.json is now in the HF cache


def test_a_named_template_that_does_not_fit_the_model_is_a_recipe_error(tmp_path: Path) -> None:
    """llama-3's stop ids (128001...) on the 384-token demo model would read past its embedding table."""
    recipe = write_recipe(tmp_path / "r", conv_template="llama-3")
    for command in ("plan", "build"):
        result = mlcbuild(command, str(recipe), cache=tmp_path / "cache")
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and f"{recipe.name}:" in line and ": conv_template: template 'llama-3' stop_token_ids: token id 128001" in line
