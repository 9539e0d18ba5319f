"""Lock files: pins HF revisions to shas; --frozen refuses any change. Resolvers here are fakes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.recipe import load_recipe
from mlcbuild.recipe.lock import (
    Lock,
    check_lock,
    lock_path,
    pinned_revision,
    read_lock,
    update_lock,
)

SHA1 = "1" * 40
SHA2 = "ab" * 20
RECIPE = """\
source:
  hf: org/model
  revision: {revision}
quantizations: [q4f16_1]
targets: [llvm]
conv_template: chatml
"""


class FakeHub:
    """(repo, revision) → sha, counting calls, so tests see when resolving happens."""

    def __init__(self, shas: dict[str, str]):
        self.shas = shas
        self.calls: list[tuple[str, str]] = []

    def __call__(self, repo: str, revision: str) -> str:
        self.calls.append((repo, revision))
        return self.shas[f"{repo}@{revision}"]


def recipe_file(folder: Path, revision: str = "main") -> Path:
    path = folder / "model.yaml"
    path.write_text(RECIPE.format(revision=revision))
    return path


def test_lock_path_is_next_to_recipe(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "recipes" / "redpajama.yaml") == tmp_path / "recipes" / "redpajama.lock.json"
    assert lock_path(recipe_file(tmp_path)) == tmp_path / "model.lock.json"


def test_no_lock_file_reads_empty(tmp_path: Path) -> None:
    lock = read_lock(recipe_file(tmp_path))
    assert lock == Lock(tmp_path / "model.lock.json", {}, exists=False)


def test_update_creates_deterministic_file(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    hub = FakeHub({"org/model@main": SHA1.upper()})
    lock, changed = update_lock(path, hub)
    assert changed
    assert lock.revisions == {"org/model@main": SHA1}
    text = lock_path(path).read_text()
    assert text == json.dumps({"sources": {"org/model@main": SHA1}, "version": 1}, indent=2, sort_keys=True) + "\n"
    mtime = lock_path(path).stat().st_mtime_ns
    again, changed = update_lock(path, hub)
    assert not changed and again == lock
    assert lock_path(path).read_text() == text
    assert lock_path(path).stat().st_mtime_ns == mtime
    assert read_lock(path) == lock
    assert list(tmp_path.glob(".*tmp")) == []


def test_update_follows_a_moved_branch(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    hub = FakeHub({"org/model@main": SHA1})
    update_lock(path, hub)
    hub.shas["org/model@main"] = SHA2
    kept, changed = update_lock(path, hub, refresh=False)
    assert not changed and kept.revisions["org/model@main"] == SHA1
    moved, changed = update_lock(path, hub)
    assert changed and moved.revisions["org/model@main"] == SHA2
    assert read_lock(path).revisions == {"org/model@main": SHA2}


def test_update_drops_entries_no_longer_needed(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    hub = FakeHub({"org/model@main": SHA1, "org/model@v2": SHA2})
    update_lock(path, hub)
    recipe_file(tmp_path, "v2")
    lock, changed = update_lock(path, hub)
    assert changed and lock.revisions == {"org/model@v2": SHA2}


def test_sha_revision_needs_no_lock(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    update_lock(path, FakeHub({"org/model@main": SHA1}))
    recipe_file(tmp_path, SHA2)
    hub = FakeHub({})
    lock, changed = update_lock(path, hub)
    assert changed and not lock_path(path).exists() and hub.calls == []
    assert update_lock(path, hub) == (Lock(lock_path(path)), False)
    assert pinned_revision(path, frozen=True) == SHA2


def test_local_source_has_no_revision(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    path = tmp_path / "local.yaml"
    path.write_text(RECIPE.replace("hf: org/model\n  revision: {revision}", "path: m"))
    assert pinned_revision(path, frozen=True) is None
    assert update_lock(path, FakeHub({})) == (Lock(tmp_path / "local.lock.json"), False)


def test_frozen_without_lock_fails_at_the_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe_file(tmp_path)
    recipe = load_recipe("model.yaml")
    with pytest.raises(UserError) as info:
        pinned_revision(recipe, frozen=True)
    assert str(info.value) == (
        "model.yaml:3:13: source.revision: lock file would change (no lock file); run `mlcbuild lock model.yaml`"
    )
    assert info.value.exit_code == 2


def test_frozen_with_lock_uses_it_without_resolving(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    update_lock(path, FakeHub({"org/model@main": SHA1}))
    recipe = load_recipe(path)
    assert pinned_revision(recipe, read_lock(recipe), frozen=True) == SHA1
    assert check_lock(recipe).revisions == {"org/model@main": SHA1}


def test_frozen_stale_after_revision_edit(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    update_lock(path, FakeHub({"org/model@main": SHA1}))
    recipe_file(tmp_path, "v2")
    with pytest.raises(UserError, match=r"lock file would change \(no entry for org/model@v2\); run `mlcbuild lock"):
        pinned_revision(path, frozen=True)


def test_frozen_fails_on_extra_entry(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    lock_path(path).write_text(json.dumps({"version": 1, "sources": {"org/model@main": SHA1, "org/old@main": SHA2}}))
    assert pinned_revision(path) == SHA1
    with pytest.raises(UserError, match=r"stale entry org/old@main"):
        pinned_revision(path, frozen=True)


def test_unfrozen_missing_entry_resolves_and_writes(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    hub = FakeHub({"org/model@main": SHA1})
    assert pinned_revision(path, resolve=hub) == SHA1
    assert read_lock(path).revisions == {"org/model@main": SHA1}
    assert pinned_revision(path, resolve=hub) == SHA1
    assert hub.calls == [("org/model", "main")]


def test_unfrozen_missing_entry_without_resolver(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"source.revision: org/model@main is not pinned; run `mlcbuild lock"):
        pinned_revision(recipe_file(tmp_path))


@pytest.mark.parametrize(
    "text,where,message",
    [
        ('{"version": 1,\n  "sources": {,}}', ":2:15: ", "lock file is not valid JSON"),
        ("[]", ": ", "no 'sources' mapping"),
        ('{"version": 7, "sources": {}}', ": version: ", "version 7 is not 1"),
        ('{"version": 1, "sources": {"org/model@main": "abc"}}', ": sources.org/model@main: ", "40-hex sha"),
    ],
)
def test_corrupt_lock(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = recipe_file(tmp_path)
    lock_path(path).write_text(text)
    with pytest.raises(UserError) as info:
        read_lock(path)
    assert where in str(info.value) and message in str(info.value)
    lock, changed = update_lock(path, FakeHub({"org/model@main": SHA1}))
    assert changed and read_lock(path) == lock


def test_deep_lock_is_one_line(tmp_path: Path) -> None:
    """100k nested lists were a RecursionError (exit 70); now one line naming the file, and `lock` rewrites it."""
    path = recipe_file(tmp_path)
    lock_path(path).write_text('{"version": 1, "sources": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UserError, match=r"model\.lock\.json: lock file nests too deeply") as info:
        read_lock(path)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    lock, changed = update_lock(path, FakeHub({"org/model@main": SHA1}))
    assert changed and read_lock(path) == lock


def test_folder_named_like_the_lock(tmp_path: Path) -> None:
    """A folder at <stem>.lock.json was an IsADirectoryError (exit 70) on reading and on writing."""
    from mlcbuild.cli.main import main

    path = recipe_file(tmp_path)
    lock_path(path).mkdir()
    with pytest.raises(UserError, match=r"model\.lock\.json: lock file is a folder, not a regular file"):
        read_lock(path)
    hub = FakeHub({"org/model@main": SHA1})
    with pytest.raises(UserError, match=r"model\.lock\.json: lock file is a folder, not a regular file; remove it"):
        update_lock(path, hub)
    assert lock_path(path).is_dir()
    assert main(["--cache-dir", str(tmp_path / "cache"), "plan", str(path)]) == 2


def test_bad_resolver_answer(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"resolving org/model@main gave 'main', not a 40-hex commit sha"):
        update_lock(recipe_file(tmp_path), FakeHub({"org/model@main": "main"}))
    assert not (tmp_path / "model.lock.json").exists()


def test_offline_pinning_never_resolves_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcbuild.plan import revisions

    def no_network(repo: str, revision: str) -> str:
        raise AssertionError("offline planning must not resolve")

    monkeypatch.setattr(revisions, "resolve", no_network)
    recipe = load_recipe(recipe_file(tmp_path))
    assert revisions.pin_revisions([recipe], frozen=False, offline=True) == {}
    assert not lock_path(recipe).exists()
    lock_path(recipe).write_text(json.dumps({"version": 1, "sources": {"org/model@main": SHA2.upper()}}))
    assert revisions.pin_revisions([recipe], frozen=False, offline=True) == {str(recipe.path): SHA2}
    (tmp_path / "sha").mkdir()
    sha_recipe = load_recipe(recipe_file(tmp_path / "sha", SHA2))
    assert revisions.pin_revisions([sha_recipe], frozen=False, offline=True) == {str(sha_recipe.path): SHA2}
    lock_path(recipe).unlink()
    with pytest.raises(UserError, match="no lock file"):
        revisions.pin_revisions([recipe], frozen=True, offline=True)


def test_one_commit_sha_pattern() -> None:
    from mlcbuild import hub
    from mlcbuild.recipe import lock

    assert not hasattr(lock, "is_sha") and not hasattr(lock, "_SHA")
    assert hub.is_commit_sha("AB" * 20) and hub.is_commit_sha("ab" * 20)
    assert not hub.is_commit_sha("ab" * 19) and not hub.is_commit_sha("g" * 40)
