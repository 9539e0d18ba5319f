"""download: a Hugging Face repo pinned to a commit, or a local folder, as one flat model folder.

Only the files a build needs are fetched (config, tokenizer, one weight format), through the
real huggingface_hub client so the user's HF cache is shared with every other HF tool.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Mapping

from mlcbuild.errors import Location, StepError, UserError
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.weights.model_files import (
    DEFAULT_PATTERNS,
    is_weight_file,
    local_file_problem,
    local_model_files,
    matches,
    select_files,
)

def lfs_sha256(snapshot_file: Path) -> str | None:
    """The sha256 the Hub stated for an LFS file when it was downloaded: the HF cache names LFS blobs
    by it (the X-Linked-Etag of the download); other blobs are named by their git sha1."""
    name = snapshot_file.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def _progress_bar_class(report: Callable[[float, str], None], label: str) -> type:
    """A silent tqdm that forwards byte progress of snapshot_download to ctx.progress."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            kwargs.pop("name", None)
            self._bytes = kwargs.get("unit") == "B"
            self._done = float(kwargs.get("initial") or 0)  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)
            self.total = kwargs.get("total")

        def update(self, n: float | None = 1) -> bool | None:
            self._done += n or 0
            if self._bytes and self.total:
                report(min(self._done / float(self.total), 1.0), f"{label}: {self._done / 1e6:.1f} MB")
            return None

    return Bar


JSON_FILES: dict[str, int] = {
    "config.json": 16 << 20,
    "generation_config.json": 16 << 20,
    "tokenizer_config.json": 64 << 20,
    "special_tokens_map.json": 16 << 20,
    "added_tokens.json": 64 << 20,
    "vocab.json": 256 << 20,
    "tokenizer.json": 256 << 20,
}
"""The JSON files of a model folder that later steps parse, with a size bound each."""


def check_model_files(folder: Path, shown: Callable[[str], str], names: Iterable[str] | None = None) -> None:
    """Every file later steps parse, checked once where the user's name for it is known.

    convert and gen-config only see a copy in a work folder; a malformed config.json, tokenizer.json,
    index or safetensors header is reported here as one line naming the user's file (`shown(name)`)
    and the field, never a temp path or a traceback.
    """
    from mlcbuild.inputs import read_json
    from mlcbuild.weights.hf_source import read_safetensors_header, weight_map_files

    def user_error(message: str, location: Location | None, field: str | None = None) -> UserError:
        return UserError(message, location, field)

    present = set(names) if names is not None else {p.name for p in folder.iterdir()}
    for name, limit in JSON_FILES.items():
        if name in present:
            data = read_json(folder / name, shown(name), limit, error=user_error)
            if name == "config.json":
                _check_config(data, shown(name))
            elif name == "tokenizer.json":
                _check_tokenizer(folder / name, shown(name))
    for name in sorted(present):
        if name.endswith(".index.json"):
            files = set(weight_map_files(folder / name, shown(name), error=user_error).values())
            missing = sorted(files - present)
            if missing:
                raise UserError(f"names {missing[0]}, which is not in the model folder", Location(shown(name)), "weight_map")
        elif name.endswith(".safetensors"):
            read_safetensors_header(folder / name, shown(name), error=user_error)


def _check_config(hf: dict, shown: str) -> None:
    """The model family's own checks (types, ranges, head counts) of a config.json we can place."""
    from mlcbuild.models import detect_model_type, get_family
    from mlcbuild.models.config_base import ConfigValueError

    try:
        family = get_family(detect_model_type(hf))
    except UserError:
        return  # the recipe may name model_type; gen-config reports what stays unknown
    try:
        family.config_from_hf(hf, {})
    except ConfigValueError as e:
        if not e.missing:  # a folder fetched for its tokenizer alone may carry a partial config
            raise UserError(e.message, Location(shown), e.field) from None
    except UserError:
        pass  # about the recipe's choices (unsupported features, sizes to override): gen-config says it


def _check_tokenizer(path: Path, shown: str) -> None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UserError(f"not a tokenizer the `tokenizers` library can load ({first})", Location(shown)) from None


