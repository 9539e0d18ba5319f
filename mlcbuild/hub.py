"""Hugging Face Hub helpers shared by the download step and `mlcbuild lock`.

huggingface_hub is imported inside functions so recipe loading and planning stay light. Endpoint and
cache are read from the environment at call time (the client freezes them at import time), so a
process that sets HF_ENDPOINT after importing huggingface_hub still talks to the right server.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlcbuild.errors import MlcbuildError, StepError, UserError, redact_logs

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT_SHA = re.compile(r"^[0-9a-fA-F]{40}$")
"""A full commit sha, any case (the one pattern: lock files, recipes and downloads use it)."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> str:
    """The user's HF hub cache, resolved like huggingface_hub does, but now rather than at import."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.path.expandvars(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")


def offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def remedies(repo: str, revision: str) -> str:
    """What a user without the Hub can do, for every error that says the Hub is unreachable."""
    return (
        f"pre-download it into the HF cache where the Hub is reachable (`hf download {repo} --revision {revision}`, "
        f"with HF_HUB_CACHE={cache_dir()}), or build from a local folder (`source: {{path: ...}}`)"
    )


def cached_ref(repo: str, revision: str) -> str | None:
    """The commit sha the HF cache last saw `revision` (a branch or tag) at, as huggingface_hub uses offline."""
    ref = Path(cache_dir()) / f"models--{repo.replace('/', '--')}" / "refs" / revision
    try:
        sha = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    except OSError:
        return None
    return sha.lower() if is_commit_sha(sha) else None


def hf_token(explicit: str | None = None) -> str | None:
    """Explicit token, else HF_TOKEN; None lets the client fall back to its stored login."""
    return explicit or os.environ.get("HF_TOKEN") or None


def is_commit_sha(revision: str) -> bool:
    """A full 40-hex commit sha: immutable, already pinned."""
    return bool(COMMIT_SHA.match(revision))


def describe_error(exc: BaseException, repo: str, revision: str) -> tuple[type[MlcbuildError], str] | None:
    """One line (and the error class) for an exception raised by huggingface_hub or its HTTP layer.

    Returns None for exceptions that are not about the Hub, so callers re-raise those untouched.
    Not-found and gated are the user's to fix (UserError); connectivity and server faults are StepErrors.
    """
    gated, revision_missing, repo_missing, entry_missing, bad_metadata, offline, not_cached, http_error = (
        _hf_error(name)
        for name in (
            "GatedRepoError", "RevisionNotFoundError", "RepositoryNotFoundError", "RemoteEntryNotFoundError",
            "FileMetadataError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError",
        )
    )
    where = f"'{repo}'"
    url = f"{endpoint()}/{repo}"
    if isinstance(exc, gated):
        status = exc.response.status_code if exc.response is not None else None
        if status == 403:
            return UserError, (
                f"Hugging Face repo {where} is gated and your token has no access: request it at {url}"
            )
        return UserError, (
            f"Hugging Face repo {where} is gated: request access at {url}, then set HF_TOKEN "
            "(or run `hf auth login`)"
        )
    if isinstance(exc, revision_missing):
        return UserError, f"revision '{revision}' not found in Hugging Face repo {where}"
    if isinstance(exc, repo_missing):
        return UserError, (
            f"Hugging Face repo {where} not found at {endpoint()} (check the name; a private repo needs HF_TOKEN)"
        )
    if isinstance(exc, entry_missing):
        return StepError, f"file missing from Hugging Face repo {where}@{revision}: {_first_line(exc)}"
    if isinstance(exc, bad_metadata):
        return StepError, f"{endpoint()} does not answer like a Hugging Face Hub: {_first_line(exc)}"
    if isinstance(exc, (offline, *_transport_errors(), not_cached)):
        cause = exc.__cause__ or exc
        reason = "offline mode is on (HF_HUB_OFFLINE)" if isinstance(cause, offline) else (
            f"{type(cause).__name__}: {_first_line(cause)}"
        )
        return StepError, (
            f"cannot reach the Hugging Face Hub at {endpoint()} ({reason}) and {where}@{revision} "
            f"is not in the HF cache: {remedies(repo, revision)}"
        )
    if isinstance(exc, http_error):
        status = exc.response.status_code if exc.response is not None else "?"
        message = (getattr(exc, "server_message", None) or "").strip().splitlines()
        detail = message[0] if message else "no message"
        return StepError, f"Hugging Face Hub error {status} for {where}@{revision}: {detail}"
    return None


class _Absent(Exception):
    """Stands in for an error class this huggingface_hub version does not define."""


def _hf_error(name: str) -> type[BaseException]:
    """An exception class of huggingface_hub by name; they moved between modules across versions."""
    import huggingface_hub.errors
    import huggingface_hub.utils

    return getattr(huggingface_hub.errors, name, None) or getattr(huggingface_hub.utils, name, _Absent)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx", "requests"):
        mod = sys.modules.get(module)
        exc = getattr(mod, "TransportError", None) or getattr(mod, "ConnectionError", None)
        if isinstance(exc, type):
            found.append(exc)
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def hub_errors(repo: str, revision: str, force: type[MlcbuildError] | None = None) -> Iterator[None]:
    """Turn huggingface_hub exceptions into one-line mlcbuild errors (optionally all of one class);
    whatever the client logs meanwhile has its credentials redacted."""
    redact_logs()
    try:
        yield
    except MlcbuildError as exc:
        if force is None or isinstance(exc, force):
            raise
        raise force(str(exc)) from None
    except Exception as exc:
        described = describe_error(exc, repo, revision)
        if described is None:
            raise
        cls, message = described
        raise (force or cls)(message) from None


def model_info(repo: str, revision: str, token_: str | None = None, files_metadata: bool = False):
    """`HfApi.model_info` at the current endpoint; one request, no retries (fast failure offline).
    `files_metadata` asks for each file's size and LFS sha256 (`siblings[].lfs.sha256`)."""
    from huggingface_hub import HfApi

    with hub_errors(repo, revision):
        api = HfApi(endpoint=endpoint(), token=hf_token(token_))
        return api.model_info(repo, revision=revision, files_metadata=files_metadata)


def resolve_revision(repo: str, revision: str, token: str | None = None) -> str:
    """Pin a branch or tag to the commit sha it points at now (what `mlcbuild lock` records).

    A full commit sha is immutable, so it is returned as is without a request.
    """
    if is_commit_sha(revision):
        return revision.lower()
    if offline():
        sha = cached_ref(repo, revision)
        if sha is None:
            raise StepError(
                f"offline mode is on (HF_HUB_OFFLINE) and the HF cache does not know '{repo}'@{revision}: "
                f"{remedies(repo, revision)}"
            )
        return sha
    try:
        info = model_info(repo, revision, token)
    except StepError:
        sha = cached_ref(repo, revision)
        if sha is None:
            raise
        return sha
    if not info.sha:
        raise StepError(f"Hugging Face Hub at {endpoint()} returned no commit sha for '{repo}'@{revision}")
    return info.sha


def snapshot_path(repo: str, sha: str) -> Path:
    """Where huggingface_hub keeps the files of `repo` at commit `sha` in the user's cache."""
    return Path(cache_dir()) / f"models--{repo.replace('/', '--')}" / "snapshots" / sha
