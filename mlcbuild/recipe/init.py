"""`mlcbuild init HF_ID|FOLDER`: a starter recipe filled in from the model's own config.json —
its architecture (`model_type`), a template (`auto` when the tokenizer carries a chat template,
else the family's default) and the sizes gen-config would derive (context window, prefill chunk),
written out so they can be edited. An already-converted MLC folder (or `mlc-ai/*-MLC` repo) gets
the one quantization it was converted with and nothing to convert. An architecture no family
builds is one line, before anything is written."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import UserError

DEFAULT_QUANTIZATION = "q4f16_1"
DEFAULT_TARGETS = ("llvm",)


@dataclass
class Starter:
    """What a starter recipe says, before it is written as YAML."""

    name: str
    source: dict[str, str]
    quantizations: list[str]
    model_type: str | None = None
    conv_template: str | None = None
    overrides: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read(folder: Path, name: str) -> Mapping[str, Any] | None:
    from mlcbuild.inputs import read_json

    path = folder / name
    return read_json(path, str(path)) if path.is_file() else None


def _hub_files(repo: str, required: str, optional: tuple[str, ...] = ()) -> Path:
    """The HF-cache folder holding the repo's `required` file (and what it has of `optional`) at
    main, fetched with the hub client; a repo missing `required` is one line."""
    from huggingface_hub import hf_hub_download

    from mlcbuild.errors import MlcbuildError, StepError
    from mlcbuild.hub import cache_dir, endpoint, hf_token, hub_errors

    def fetch(name: str) -> Path:
        with hub_errors(repo, "main"):
            return Path(hf_hub_download(repo, name, revision="main", cache_dir=cache_dir(), endpoint=endpoint(), token=hf_token()))

    try:
        folder = fetch(required).parent
    except StepError as e:
        if "file missing" in str(e):
            raise UserError(f"{repo} has no {required}: not a model repo mlcbuild can build") from None
        raise
    for name in optional:
        try:
            fetch(name)
        except MlcbuildError:
            pass
    return folder


def _has_chat_template(folder: Path) -> bool:
    tokenizer_config = _read(folder, "tokenizer_config.json") or {}
    return bool(tokenizer_config.get("chat_template")) or (folder / "chat_template.jinja").is_file()


def _from_checkpoint(folder: Path, shown: str, name: str, source: dict[str, str]) -> Starter:
    from mlcbuild.models import MODELS, detect_model_type

    hf = _read(folder, "config.json")
    if hf is None:
        raise UserError(f"{shown}: no config.json (expected a Hugging Face model folder or repo)")
    try:
        model_type = detect_model_type(hf)
    except UserError as e:
        raise UserError(f"{shown}: {e.message}") from None
    family = MODELS[model_type]
    sized = family.config_from_hf(hf, {})
    starter = Starter(name, source, [DEFAULT_QUANTIZATION], model_type)
    if _has_chat_template(folder) or not family.conv_templates:
        starter.conv_template = "auto"
        starter.notes.append("conv_template auto: fitted to the tokenizer's own chat template at gen-config time")
    else:
        starter.conv_template = family.conv_templates[0]
        starter.notes.append(f"conv_template {starter.conv_template}: {model_type}'s default (the tokenizer has no chat template); `mlcbuild templates` lists the others")
    window, chunk = int(getattr(sized, "context_window_size", 0)), int(getattr(sized, "prefill_chunk_size", 0))
    if window > 0:
        starter.overrides["context_window_size"] = window
    if chunk > 0:
        starter.overrides["prefill_chunk_size"] = chunk
    return starter


def _from_mlc(folder: Path, shown: str, name: str, source: dict[str, str]) -> Starter:
    from mlcbuild.models import MODELS

    config = _read(folder, "mlc-chat-config.json") or {}
    model_type, quant = config.get("model_type"), config.get("quantization")
    if model_type not in MODELS:
        raise UserError(f"{shown}: unsupported model_type {model_type!r} in mlc-chat-config.json; supported: {', '.join(sorted(MODELS))}")
    if not isinstance(quant, str):
        raise UserError(f"{shown}: mlc-chat-config.json has no quantization")
    starter = Starter(name, source, [quant])
    starter.notes.append("an MLC weight folder: nothing is converted; its mlc-chat-config.json is compiled for each target")
    return starter


def starter(spec: str, dest: Path | None) -> Starter:
    """The starter for a local folder or a Hub repo id; `dest` (the recipe file to be) makes a
    local source path relative to it, as recipes resolve theirs."""
    from mlcbuild.recipe.load import hf_repo_problem, name_from_source
    from mlcbuild.weights.model_files import is_mlc_folder, is_mlc_repo

    folder = Path(spec).expanduser()
    if folder.is_dir():
        base = (dest.parent if dest is not None else Path.cwd()).resolve()
        shared = os.path.commonpath([folder.resolve(), base]) != base.anchor
        source = {"path": os.path.relpath(folder.resolve(), base) if dest is not None and shared else str(folder.resolve())}
        name = name_from_source(folder.resolve().name)
        if is_mlc_folder(folder):
            return _from_mlc(folder, spec, name, source)
        return _from_checkpoint(folder, spec, name, source)
    if folder.exists():
        raise UserError(f"{spec} is a file; give a model folder or a Hugging Face repo id (org/name)")
    problem = hf_repo_problem(spec)
    if problem:
        raise UserError(f"{spec}: no such folder, and not a Hugging Face repo id: {problem}")
    source = {"hf": spec, "revision": "main"}
    name = name_from_source(spec.split("/")[-1])
    if is_mlc_repo(spec):
        return _from_mlc(_hub_files(spec, "mlc-chat-config.json"), spec, name, source)
    return _from_checkpoint(_hub_files(spec, "config.json", ("tokenizer_config.json",)), spec, name, source)


def render(start: Starter, command: str) -> str:
    """The recipe's YAML, with a header saying where it came from and what to edit."""
    lines = [f"# written by `{command}`; edit freely. Fields: README.md, recipe.schema.json."]
    lines += [f"# {note}" for note in start.notes]
    lines.append(f"name: {json.dumps(start.name)}")
    key, value = next(iter(start.source.items()))
    extra = "".join(f", {k}: {json.dumps(v)}" for k, v in list(start.source.items())[1:])
    lines.append(f"source: {{{key}: {json.dumps(value)}{extra}}}")
    if start.model_type:
        lines.append(f"model_type: {start.model_type}")
    lines.append(f"quantizations: [{', '.join(start.quantizations)}]")
    lines.append(f"targets: [{', '.join(DEFAULT_TARGETS)}]  # `mlcbuild targets`: cuda, metal, vulkan, webgpu, ...")
    if start.conv_template:
        lines.append(f"conv_template: {start.conv_template}")
    if start.overrides:
        lines.append("overrides:  # from config.json; smaller sizes use less memory")
        lines += [f"  {k}: {v}" for k, v in start.overrides.items()]
    lines.append("output: dist")
    return "\n".join(lines) + "\n"