class DownloadStep(Step):
    kind: ClassVar[str] = "download"
    version: ClassVar[str] = "1"

    def check(self, params: Mapping[str, JSON]) -> None:
        if "path" in params:
            if not Path(params["path"]).is_dir():
                raise UserError(f"local model folder not found: {params['path']}", field="source.path")
        elif not params.get("repo"):
            raise UserError("download needs either 'path' or 'repo' + 'revision'", field="source")

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        """The repo, not its revision; a local folder's name, not its content or where it sits; and
        whether the weights are fetched (a source has an everything node and a config + tokenizer one)."""
        if "path" in params:
            return {"folder": Path(params["path"]).name, "weights": any(is_weight_file(f) for f in params.get("files") or ())}
        return {"repo": params.get("repo"), "allow_patterns": params.get("allow_patterns")}

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        """A local folder planned with its file list: one of those; else a top-level file matching
        its patterns (what `select_files` can pick)."""
        files = params.get("files")
        if files:
            return rel in files
        return "/" not in rel and matches(rel, params.get("allow_patterns") or DEFAULT_PATTERNS)

    def run(self, ctx: RunContext) -> None:
        if "path" in ctx.params:
            self._adopt_local(Path(ctx.params["path"]), ctx)
        else:
            self._download(ctx)

    def _adopt_local(self, folder: Path, ctx: RunContext) -> None:
        """The folder's files, adopted under the digests planning computed (no copy here)."""
        if not folder.is_dir():
            raise StepError(f"local model folder not found: {folder}")
        patterns = ctx.params.get("allow_patterns") or DEFAULT_PATTERNS
        names = list(ctx.params.get("files") or local_model_files(folder, patterns))
        if not names:
            raise StepError(f"no model files in {folder} (looked for {', '.join(patterns)})")
        changed = f"{folder} changed while the build was running; run the build again"
        for name in names:
            if not (folder / name).exists():
                raise StepError(f"{folder / name} disappeared since planning; re-run the build")
            problem = local_file_problem(folder, name)
            if problem:
                raise UserError(problem)
        digests: dict[str, str] = dict(ctx.params.get("digests") or {})
        if "content" in ctx.params and set(digests) != set(names):
            from mlcbuild.store.hashing import sha256_file

            digests = {name: sha256_file(folder / name) for name in names}
        if "content" in ctx.params:
            from mlcbuild.store.manifest import sha256_json

            if sha256_json({name: digests[name] for name in names}) != ctx.params["content"]:
                raise StepError(changed)
        check_model_files(folder, lambda name: str(folder / name), names)
        for i, name in enumerate(names):
            ctx.adopt(name, folder / name, digests.get(name), changed)
            ctx.progress((i + 1) / len(names), name)

    def _download(self, ctx: RunContext) -> None:
        from mlcbuild import hub

        if not ctx.params.get("revision"):
            raise StepError(f"'{ctx.params['repo']}': the revision was never pinned to a commit; run `mlcbuild lock`")
        repo, revision = str(ctx.params["repo"]), str(ctx.params["revision"])
        patterns = list(ctx.params.get("allow_patterns") or DEFAULT_PATTERNS)
        with hub.hub_errors(repo, revision, force=StepError):
            names = self._cached_listing(repo, revision)
            stated: dict[str, str] = {}
            if names is None:
                info = hub.model_info(repo, revision, files_metadata=True)
                revision = info.sha or revision
                names = [s.rfilename for s in info.siblings or []]
                stated = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs}
            wanted = select_files(names, patterns)
            if not wanted:
                raise StepError(f"no model files in Hugging Face repo '{repo}'@{revision} matching {patterns}")
            folder = self._snapshot(repo, revision, wanted, ctx)
        for name in wanted:
            src = folder / name
            if not src.exists():
                raise StepError(f"'{repo}'@{revision}: {name} missing after download")
        check_model_files(folder, lambda name: f"{repo}@{revision[:12]}/{name}", wanted)
        for name in wanted:
            src = folder / name
            sha256 = stated.get(name) or lfs_sha256(src)
            corrupt = (
                f"corrupt download: {name} of '{repo}'@{revision[:12]} does not hash to the sha256 the Hub states "
                f"({(sha256 or '')[:12]}); delete {src.resolve()} and build again"
            )
            ctx.adopt(Path(name).name, src, sha256, corrupt)

    @staticmethod
    def _cached_listing(repo: str, revision: str) -> list[str] | None:
        """The file list of a commit already seen, from the HF cache: a warm download needs no network."""
        from mlcbuild import hub

        if not hub.is_commit_sha(revision):
            return None
        try:
            from huggingface_hub import get_cached_repo_tree
            from huggingface_hub.errors import CachedRepoTreeNotFoundError
        except ImportError:
            return None
        try:
            return [f.path for f in get_cached_repo_tree(repo, revision=revision, cache_dir=hub.cache_dir())]
        except CachedRepoTreeNotFoundError:
            return None

    @staticmethod
    def _snapshot(repo: str, revision: str, names: list[str], ctx: RunContext) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        from mlcbuild import hub

        exact = [glob.escape(n) for n in names]
        common = dict(repo_id=repo, revision=revision, cache_dir=hub.cache_dir(), allow_patterns=exact)
        try:
            folder = Path(snapshot_download(**common, local_files_only=True))
            if all((folder / n).is_file() for n in names):
                return folder
        except LocalEntryNotFoundError:
            pass
        ctx.progress(0.0, f"downloading {repo}@{revision[:12]}")
        return Path(
            snapshot_download(
                **common,
                endpoint=hub.endpoint(),
                token=hub.hf_token(),
                tqdm_class=_progress_bar_class(ctx.progress, repo),
            )
        )
