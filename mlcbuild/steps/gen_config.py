"""gen-config: mlc-chat-config.json + tokenizer files, as MLC-LLM's `gen_config` writes them.

Precedence of every value: recipe overrides > generation_config.json > config.json > MLC's
defaults. The output is byte-deterministic (sorted keys, fixed float formatting) so that
early cutoff works: a re-run that changes nothing downstream re-runs nothing downstream.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from mlcbuild.artifact import (
    CHAT_CONFIG,
    RUNTIME_SIZE_FIELDS,
    TOKENIZER_FILES,
    TOKENIZER_JSON,
    ChatConfig,
    RuntimeSizes,
    Sampling,
    TokenIds,
    TokenizerInfo,
    check_sampling,
)
from mlcbuild.errors import StepError, UserError
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.weights.model_files import is_weight_file
from mlcbuild.store.manifest import Manifest

log = logging.getLogger(__name__)

SAMPLING_DEFAULTS: dict[str, float] = Sampling().to_json()
TOKEN_ID_DEFAULTS: dict[str, int] = TokenIds().to_json()
OVERRIDE_KEYS: frozenset[str] = frozenset(RUNTIME_SIZE_FIELDS) | frozenset(SAMPLING_DEFAULTS) | frozenset(TOKEN_ID_DEFAULTS)


def _components(node: Any, list_key: str) -> list[dict]:
    """A tokenizers component, flattened if it is a Sequence."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [c for c in node.get(list_key) or [] if isinstance(c, dict)]
    return [node]


def detect_tokenizer_info(tokenizer_json: Mapping[str, Any] | None) -> TokenizerInfo:
    """ByteLevel vs ByteFallback decoder, a '▁' Prepend normalizer, a leading-space Strip decoder.

    Same rules as MLC's `Tokenizer::DetectTokenizerInfo`, so the runtime decodes identically;
    without tokenizer.json MLC's defaults apply.
    """
    if not tokenizer_json:
        return TokenizerInfo()
    decoders = _components(tokenizer_json.get("decoder"), "decoders")
    method = "byte_fallback"
    for d in decoders:
        if d.get("type") == "ByteLevel":
            method = "byte_level"
        elif d.get("type") == "ByteFallback":
            method = "byte_fallback"
    prepend = any(
        n.get("type") == "Prepend" and n.get("prepend") == "\u2581"
        for n in _components(tokenizer_json.get("normalizer"), "normalizers")
    )
    strip = any(
        d.get("type") == "Strip" and d.get("content") == " " and d.get("start") == 1 and d.get("stop") == 0
        for d in decoders
    )
    return TokenizerInfo(method, prepend, strip)


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    """A JSON object from the source folder, named by its file name: the folder is a work copy
    whose path means nothing to the user (the download step names the user's file)."""
    from mlcbuild.inputs import read_json, step_error

    if not path.exists():
        if required:
            raise StepError(f"{path.name} not found in the model folder")
        return {}
    return read_json(path, path.name, 256 << 20, error=step_error)


def _token_id(value: Any, key: str, where: str) -> int | list[int]:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise UserError(f"{key} must be an integer or a list of integers, got {value!r}", field=where)


