"""A remote cache beside the local store: read-through on a local miss, write-through after a build.

Trust rules: an object is taken only when the bytes that arrived hash to its digest and have its
size, checked while they stream into the store's tmp dir; the store receives them only then. An
action entry is taken only when it is well-formed, filed under the key asked for, and (with
trusted keys) signed, within MAX_ENTRY_BYTES, and names only files its step kind declares
(store/entries.py). Anything else: one warning line and a local build. Uploads put objects first
and the entry last, so no reader ever sees an entry whose objects are missing. A remote that fails
(refused, timed out, 5xx, slower than the minimum rate) is dropped for the rest of the run after one
warning: slower, never failed. Each transfer has a deadline: TIMEOUT_S plus its size at MIN_RATE
($MLCBUILD_REMOTE_TIMEOUT seconds, $MLCBUILD_REMOTE_MIN_RATE bytes per second).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlcbuild.errors import MlcbuildError, UserError, print_warning, redact
from mlcbuild.store.cas import ActionResult, Store
from mlcbuild.store.entries import MAX_ENTRY_BYTES, check_entry
from mlcbuild.store.manifest import FileEntry
from mlcbuild.store.remote.base import SCHEMES, STALE_TEMP_S, Backend, InvalidObject, RemoteUnavailable, open_backend, scheme_of
from mlcbuild.store.remote import signing

ENV_REMOTE = "MLCBUILD_REMOTE"
ENV_READ_ONLY = "MLCBUILD_REMOTE_READ_ONLY"
ENV_MIN_RATE = "MLCBUILD_REMOTE_MIN_RATE"
ENV_TIMEOUT = "MLCBUILD_REMOTE_TIMEOUT"
TRANSFER_JOBS = 8
MIN_RATE = 1_000_000.0
"""Bytes per second below which a transfer counts as stalled (a remote slower than this is slower
than building locally for anything but the largest weights)."""
TIMEOUT_S = 10.0
"""The fixed part of every transfer's deadline (connects, a first byte, small entries)."""

Progress = Callable[[float, str], None]


def _positive_env(name: str, default: float) -> float:
    """A rate or timeout from the environment; anything but a positive finite number is one error line."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UserError(f"must be a positive number, got {text!r}", field=name)
    return value


def _reason(error: Exception) -> str:
    """An error as one line of a warning, credentials redacted."""
    return " ".join(redact(str(error)).split())


class _Rejected(Exception):
    """A remote object that is missing, truncated or corrupt: the node is built locally."""


@dataclass
class TransferStats:
    hits: int = 0
    fetched_objects: int = 0
    fetched_bytes: int = 0
    uploaded_entries: int = 0
    uploaded_objects: int = 0
    uploaded_bytes: int = 0
    skipped_objects: int = 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _check_scheme(url: str, origin: str) -> None:
    """A mistyped scheme is the user's mistake (one error line), not a remote that is down."""
    scheme = scheme_of(url)
    if scheme in SCHEMES:
        return
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise UserError(
            f"unknown remote URL scheme '{scheme}://' in {redact(url)} (use a path, file://, s3://, http(s)://,"
            " or another fsspec protocol)",
            field=origin,
        )


@dataclass(frozen=True)
class RemoteSettings:
    """What makes an equal RemoteCache in another process (a Ray worker): picklable, no pools, no
    clients. Keys travel as raw ed25519 bytes."""

    url: str = field(repr=False)
    read_only: bool = False
    signing_key: bytes | None = field(default=None, repr=False)
    trusted_keys: tuple[bytes, ...] | None = None
    min_rate: float = MIN_RATE
    timeout_s: float = TIMEOUT_S

    def open(self, warn: Callable[[str], None] = print_warning) -> "RemoteCache":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        key = None if self.signing_key is None else Ed25519PrivateKey.from_private_bytes(self.signing_key)
        trusted = None
        if self.trusted_keys is not None:
            publics = [Ed25519PublicKey.from_public_bytes(raw) for raw in self.trusted_keys]
            trusted = {signing.key_id(k): k for k in publics}
        return RemoteCache(
            self.url, read_only=self.read_only, signing_key=key, trusted_keys=trusted, warn=warn,
            min_rate=self.min_rate, timeout_s=self.timeout_s,
        )


