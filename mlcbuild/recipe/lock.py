"""Lock files: `<recipe stem>.lock.json` next to the recipe pins each HF `repo@revision` to a commit sha.

A branch or tag moves; a build key needs the sha. `mlcbuild lock` resolves and writes the pins,
`build` uses them, and `build --frozen` (CI) refuses to run when the lock is missing an entry or
holds one the recipe no longer needs. A revision that is already a 40-hex sha needs no entry.
Resolving is the caller's job (`resolve(repo, revision) -> sha`), so this module never touches
the network.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mlcbuild.errors import Location, UserError
from mlcbuild.hub import is_commit_sha
from mlcbuild.recipe.model import Recipe

LOCK_VERSION = 1
SUFFIX = ".lock.json"
Resolver = Callable[[str, str], str]


@dataclass(frozen=True)
class Lock:
    """The pins of one recipe; `exists` is False when there is no lock file yet."""

    path: Path
    revisions: Mapping[str, str] = field(default_factory=dict)
    exists: bool = False

    def get(self, repo: str, revision: str) -> str | None:
        return self.revisions.get(f"{repo}@{revision}")

    def render(self) -> str:
        """The file's exact text: sorted keys, 2-space indent, final newline (diff-friendly, deterministic)."""
        body = {"version": LOCK_VERSION, "sources": dict(sorted(self.revisions.items()))}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def _recipe(recipe: Recipe | Path | str) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    from mlcbuild.recipe.load import load_recipe

    return load_recipe(recipe)


def _recipe_path(recipe: Recipe | Path | str) -> Path:
    return recipe.path if isinstance(recipe, Recipe) else Path(recipe)


def lock_path(recipe: Recipe | Path | str) -> Path:
    """`recipes/redpajama.yaml` → `recipes/redpajama.lock.json`."""
    path = _recipe_path(recipe)
    return path.with_name(path.stem + SUFFIX)


def needed(recipe: Recipe) -> dict[str, tuple[str, str]]:
    """Lock keys the recipe needs: `repo@revision` → (repo, revision), for HF revisions that are not shas."""
    src = recipe.source
    if src.hf is None or is_commit_sha(src.revision):
        return {}
    return {f"{src.hf}@{src.revision}": (src.hf, src.revision)}


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def read_lock(recipe: Recipe | Path | str) -> Lock:
    """The recipe's lock (empty when there is no lock file); a corrupt one is a UserError."""
    from mlcbuild.inputs import read_bytes, regular_file_problem

    path = lock_path(recipe)
    if regular_file_problem(path) == "not found":
        return Lock(path)
    raw = read_bytes(path, _shown(path), 1 << 20, what="lock file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("cannot read lock file: not UTF-8 text", Location(_shown(path))) from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"lock file is not valid JSON ({e.msg}); delete it and run `mlcbuild lock`", Location(_shown(path), e.lineno, e.colno)
        ) from None
    except RecursionError:
        raise UserError("lock file nests too deeply to be a lock file; delete it and run `mlcbuild lock`", Location(_shown(path))) from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        raise UserError("lock file has no 'sources' mapping; delete it and run `mlcbuild lock`", Location(_shown(path)))
    if data.get("version") != LOCK_VERSION:
        raise UserError(f"lock file version {data.get('version')!r} is not {LOCK_VERSION}; run `mlcbuild lock`", Location(_shown(path)), "version")
    revisions: dict[str, str] = {}
    for key, sha in data["sources"].items():
        if not isinstance(sha, str) or not is_commit_sha(sha) or "@" not in key:
            raise UserError(
                f"expected 'org/name@revision': '<40-hex sha>', got {key!r}: {sha!r}", Location(_shown(path)), f"sources.{key}"
            )
        revisions[key] = sha.lower()
    return Lock(path, revisions, exists=True)


