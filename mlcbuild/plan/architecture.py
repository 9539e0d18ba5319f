"""An architecture no family builds, or a template that does not fit the model, is a recipe
mistake, found before any weight file moves.

`plan` reads config.json wherever it is at hand without the network (a local folder, the Hugging
Face cache at the pinned commit); `build` also fetches that one small file for a Hub source, so an
unsupported model is exit 2 with the recipe's file:line, never a failed node after the download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlcbuild.errors import MlcbuildError, UserError
from mlcbuild.recipe.model import Recipe

CONFIG = "config.json"


def config_at_hand(recipe: Recipe, revision: str | None, fetch: bool) -> tuple[Mapping[str, Any], str] | None:
    """(config.json as data, where it was read), or None where it cannot be had (yet)."""
    from mlcbuild.inputs import read_json

    src = recipe.source
    if src.path is not None:
        path = Path(src.path) / CONFIG
    elif revision is not None:
        found = _hub_config(src.hf, revision, fetch)
        if found is None:
            return None
        path = found
    else:
        return None
    if not path.is_file():
        return None
    return read_json(path, str(path)), str(path)


def _hub_config(repo: str, revision: str, fetch: bool) -> Path | None:
    from mlcbuild.hub import cache_dir, hub_errors, snapshot_path

    cached = snapshot_path(repo, revision) / CONFIG
    if cached.is_file() or not fetch:
        return cached if cached.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        from mlcbuild.hub import endpoint, hf_token

        with hub_errors(repo, revision):
            return Path(hf_hub_download(repo, CONFIG, revision=revision, cache_dir=cache_dir(), endpoint=endpoint(), token=hf_token()))
    except MlcbuildError:
        return None  # the download node reports what is wrong with the source


def check_architecture(recipe: Recipe, revision: str | None, fetch: bool) -> None:
    """The recipe's `model_type`, or the one config.json names, must be a family mlcbuild builds,
    and a template the recipe names must fit the model's vocabulary."""
    from mlcbuild.models import detect_model_type

    found = config_at_hand(recipe, revision, fetch)
    if found is None:
        return
    hf_config, where = found
    if recipe.model_type is None:
        try:
            detect_model_type(hf_config)
        except UserError as exc:
            raise UserError(f"{where}: {exc.message}", recipe.where("source"), "source") from None
    check_template_fits(recipe, hf_config)


def check_template_fits(recipe: Recipe, hf_config: Mapping[str, Any]) -> None:
    """A named template's stop and system-prefix ids need embedding rows (gen-config checks the
    fitted `auto` template, the tokenizer and generation_config's ids when it runs)."""
    from mlcbuild.templates import AUTO, get_template

    vocab = hf_config.get("vocab_size")
    name = recipe.conv_template
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0 or not isinstance(name, str) or name == AUTO:
        return
    template = get_template(name)
    for what, ids in (("stop_token_ids", template.stop_token_ids), ("system_prefix_token_ids", template.system_prefix_token_ids or [])):
        outside = [i for i in ids if i >= vocab]
        if outside:
            raise UserError(
                f"template {name!r} {what}: token id {outside[0]} is outside the model's vocabulary [0, {vocab}) "
                "(config.json vocab_size); pick a template made for this model (`mlcbuild templates`)",
                recipe.where("conv_template"),
                "conv_template",
            )


def check_mlc_source(recipe: Recipe) -> None:
    """An already-converted MLC folder is compiled as its mlc-chat-config.json says: its model_type
    must be a family mlcbuild builds, and the recipe's quantizations must be the one it was
    converted with (a Hub repo's config is checked by the compile step, after the download)."""
    from mlcbuild.inputs import read_json
    from mlcbuild.models import MODELS
    from mlcbuild.weights.model_files import MLC_CONFIG

    if recipe.source.path is None:
        return
    path = Path(recipe.source.path) / MLC_CONFIG
    config = read_json(path, str(path))
    model_type, quant = config.get("model_type"), config.get("quantization")
    if model_type not in MODELS:
        raise UserError(f"{path}: unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODELS))}", recipe.where("source"), "source")
    if list(recipe.quantizations) != [quant]:
        raise UserError(
            f"the source is an MLC folder converted with {quant}; an MLC folder is compiled, never re-quantized: "
            f"set quantizations: [{quant}]",
            recipe.where("quantizations"),
            "quantizations",
        )
    for field_name in ("overrides", "conv_template", "model_type"):
        if field_name in recipe.locations:
            raise UserError(
                f"the source is an MLC folder: its {MLC_CONFIG} is used as it is; edit it there, or build from the Hugging Face checkpoint",
                recipe.where(field_name),
                field_name,
            )