def resolve_generation_fields(
    overrides: Mapping[str, Any],
    generation_config: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sampling fields and special token ids by precedence; the first source that has a non-null value wins.

    A sampling value `check_sampling` refuses is an error in the recipe's overrides, but in a
    checkpoint's generation_config.json or config.json it means "not set" (a warning, the next
    source wins): HF refuses such values at generate time (`repetition_penalty: 0`) and MLC's
    runtime at every request, so writing it would make an artifact no runtime loads.
    """
    sources = (("generation_config.json", generation_config), ("config.json", hf_config))
    out: dict[str, Any] = {}
    for key, default in SAMPLING_DEFAULTS.items():
        if overrides.get(key) is not None:
            out[key] = check_sampling(key, overrides[key], field=f"overrides.{key}")
            continue
        out[key] = default
        for name, source in sources:
            if source.get(key) is None:
                continue
            try:
                out[key] = check_sampling(key, source[key])
                break
            except UserError as exc:
                warning = f"{name}: {key} {exc.message}; ignored"
                log.warning("%s", warning)
                if report is not None:
                    report(warning)
    for key, default in TOKEN_ID_DEFAULTS.items():
        out[key] = default
        for name, source in (("overrides", overrides), *sources):
            if source.get(key) is not None:
                out[key] = _token_id(source[key], key, f"overrides.{key}" if name == "overrides" else f"{name}:{key}")
                break
    return out


class GenConfigStep(Step):
    kind: ClassVar[str] = "gen-config"
    version: ClassVar[str] = "3"  # 2: conv_template auto (the default), active_vocab_size = one past the highest id, ids checked against the vocabulary; 3: a checkpoint's out-of-range sampling value is ignored, not written

    def check(self, params: Mapping[str, JSON]) -> None:
        from mlcbuild.templates import AUTO, get_template

        template = params.get("conv_template")
        if isinstance(template, str) and template != AUTO:
            get_template(template)
        unknown = sorted(set(params.get("overrides") or {}) - OVERRIDE_KEYS)
        if unknown:
            raise UserError(
                f"unknown override '{unknown[0]}'; known: {', '.join(sorted(OVERRIDE_KEYS))}",
                field=f"overrides.{unknown[0]}",
            )

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        """Template and overrides are settings of this node, not what names it."""
        return {"quantization": params.get("quantization")}

    def view(self, role: str, manifest: Manifest, read: Callable[[str], bytes]) -> JSON:
        """Only the non-weight files: new weights of the same model must not re-run gen-config."""
        return {path: entry.digest for path, entry in sorted(manifest.files.items()) if not is_weight_file(path)}

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        """mlc-chat-config.json and the tokenizer files it copies."""
        return rel == CHAT_CONFIG or rel in TOKENIZER_FILES

    def run(self, ctx: RunContext) -> None:
        source = Path(ctx.inputs["source"])
        self.check(ctx.params)
        config = build_config(source, ctx.out, ctx.params, report=lambda line: ctx.progress(0.5, line))
        (ctx.out / CHAT_CONFIG).write_bytes(config.dumps())
        ctx.progress(1.0, CHAT_CONFIG)


def _auto_template(
    source: Path, out: Path, eos_token_id: Any, report: Callable[[str], None] | None, preferred: Sequence[str] = ()
) -> dict[str, Any]:
    """`conv_template: auto`: fitted to the checkpoint's own chat template (mlcbuild.templates.auto)."""
    from mlcbuild.templates.auto import fit_folder

    eos_ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
    fit = fit_folder(source, out / TOKENIZER_JSON, [i for i in eos_ids if isinstance(i, int) and i >= 0], preferred)
    (log.info if fit.exact else log.warning)("%s", fit.summary())
    if report is not None:
        report(fit.summary())
    return fit.conversation.to_json()


def _conv_template(spec: Any) -> dict[str, Any]:
    from mlcbuild.templates import Conversation, get_template

    if isinstance(spec, str):
        return get_template(spec).to_json()
    if isinstance(spec, Mapping):
        try:
            return Conversation.from_json(spec).to_json()
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid conversation template: {exc}", field="conv_template") from None
    raise UserError(f"conv_template must be a template name, got {spec!r}", field="conv_template")


def build_config(
    source: Path, out: Path, params: Mapping[str, Any], report: Callable[[str], None] | None = None
) -> ChatConfig:
    """Write tokenizer files into `out` and return the mlc-chat-config.json object; `report` hears
    how `conv_template: auto` (also what no conv_template means) fitted."""
    from mlcbuild.templates import AUTO
    from mlcbuild.models import detect_model_type, get_family

    overrides = dict(params.get("overrides") or {})
    hf_config = _read_json(source / "config.json", required=True)
    generation_config = _read_json(source / "generation_config.json")
    model_type = params.get("model_type") or detect_model_type(hf_config)
    family = get_family(str(model_type))
    arch = {k: overrides[k] for k in RUNTIME_SIZE_FIELDS if overrides.get(k) is not None}
    model_config = family.config_from_hf(hf_config, arch)
    mc = model_config.to_json()
    for key, value in arch.items():
        mc[key] = int(value)

    tokenizer_files = copy_tokenizer_files(source, out)
    tokenizer_json = _read_json(out / TOKENIZER_JSON) if TOKENIZER_JSON in tokenizer_files else None
    if tokenizer_json:
        _check_added_tokens(tokenizer_json)
    vocab_size = int(mc.get("vocab_size") or hf_config.get("vocab_size") or 0)
    generation = resolve_generation_fields(overrides, generation_config, hf_config, report)
    config = ChatConfig(
        model_type=family.name,
        quantization=params["quantization"],
        model_config=mc,
        vocab_size=vocab_size,
        active_vocab_size=_active_vocab_size(out, tokenizer_json) or vocab_size,
        sizes=RuntimeSizes(**{k: int(mc[k]) for k in RUNTIME_SIZE_FIELDS if k in mc}),
        tokenizer_files=tuple(tokenizer_files),
        tokenizer_info=detect_tokenizer_info(tokenizer_json),
        conv_template=(
            _auto_template(source, out, generation["eos_token_id"], report, family.conv_templates)
            if params.get("conv_template", AUTO) in (AUTO, None)
            else _conv_template(params.get("conv_template"))
        ),
        sampling=Sampling(**{k: generation[k] for k in SAMPLING_DEFAULTS}),
        token_ids=TokenIds(**{k: generation[k] for k in TOKEN_ID_DEFAULTS}),
    )
    check_ids_fit(config)
    return config