def _write(path: Path, text: str) -> None:
    from mlcbuild.store.fs import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def _resolved(resolve: Resolver, repo: str, revision: str) -> str:
    sha = resolve(repo, revision)
    if not isinstance(sha, str) or not is_commit_sha(sha):
        raise UserError(f"resolving {repo}@{revision} gave {sha!r}, not a 40-hex commit sha")
    return sha.lower()


def update_lock(recipe: Recipe | Path | str, resolve: Resolver, refresh: bool = True) -> tuple[Lock, bool]:
    """Pin every HF revision of the recipe and write the lock file; returns (lock, changed).

    refresh=True re-resolves every entry (a branch may have moved); refresh=False resolves only
    missing ones. Entries the recipe no longer needs are dropped; with nothing to pin, no lock file
    is kept. The file is rewritten only when its text changes (atomically: temp file + rename).
    """
    from mlcbuild.inputs import regular_file_problem

    r = _recipe(recipe)
    path = lock_path(r)
    problem = regular_file_problem(path)
    if problem not in (None, "not found"):
        raise UserError(f"lock file {problem}; remove it and run `mlcbuild lock` again", Location(_shown(path)))
    try:
        old = read_lock(r)
    except UserError:
        old = Lock(path, {}, exists=True)
    revisions = {
        key: (old.revisions[key] if not refresh and key in old.revisions else _resolved(resolve, repo, rev))
        for key, (repo, rev) in needed(r).items()
    }
    new = Lock(path, revisions, exists=bool(revisions))
    if not revisions:
        if path.exists():
            path.unlink()
            return new, True
        return new, False
    try:
        current = path.read_text(encoding="utf-8") if old.exists else None
    except OSError:
        current = None
    if current == new.render():
        return new, False
    _write(path, new.render())
    return new, True


def lock_problem(recipe: Recipe, lock: Lock) -> str | None:
    """Why `update_lock(refresh=False)` would change the lock (a missing or unneeded entry), or None."""
    want = needed(recipe)
    missing = [k for k in want if k not in lock.revisions]
    if missing:
        return f"no entry for {missing[0]}" if lock.exists else "no lock file"
    extra = sorted(k for k in lock.revisions if k not in want)
    if extra:
        return f"stale entry {extra[0]}"
    return None


def _revision_error(recipe: Recipe, message: str) -> UserError:
    field_name = "source.revision" if "source.revision" in recipe.locations else "source.hf"
    return UserError(f"{message}; run `mlcbuild lock {_shown(recipe.path)}`", recipe.where(field_name), field_name)


def frozen_error(recipe: Recipe, problem: str) -> UserError:
    """The --frozen failure, pointing at the recipe's revision."""
    return _revision_error(recipe, f"lock file would change ({problem})")


def check_lock(recipe: Recipe | Path | str, lock: Lock | None = None) -> Lock:
    """The lock, if it already pins everything the recipe needs and nothing else (offline; for CI)."""
    r = _recipe(recipe)
    lock = lock if lock is not None else read_lock(r)
    problem = lock_problem(r, lock)
    if problem:
        raise frozen_error(r, problem)
    return lock


def pinned_revision(
    recipe: Recipe | Path | str, lock: Lock | None = None, frozen: bool = False, resolve: Resolver | None = None
) -> str | None:
    """The commit sha to download for the recipe's HF source (None for a local folder).

    A sha revision is used as is. Otherwise the lock's entry; with frozen=True any difference
    between lock and recipe is a UserError. Without frozen, a missing entry is resolved and
    written when `resolve` is given, else it is a UserError asking for `mlcbuild lock`.
    """
    r = _recipe(recipe)
    src = r.source
    if src.hf is None:
        return None
    if is_commit_sha(src.revision):
        if frozen:
            check_lock(r, lock)
        return src.revision.lower()
    lock = lock if lock is not None else read_lock(r)
    if frozen:
        check_lock(r, lock)
    sha = lock.get(src.hf, src.revision)
    if sha is not None:
        return sha
    if resolve is None:
        raise _revision_error(r, f"{src.ref} is not pinned")
    new, _ = update_lock(r, resolve, refresh=False)
    return new.revisions[src.ref or ""]
