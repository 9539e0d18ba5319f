"""Malformed recipes: each gets one line naming file:line:column, the field and what to do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.recipe.load import load_recipe
from mlcbuild.recipe.schema import SCHEMA_PATH

HEAD = "source:\n  hf: org/model\n  revision: main\n"
BODY = "quantizations: [q4f16_1]\ntargets: [llvm]\nconv_template: redpajama_chat\n"
GOOD = HEAD + BODY

# (id, recipe text, line, column, field or None, distinctive part of the message)
CASES = [
    ("unknown-top-key", GOOD + "quantisations: [q0f16]\n", 7, 1, "quantisations", "unknown field — did you mean 'quantizations'?"),
    ("typo-required-key", HEAD + "quantisations: [q4f16_1]\ntargets: [llvm]\nconv_template: chatml\n", 4, 1, "quantisations", "did you mean 'quantizations'?"),
    ("unknown-override", GOOD + "overrides:\n  temprature: 0.7\n", 8, 3, "overrides.temprature", "did you mean 'temperature'?"),
    ("unknown-source-key", "source:\n  hf: org/model\n  branch: dev\n" + BODY, 3, 3, "source.branch", "unknown field; allowed: hf, revision, path"),
    ("unknown-compile-key", GOOD + "compile: {opt_level: O3}\n", 7, 11, "compile.opt_level", "did you mean 'opt'?"),
    ("missing-targets", HEAD + "quantizations: [q4f16_1]\nconv_template: chatml\n", 1, 1, "targets", "required field is missing"),
    ("missing-source", BODY, 1, 1, "source", "required field is missing"),
    ("source-neither", "source:\n  revision: main\n" + BODY, 2, 3, "source", "needs 'hf' (a Hugging Face repo id) or 'path'"),
    ("source-both", "source:\n  hf: org/model\n  path: model\n" + BODY, 3, 3, "source.path", "'hf' and 'path' are mutually exclusive"),
    ("revision-with-path", "source:\n  path: model\n  revision: main\n" + BODY, 3, 3, "source.revision", "applies only to an 'hf' source"),
    ("source-is-string", "source: org/model\n" + BODY, 1, 9, "source", "expected a mapping, got a string ('org/model')"),
    ("quant-not-list", HEAD + "quantizations: q4f16_1\ntargets: [llvm]\nconv_template: chatml\n", 4, 16, "quantizations", "write a list: [q4f16_1]"),
    ("quant-empty", HEAD + "quantizations: []\ntargets: [llvm]\nconv_template: chatml\n", 4, 16, "quantizations", "must not be empty"),
    ("quant-null", HEAD + "quantizations:\ntargets: [llvm]\nconv_template: chatml\n", 4, 1, "quantizations", "expected a list, got nothing (null)"),
    ("quant-duplicate", HEAD + "quantizations:\n  - q4f16_1\n  - q0f16\n  - q4f16_1\ntargets: [llvm]\nconv_template: chatml\n", 7, 5, "quantizations[2]", "duplicate entry 'q4f16_1' (already at line 5)"),
    ("quant-unknown-close", HEAD + "quantizations: [q0f16, q4f16]\ntargets: [llvm]\nconv_template: chatml\n", 4, 24, "quantizations[1]", "unknown quantization 'q4f16' — did you mean 'q4f16_1'?"),
    ("quant-unknown-far", HEAD + "quantizations: [int8]\ntargets: [llvm]\nconv_template: chatml\n", 4, 17, "quantizations[0]", "unknown quantization 'int8'; valid: q0f16, q0f32, q3f16_1, q4f16_1, q4f32_1"),
    ("target-unknown", HEAD + "quantizations: [q4f16_1]\ntargets: [llvm, cdua]\nconv_template: chatml\n", 5, 17, "targets[1]", "unknown target 'cdua' — did you mean 'cuda'?"),
    ("target-variant-unknown", HEAD + "quantizations: [q4f16_1]\ntargets:\n  - cuda:sm80\nconv_template: chatml\n", 6, 5, "targets[0]", "unknown variant 'sm80' of target 'cuda' — did you mean 'cuda:sm_80'?"),
    ("target-variant-ambiguous", HEAD + "quantizations: [q4f16_1]\ntargets: [cuda:sm_81]\nconv_template: chatml\n", 5, 11, "targets[0]", "unknown variant 'sm_81' of target 'cuda'; valid: sm_80, sm_86, sm_89, sm_90a"),
    ("target-no-variants", HEAD + "quantizations: [q4f16_1]\ntargets: [llvm:avx512]\nconv_template: chatml\n", 5, 11, "targets[0]", "target 'llvm' has no variants"),
    ("target-bad-syntax", HEAD + "quantizations: [q4f16_1]\ntargets: ['cuda:sm_80:x']\nconv_template: chatml\n", 5, 11, "targets[0]", "expected NAME or NAME:VARIANT"),
    ("target-same-library", HEAD + "quantizations: [q4f16_1]\ntargets: [cuda, cuda:sm_90a]\nconv_template: chatml\n", 5, 17, "targets[1]", "builds the same library as 'cuda'"),
    ("target-duplicate", HEAD + "quantizations: [q4f16_1]\ntargets: [llvm, llvm]\nconv_template: chatml\n", 5, 17, "targets[1]", "duplicate entry 'llvm'"),
    ("template-unknown", HEAD + "quantizations: [q4f16_1]\ntargets: [llvm]\nconv_template: redpajama\n", 6, 16, "conv_template", "unknown conv_template 'redpajama' — did you mean 'redpajama_chat'?"),
    ("model-type-unknown", GOOD + "model_type: gptneox\n", 7, 13, "model_type", "did you mean 'gpt_neox'?"),
    ("path-missing", "source:\n  path: ./nowhere\n" + BODY, 2, 9, "source.path", "folder does not exist"),
    ("path-is-file", "source:\n  path: afile.txt\n" + BODY, 2, 9, "source.path", "not a folder"),
    ("path-no-config", "source:\n  path: emptymodel\n" + BODY, 2, 9, "source.path", "no config.json in"),
    ("hf-no-org", "source:\n  hf: RedPajama-INCITE-Chat-3B-v1\n" + BODY, 2, 7, "source.hf", "expected 'org/name', got 'RedPajama-INCITE-Chat-3B-v1' (no organization)"),
    ("hf-url", "source:\n  hf: https://huggingface.co/org/model\n" + BODY, 2, 7, "source.hf", "not a URL — did you mean 'org/model'?"),
    ("hf-double-dash", "source:\n  hf: org/my--model\n" + BODY, 2, 7, "source.hf", "'--' and '..' are not allowed"),
    ("revision-int", "source:\n  hf: org/model\n  revision: 1234567\n" + BODY, 3, 13, "source.revision", "got an integer (1234567); quote it: '1234567'"),
    ("revision-empty", "source:\n  hf: org/model\n  revision: ''\n" + BODY, 3, 13, "source.revision", "must not be empty"),
    ("revision-space", "source:\n  hf: org/model\n  revision: my branch\n" + BODY, 3, 13, "source.revision", "a branch or tag name (letters, digits, '.', '_', '-', '/'; no '..', no leading '/' or '.') (got 'my branch')"),
    ("revision-escape", "source:\n  hf: org/model\n  revision: ../../tmp/x\n" + BODY, 3, 13, "source.revision", "no '..', no leading '/' or '.') (got '../../tmp/x')"),
    ("revision-absolute", "source:\n  hf: org/model\n  revision: /etc/passwd\n" + BODY, 3, 13, "source.revision", "(got '/etc/passwd')"),
    ("temperature-nan", GOOD + "overrides:\n  temperature: .nan\n", 8, 16, "overrides.temperature", "'.nan' is not a finite number (NaN and infinities are not allowed)"),
    ("top-p-inf", GOOD + "overrides:\n  top_p: -.inf\n", 8, 10, "overrides.top_p", "'-.inf' is not a finite number"),
    ("temperature-high", GOOD + "overrides:\n  temperature: 3\n", 8, 16, "overrides.temperature", "must be ≤ 2 (got 3)"),
    ("top-p-zero", GOOD + "overrides:\n  top_p: 0\n", 8, 10, "overrides.top_p", "must be > 0 (got 0)"),
    ("context-zero", GOOD + "overrides:\n  context_window_size: 0\n", 8, 24, "overrides.context_window_size", "or -1 for unlimited"),
    ("context-quoted", GOOD + "overrides:\n  context_window_size: '2048'\n", 8, 24, "overrides.context_window_size", "got a string ('2048'); remove the quotes"),
    ("context-fraction", GOOD + "overrides:\n  context_window_size: 2048.5\n", 8, 24, "overrides.context_window_size", "expected an integer, got a number (2048.5)"),
    ("prefill-over-context", GOOD + "overrides:\n  context_window_size: 1024\n  prefill_chunk_size: 4096\n", 9, 23, "overrides.prefill_chunk_size", "must be ≤ context_window_size (1024)"),
    ("eos-bool-item", GOOD + "overrides:\n  eos_token_id: [2, true]\n", 8, 21, "overrides.eos_token_id[1]", "expected an integer, got a boolean (true)"),
    ("penalty-low", GOOD + "overrides:\n  presence_penalty: -2.5\n", 8, 21, "overrides.presence_penalty", "must be ≥ -2 (got -2.5)"),
    ("cudagraph-string", GOOD + "compile:\n  cudagraph: 'yes'\n", 8, 14, "compile.cudagraph", "expected true or false, got a string ('yes')"),
    ("opt-lowercase", GOOD + "compile:\n  opt: o3\n", 8, 8, "compile.opt", "'o3' is not one of O0, O1, O2, O3 — did you mean 'O3'?"),
    ("name-slash", "name: my/model\n" + GOOD, 1, 7, "name", "must start with a letter or digit"),
    ("output-empty", GOOD + "output: ''\n", 7, 9, "output", "must not be empty"),
    ("duplicate-key", GOOD + "targets: [cuda]\n", 7, 1, "targets", "duplicate key 'targets' (first at line 5)"),
    ("yaml-syntax", HEAD + "quantizations: [q4f16_1\ntargets: [llvm]\n", 5, 8, None, "invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 4, column 16)"),
    ("yaml-tab", HEAD + "\tquantizations: [q4f16_1]\n", 4, 1, None, "invalid YAML"),
    ("yaml-two-documents", GOOD + "---\nname: x\n", 7, 1, None, "expected a single YAML document"),
    ("yaml-control-char", GOOD + "name: a\x00b\n", 7, 8, None, "character U+0000 is not allowed"),
    ("yaml-python-tag", "name: !!python/object:os.system x\n" + GOOD, 1, 7, "name", "invalid YAML value"),
    ("bool-key", GOOD + "yes: 1\n", 7, 1, None, "mapping key 'yes' must be a name (quote it)"),
    ("merge-key", GOOD + "<<: {name: x}\n", 7, 1, None, "merge keys ('<<') are not supported"),
    ("not-a-mapping", "- q4f16_1\n- q0f16\n", 1, 1, None, "a recipe is a mapping of fields (source, quantizations, ...), got a list"),
    ("scalar-document", "just some words\n", 1, 1, None, "got a string ('just some words')"),
    ("empty-file", "", 1, 1, None, "recipe is empty"),
    ("comments-only", "# nothing here\n\n", 1, 1, None, "recipe is empty"),
]


TARGETS = {
    "cuda.yaml": "name: cuda\ntvm_target: {kind: cuda}\nhost: {kind: llvm}\nsuffix: so\ndefault_variant: sm_90a\n"
    "variants: {sm_80: {arch: sm_80}, sm_86: {arch: sm_86}, sm_89: {arch: sm_89}, sm_90a: {arch: sm_90a}}\n",
    "llvm.yaml": "name: llvm\ntvm_target: {kind: llvm}\nhost: null\nsuffix: so\n",
}


@pytest.fixture
def fixed_targets(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Target definitions of our own, so these tests do not move when targets/*.yaml grows."""
    from mlcbuild.targets import load_targets

    folder = tmp_path_factory.mktemp("targets")
    for name, text in TARGETS.items():
        (folder / name).write_text(text)
    monkeypatch.setenv("MLCBUILD_TARGETS_DIR", str(folder))
    load_targets.cache_clear()
    yield folder
    load_targets.cache_clear()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_targets: Path) -> Path:
    """A recipe folder with the local things some cases point at; errors show paths as given."""
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "emptymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text,line,column,field,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_recipe(workdir: Path, text: str, line: int, column: int, field: str | None, message: str) -> None:
    (workdir / "recipe.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        load_recipe("recipe.yaml")
    err = info.value
    assert err.exit_code == 2
    prefix = f"recipe.yaml:{line}:{column}: " + (f"{field}: " if field else "")
    assert str(err).startswith(prefix), str(err)
    assert message in err.message, str(err)
    assert "\n" not in str(err)


def test_case_count() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder; expected a recipe .yaml file"):
        load_recipe(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(GOOD.encode() + b"name: caf\xe9\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}:7:10: recipe is not UTF-8 text"


def test_unreadable_file(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read recipe: Permission denied"):
        load_recipe(path)


def test_first_problem_in_document_order_wins(workdir: Path) -> None:
    text = "targets: [cdua]\nconv_template: chatml\nquantizations: [q4f16]\nsource: {hf: a/b}\n"
    (workdir / "recipe.yaml").write_text(text)
    with pytest.raises(UserError, match=r"^recipe.yaml:1:11: targets\[0\]: unknown target 'cdua'"):
        load_recipe("recipe.yaml")


def test_unknown_fields_win_over_missing_ones(workdir: Path) -> None:
    """A typo'd required key is reported as the typo, not as the missing field it hides."""
    (workdir / "recipe.yaml").write_text("conv_template: chatml\nsourse: {hf: a/b}\n")
    with pytest.raises(UserError, match="sourse: unknown field — did you mean 'source'"):
        load_recipe("recipe.yaml")


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_mangled_recipes_never_traceback(workdir: Path) -> None:
    """Random edits of a good recipe give a one-line UserError or a recipe, never anything else."""
    import random

    base = (Path(__file__).resolve().parent.parent / "recipes" / "redpajama.yaml").read_text()
    pieces = [":", "-", "[", "]", "{", "}", " ", "\n", '"', "'", "#", "&a", "*a", "!!", "? ", "1", "null",
              "\t", "|", ",", "0.5", "-1", "q4f16", "cuda:", "<<: ", "\x00", "\ufeff", "é"]
    rng = random.Random(20)
    path = workdir / "recipe.yaml"
    for _ in range(300):
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5:
                del chars[at : at + rng.randint(1, 8)]
            else:
                chars.insert(at, rng.choice(pieces))
        path.write_bytes("".join(chars).encode("utf-8", "replace"))
        try:
            load_recipe("recipe.yaml")
        except UserError as e:
            assert str(e).startswith("recipe.yaml:") and "\n" not in str(e), str(e)


def _null_cases() -> list[tuple[str, dict]]:
    """(field, recipe) for every field of the schema set to null, and every list given a null item:
    `source:` with no value was an internal error once, so each sibling is covered here."""
    import copy

    base = {"name": "m", "source": {"hf": "org/model", "revision": "main"}, "quantizations": ["q4f16_1"],
            "targets": ["llvm"], "conv_template": "redpajama_chat", "smoke": True, "output": "dist"}
    cases: list[tuple[str, dict]] = []

    def walk(schema: dict, path: tuple[str, ...]) -> None:
        for key, sub in (schema.get("properties") or {}).items():
            recipe = copy.deepcopy(base)
            node = recipe
            for part in path:
                node = node.setdefault(part, {})
            if path == ("source",) and key == "path":
                recipe["source"] = {}
                node = recipe["source"]
            node[key] = None
            cases.append((".".join(path + (key,)), recipe))
            types = sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")]
            if "array" in types:
                item = copy.deepcopy(recipe)
                item_node = item
                for part in path:
                    item_node = item_node[part]
                item_node[key] = [None]
                cases.append((".".join(path + (key,)) + "[0]", item))
            walk(sub, path + (key,))

    walk(json.loads(SCHEMA_PATH.read_text()), ())
    return cases


@pytest.mark.parametrize("field,recipe", _null_cases(), ids=[c[0] for c in _null_cases()])
def test_null_field_is_one_line(workdir: Path, field: str, recipe: dict) -> None:
    import yaml

    (workdir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(UserError) as info:
        load_recipe("recipe.yaml")
    err = info.value
    assert err.field == field, str(err)
    assert err.location is not None and err.location.line is not None, str(err)
    assert "null" in err.message and "\n" not in str(err), str(err)


def test_source_with_no_value(workdir: Path) -> None:
    (workdir / "recipe.yaml").write_text("source:\n" + BODY)
    with pytest.raises(UserError) as info:
        load_recipe("recipe.yaml")
    assert str(info.value) == "recipe.yaml:1:1: source: expected a mapping, got nothing (null)"
