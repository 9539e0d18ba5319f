"""Load a model library and its weights, checking they belong together before anything runs.

MLC users meet a lib/weights mismatch as "Cannot find parameter in cache" deep inside the
runtime. Here the library's `_metadata` (quantization, ordered params with shapes and dtypes) is
compared with `tensor-cache.json` first, and the first difference is reported in one line.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mlcbuild.artifact import CHAT_CONFIG, TENSOR_CACHE, TOKENIZER_JSON, ChatConfig
from mlcbuild.artifact.tensor_cache import TensorCacheIndex
from mlcbuild.errors import Location, UserError


class WeightsMismatchError(UserError):
    """The weights (or config) do not belong to the model library."""


def _fmt(dtype: str, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def check_weights(
    metadata: Mapping[str, Any],
    index: TensorCacheIndex,
    chat_config: ChatConfig | None = None,
    lib_name: str = "model library",
) -> None:
    """Raise WeightsMismatchError naming the first difference between a library and its weights."""
    where = f"{lib_name} vs {index.folder}"
    lib_quant = metadata.get("quantization")
    if chat_config is not None:
        for key, value in (("model_type", chat_config.model_type), ("quantization", chat_config.quantization)):
            if key in metadata and value != metadata[key]:
                raise WeightsMismatchError(
                    f"{where}: {CHAT_CONFIG} says {key}={value!r} but the library was built for {metadata[key]!r}"
                )
    cache_quant = index.metadata.get("quantization")
    if cache_quant is not None and lib_quant is not None and cache_quant != lib_quant:
        raise WeightsMismatchError(
            f"{where}: weights are quantized as {cache_quant!r} but the library expects {lib_quant!r}"
        )
    expected = metadata.get("params") or []
    for entry in expected:
        name = entry["name"]
        rec = index.records.get(name)
        want = _fmt(entry["dtype"], entry["shape"])
        if rec is None:
            hint = f" (weights quantization: {cache_quant})" if cache_quant else ""
            raise WeightsMismatchError(
                f"{where}: parameter {name!r} ({want}) is missing from {TENSOR_CACHE}; "
                f"library quantization {lib_quant!r}{hint}"
            )
        have = _fmt(rec.dtype, rec.shape)
        if list(rec.shape) != [int(d) for d in entry["shape"]] or rec.dtype != entry["dtype"]:
            raise WeightsMismatchError(
                f"{where}: parameter {name!r} is {have} in {TENSOR_CACHE} but the library expects {want} "
                f"(library quantization {lib_quant!r})"
            )
    known = {entry["name"] for entry in expected}
    for name in index.records:
        if name not in known:
            raise WeightsMismatchError(
                f"{where}: {TENSOR_CACHE} has parameter {name!r} that the library does not take "
                f"(library quantization {lib_quant!r})"
            )


_TENSOR_CACHE_LOCK = threading.Lock()
"""TVM's tensor cache is one per process: a load, the lookups and the clear happen together."""


def load_params(metadata: Mapping[str, Any], index: TensorCacheIndex, device: Any) -> Any:
    """The library's parameters, by name in its `_metadata` order, on `device`: read by TVM's own
    tensor-cache builtins as MLC's runtimes read them (so each record's `format`, e.g. MLC's
    f32-to-bf16, is decoded by the same code). A folder indexed by `ndarray-cache.json` is read
    through a view that names it `tensor-cache.json`."""
    import tvm

    names = [entry["name"] for entry in metadata.get("params") or []]
    with _TENSOR_CACHE_LOCK, _tensor_cache_folder(index) as folder:
        tvm.get_global_func("vm.builtin.tensor_cache.load")(str(folder), device.dlpack_device_type(), device.index)
        try:
            return tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")(names)
        finally:
            tvm.get_global_func("vm.builtin.tensor_cache.clear")()


@contextlib.contextmanager
def _tensor_cache_folder(index: TensorCacheIndex) -> Iterator[Path]:
    if index.index_name == TENSOR_CACHE:
        yield index.folder
        return
    with tempfile.TemporaryDirectory(prefix="mlcbuild-legacy-cache-") as tmp:
        view = Path(tmp)
        (view / TENSOR_CACHE).symlink_to(index.path.resolve())
        for shard in index.shards:
            target = view / shard.data_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((index.folder / shard.data_path).resolve())
        yield view


def read_library_metadata(vm: Any) -> dict[str, Any]:
    """`_metadata()` of a loaded Relax VM, parsed."""
    try:
        fn = vm["_metadata"]
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise WeightsMismatchError(f"the model library has no _metadata function ({exc})") from None
    try:
        metadata = json.loads(str(fn()))
    except ValueError as exc:
        raise WeightsMismatchError(f"the model library's _metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise WeightsMismatchError("the model library's _metadata is not a JSON object")
    return metadata


@dataclass(frozen=True)
class ModelFolder:
    """A model folder's config, weights index and tokenizer, each checked (md5s included)."""

    config: ChatConfig | None
    index: TensorCacheIndex
    tokenizer: Any
    adds_bos: bool = False


def open_model_folder(model_dir: Path, weights_dir: Path | None = None) -> ModelFolder:
    """Everything a run reads besides the library, checked before TVM is touched; one line per problem."""
    config_path = model_dir / CHAT_CONFIG
    config = ChatConfig.read(config_path) if config_path.exists() else None
    index = TensorCacheIndex.read(weights_dir or model_dir)
    index.verify()
    tokenizer_path = model_dir / TOKENIZER_JSON
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path.exists() or tokenizer_path.is_symlink() else None
    return ModelFolder(config, index, tokenizer, adds_bos(model_dir, config))


def adds_bos(model_dir: Path, config: ChatConfig | None) -> bool:
    """Whether a raw prompt starts with bos_token_id: tokenizer_config.json's `add_bos_token` when it
    says, else the model family's default (`ModelFamily.adds_bos`)."""
    from mlcbuild.artifact.names import MAX_JSON_BYTES
    from mlcbuild.inputs import read_json
    from mlcbuild.models import MODELS

    path = model_dir / "tokenizer_config.json"
    if path.is_file():
        flag = read_json(path, str(path), MAX_JSON_BYTES).get("add_bos_token")
        if isinstance(flag, bool):
            return flag
    family = MODELS.get(config.model_type) if config is not None else None
    return family.adds_bos if family is not None else False


def load_tokenizer(path: Path) -> Any:
    """A HF `tokenizers.Tokenizer` from tokenizer.json; garbage is one line naming the file."""
    from tokenizers import Tokenizer

    from mlcbuild.artifact.names import MAX_JSON_BYTES
    from mlcbuild.inputs import read_bytes

    raw = read_bytes(path, str(path), MAX_JSON_BYTES, what=path.name)
    try:
        return Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"not a valid tokenizer ({reason})", Location(path)) from None