class RemoteCache:
    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        signing_key: Any | None = None,
        trusted_keys: dict[str, Any] | None = None,
        warn: Callable[[str], None] = print_warning,
        jobs: int = TRANSFER_JOBS,
        backend: Backend | None = None,
        min_rate: float = MIN_RATE,
        timeout_s: float = TIMEOUT_S,
    ):
        self.url = redact(url)
        self.min_rate = min_rate
        self.timeout_s = timeout_s
        self._swept = False
        self._raw_url = url
        self.read_only = read_only
        self.signing_key = signing_key
        self.trusted_keys = trusted_keys
        self.warn = warn
        self.stats = TransferStats()
        self.down = False
        self._backend = backend
        self._lock = threading.Lock()
        self._bad_remote: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mlcbuild-remote")
        self._hasher = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mlcbuild-remote-hash")
        """Hashing chunk n while chunk n is written and chunk n+1 arrives (hashlib and I/O release the GIL)."""

    @classmethod
    def configure(
        cls,
        url: str | None = None,
        *,
        read_only: bool = False,
        signing_key: Path | None = None,
        warn: Callable[[str], None] = print_warning,
    ) -> "RemoteCache | None":
        """From flags, else MLCBUILD_REMOTE / _READ_ONLY / MLCBUILD_SIGNING_KEY / MLCBUILD_TRUSTED_KEYS."""
        origin = "--remote" if url else ENV_REMOTE
        url = url or os.environ.get(ENV_REMOTE)
        if not url:
            return None
        _check_scheme(url, origin)
        read_only = read_only or os.environ.get(ENV_READ_ONLY, "").lower() in ("1", "true", "yes")
        key = None
        if signing_key is not None:
            key = signing.load_signing_key(signing_key, "--signing-key")
        elif os.environ.get(signing.ENV_SIGNING_KEY):
            key = signing.load_signing_key(Path(os.environ[signing.ENV_SIGNING_KEY]), signing.ENV_SIGNING_KEY)
        trusted = None
        if signing.ENV_TRUSTED_KEYS in os.environ:
            trusted = signing.load_trusted_keys(os.environ[signing.ENV_TRUSTED_KEYS])
        return cls(
            url, read_only=read_only, signing_key=key, trusted_keys=trusted, warn=warn,
            min_rate=_positive_env(ENV_MIN_RATE, MIN_RATE), timeout_s=_positive_env(ENV_TIMEOUT, TIMEOUT_S),
        )

    def settings(self) -> RemoteSettings:
        from cryptography.hazmat.primitives import serialization

        raw = serialization.Encoding.Raw
        key = None
        if self.signing_key is not None:
            key = self.signing_key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        trusted = None
        if self.trusted_keys is not None:
            trusted = tuple(k.public_bytes(raw, serialization.PublicFormat.Raw) for _, k in sorted(self.trusted_keys.items()))
        return RemoteSettings(self._raw_url, self.read_only, key, trusted, self.min_rate, self.timeout_s)

    def add_stats(self, other: TransferStats) -> None:
        """Count what another process (a Ray worker) transferred for this run."""
        with self._lock:
            for name, value in vars(other).items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    # -- plumbing ------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """Opened on first use, so a build that never misses never imports s3fs or httpx."""
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(self._raw_url)
            return self._backend

    def deadline(self, size: int) -> float:
        """When a transfer of `size` bytes started now must be done (time.monotonic())."""
        return time.monotonic() + self.timeout_s + size / self.min_rate

    def _trip(self, error: Exception) -> None:
        reason = _reason(error) or type(error).__name__
        with self._lock:
            if self.down:
                return
            self.down = True
        self.warn(f"remote cache {self.url} unavailable ({reason}); using the local cache only for the rest of this run")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._hasher.shutdown(wait=True)

    # -- read ----------------------------------------------------------------
    def get_action(self, key: str) -> ActionResult | None:
        """The remote's entry for key, checked (within MAX_ENTRY_BYTES and the deadline, well-formed,
        signed by a trusted key when keys are trusted, and store/entries.py's check_entry), its
        objects not fetched: what `matrix --affected` asks."""
        if self.down:
            return None
        try:
            data = self.backend.get_action(key, MAX_ENTRY_BYTES, self.deadline(MAX_ENTRY_BYTES))
            if data is None:
                return None
            result = ActionResult.from_json(signing.unseal(data, self.trusted_keys))
            check_entry(result, key, strict=True)
        except RemoteUnavailable as e:
            self._trip(e)
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.warn(f"remote entry {key[:12]} ignored: {' '.join(str(e).split())}; building locally")
            return None
        return result

    def fetch_into(self, store: Store, key: str, progress: Progress | None = None) -> ActionResult | None:
        """On a local miss: the remote's result for key, its objects verified into `store`; else None."""
        result = self.get_action(key)
        if result is None:
            return None
        needed: dict[str, tuple[str, FileEntry]] = {}
        for rel, entry in result.manifest.files.items():
            if not store.has_object(entry.digest):
                needed.setdefault(entry.digest, (rel, entry))
        total = sum(e.size for _, e in needed.values())
        free = shutil.disk_usage(store.tmp_dir).free
        if total > free:
            self.warn(f"remote result {key[:12]}: its objects need {_human(total)}, the cache has {_human(free)} free; building locally")
            return None
        tick = self._ticker(total, "fetching", progress)
        try:
            for _ in self._pool.map(lambda item: self._download(store, *item, tick), needed.values()):
                pass
        except _Rejected as e:
            self.warn(f"remote result {key[:12]}: {e}; building locally")
            return None
        except RemoteUnavailable as e:
            self._trip(e)
            return None
        store.put_action(result)
        with self._lock:
            self.stats.hits += 1
        return result

    def _download(self, store: Store, rel: str, entry: FileEntry, tick: Callable[[int], None]) -> None:
        """Stream one object into the store's tmp dir, hashing as it lands; ingest only a verified copy."""
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix=f"remote-{entry.digest[:12]}-", suffix=".part")
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            size = 0
            hashed: Future | None = None
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in self.backend.get_stream(entry.digest, self.deadline(entry.size)):
                        size += len(chunk)
                        if size > entry.size:
                            break
                        if hashed is not None:
                            hashed.result()
                        hashed = self._hasher.submit(h.update, chunk)
                        f.write(chunk)
                        tick(len(chunk))
            except FileNotFoundError:
                raise _Rejected(f"object {entry.digest[:12]} ({rel}) is missing from the remote") from None
            except InvalidObject as e:
                raise _Rejected(f"object {entry.digest[:12]} ({rel}) is not usable ({e})") from None
            finally:
                if hashed is not None:
                    hashed.result()
            problem = None
            if size != entry.size:
                problem = f"has {'more than ' if size > entry.size else ''}{size} bytes, expected {entry.size}"
            elif h.hexdigest() != entry.digest:
                problem = f"is corrupt (its bytes hash to {h.hexdigest()[:12]})"
            if problem:
                with self._lock:
                    self._bad_remote.add(entry.digest)
                raise _Rejected(f"object {entry.digest[:12]} ({rel}) {problem}")
            if entry.executable:
                os.chmod(tmp, 0o755)
            store.put_file(tmp, move=True, digest=entry.digest)
            with self._lock:
                self.stats.fetched_objects += 1
                self.stats.fetched_bytes += size
        finally:
            tmp.unlink(missing_ok=True)

    # -- write ---------------------------------------------------------------
    def push(self, store: Store, result: ActionResult, progress: Progress | None = None, *, strict: bool = False) -> bool:
        """Upload a result: objects the remote lacks first (in parallel), the entry last. `strict`
        (`cache push`, where no local build follows): a remote that fails is an MlcbuildError, one
        line, instead of a warning. The first push of a run removes stale temp files of others."""
        if self.read_only or self.down:
            return False
        if not self._swept:
            self._swept = True
            try:
                self.backend.remove_stale_temps()
            except (RemoteUnavailable, OSError):
                pass
        objects = {e.digest: e.size for e in result.manifest.files.values()}
        tick = self._ticker(sum(objects.values()), "uploading", progress)

        def upload(item: tuple[str, int]) -> None:
            digest, size = item
            with self._lock:
                known_bad = digest in self._bad_remote
            if not known_bad and self.backend.has(digest):
                with self._lock:
                    self.stats.skipped_objects += 1
                tick(size)
                return
            with open(store.object_path(digest), "rb") as f:
                self.backend.put_stream(digest, f, size, self.deadline(size))
            tick(size)
            with self._lock:
                self._bad_remote.discard(digest)
                self.stats.uploaded_objects += 1
                self.stats.uploaded_bytes += size

        try:
            for _ in self._pool.map(upload, objects.items()):
                pass
            self.backend.put_action(result.key, signing.seal(result.to_json(), self.signing_key))
        except RemoteUnavailable as e:
            if strict:
                raise self._failed(e) from None
            self._trip(e)
            return False
        with self._lock:
            self.stats.uploaded_entries += 1
        return True

    def remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> int:
        """`cache gc --remote`: temp files of uploads that died, older than older_than_s; how many."""
        try:
            return self.backend.remove_stale_temps(older_than_s)
        except RemoteUnavailable as e:
            raise self._failed(e) from None

    def _failed(self, error: RemoteUnavailable) -> MlcbuildError:
        """What a command that needs the remote (push, gc) says when it is unusable: one line."""
        return MlcbuildError(f"remote cache {self.url} unavailable ({_reason(error)})")

    def _ticker(self, total: int, verb: str, progress: Progress | None) -> Callable[[int], None]:
        done = 0
        lock = threading.Lock()

        def tick(n: int) -> None:
            nonlocal done
            if progress is None:
                return
            with lock:
                done += n
                current = done
            progress(current / total if total else 1.0, f"{verb} {_human(current)}/{_human(total)}")

        return tick

    def summary(self) -> str:
        s = self.stats
        parts = []
        if s.hits:
            parts.append(f"{s.hits} results fetched ({s.fetched_objects} objects, {_human(s.fetched_bytes)})")
        if s.uploaded_entries:
            parts.append(
                f"{s.uploaded_entries} results pushed ({s.uploaded_objects} objects, {_human(s.uploaded_bytes)};"
                f" {s.skipped_objects} already there)"
            )
        return f"remote {self.url}: " + ("; ".join(parts) if parts else "nothing transferred")