def check_ids_fit(config: ChatConfig) -> None:
    """Every token id the runtime will feed the model must have an embedding row: a template's stop
    or system-prefix ids, bos/eos/pad, and every id the tokenizer can produce. Otherwise MLC's
    runtimes read past the embedding table (a crash, or garbage) on the first chat turn."""
    vocab = config.vocab_size
    if vocab <= 0:
        return
    active = config.active_vocab_size
    if active is not None and active > vocab:
        raise UserError(
            f"the tokenizer has {active} tokens but the model's vocabulary (config.json vocab_size) is {vocab}: "
            "tokenizer and weights do not belong together",
            field="source",
        )
    template = config.conv_template if isinstance(config.conv_template, Mapping) else {}
    name = template.get("name", "?")
    sources: list[tuple[str, str, Any]] = [
        ("conv_template", f"template {name!r} stop_token_ids", template.get("stop_token_ids")),
        ("conv_template", f"template {name!r} system_prefix_token_ids", template.get("system_prefix_token_ids")),
        *((f"overrides.{k}", k, getattr(config.token_ids, k)) for k in ("bos_token_id", "eos_token_id")),
    ]
    for field_name, what, ids in sources:
        for token in ids if isinstance(ids, list) else [ids]:
            if isinstance(token, int) and not isinstance(token, bool) and token >= vocab:
                raise UserError(
                    f"{what}: token id {token} is outside the model's vocabulary [0, {vocab}); "
                    "pick a template made for this model (`mlcbuild templates`)" if field_name == "conv_template" else
                    f"{what}: token id {token} is outside the model's vocabulary [0, {vocab})",
                    field=field_name,
                )


def copy_tokenizer_files(source: Path, out: Path) -> list[str]:
    """Copy the tokenizer files present; make tokenizer.json from tokenizer.model when it is missing."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    if "tokenizer.model" in copied and TOKENIZER_JSON not in copied and _convert_sentencepiece(source, out):
        copied.append(TOKENIZER_JSON)
    return copied


def _convert_sentencepiece(source: Path, out: Path) -> bool:
    """MLC's runtime prefers tokenizer.json; transformers can derive it from a SentencePiece model."""
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(source), use_fast=True)
        fast.backend_tokenizer.save(str(out / TOKENIZER_JSON))
        return True
    except Exception as exc:
        log.warning("could not convert tokenizer.model to tokenizer.json (%s); keeping tokenizer.model only", exc)
        return False


def _check_added_tokens(tokenizer_json: Mapping[str, Any]) -> None:
    """Duplicated added tokens make HF tokenizers wrong at runtime (a known model-release mistake)."""
    seen: set[str] = set()
    added = tokenizer_json.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) for t in added):
        raise StepError("tokenizer.json: added_tokens must be a list of objects")
    for token in added:
        content = token.get("content")
        if content in seen:
            raise StepError(f"tokenizer.json lists added token {content!r} twice; remove the duplicate")
        seen.add(content)


def _active_vocab_size(out: Path, tokenizer_json: Mapping[str, Any] | None) -> int | None:
    """One past the highest id the tokenizer can emit (base vocab + added tokens): MLC's
    len(hf_tokenizer) for the usual dense vocabulary, and still every id for a sparse one (the
    softmax gives ids at or past it probability 0)."""
    if not tokenizer_json:
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        vocab = Tokenizer.from_file(str(out / TOKENIZER_JSON)).get_vocab(with_added_tokens=True)
        return max(vocab.values()) + 1 if vocab else None
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise StepError(f"tokenizer.json: not a tokenizer the `tokenizers` library can load ({first})") from None
