"""`lock`, `verify`, `targets`, `templates`: pin what a recipe builds from, check what was built,
list what a recipe may name."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from mlcbuild.cli.common import console, open_store
from mlcbuild.cli.main import command

VERIFY_HELP = """\
Re-hash each file of an artifact and compare it with its provenance statement
(<artifact>.provenance.json): exit 1 naming each missing, changed or unlisted file,
and each subject that is not a file inside the artifact (never hashed).

What this promises: integrity against the provenance file beside the artifact. Whoever
can write the artifact can write that file too, so it proves nothing about who built it.
Authenticity needs a signature: a build with --signing-key / $MLCBUILD_SIGNING_KEY (the
key that signs cache entries) writes a DSSE envelope, <artifact>.provenance.dsse.json;
with $MLCBUILD_TRUSTED_KEYS set, verify also requires that a trusted key signed exactly
this statement and reports "signed by <key id>", or "unsigned" / "bad signature" as a
finding (exit 1)."""


def add_parsers(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    lk = subcommand("lock", help="pin each HF revision to its commit sha")
    lk.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    lk.add_argument("--check", action="store_true", help="fail if the lock file would change")

    v = subcommand(
        "verify",
        help="check artifacts on disk against their provenance (sha256 of each file)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=VERIFY_HELP,
    )
    v.add_argument("artifacts", nargs="+", type=Path, help="a model folder, a library, a .provenance.json, or a folder of artifacts (dist/)")

    subcommand("targets", help="which targets this machine can build, and why not")
    subcommand("templates", help="conversation templates a recipe's conv_template may name (default: auto)")


@command("verify")
def verify_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.provenance import artifacts_under, provenance_path, trusted_keys, verify_artifact

    trusted = trusted_keys()
    failed = 0
    given: list[Path] = []
    for path in args.artifacts:
        inside = artifacts_under(path) if path.is_dir() and not provenance_path(path).exists() else []
        given += inside or [path]
    for artifact in given:
        found = verify_artifact(artifact, trusted)
        for problem in found.problems:
            print(f"{artifact}: {problem}")
        if found.problems:
            failed += 1
        else:
            print(f"ok: {artifact} matches its provenance ({found.signer if trusted is not None else 'integrity only: no MLCBUILD_TRUSTED_KEYS'})")
    return 1 if failed else 0


@command("lock")
def lock_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.plan.revisions import resolve
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.recipe.lock import check_lock, lock_path, update_lock

    for path in args.recipes:
        recipe = load_recipe(path, open_store([path]).root)
        if recipe.source.hf is None:
            console().print(f"{path}: local source, nothing to lock")
        elif args.check:
            check_lock(recipe)
            console().print(f"{lock_path(recipe)}: up to date")
        else:
            _, changed = update_lock(recipe, resolve)
            console().print(f"{lock_path(recipe)}: {'updated' if changed else 'unchanged'}")
    return 0


@command("targets")
def targets_cmd(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from mlcbuild.targets import load_targets
    from mlcbuild.toolchain import check_available

    targets = sorted(load_targets().items())
    table = Table(title="targets", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for col in ("target", "variants", "suffix", "toolchain", "buildable here", "CI runner"):
        table.add_column(col, no_wrap=col in ("target", "suffix"))
    for name, target in targets:
        missing = check_available(target, target.default_variant)
        pins = target.resolve().toolchain_versions
        table.add_row(
            name,
            ", ".join(target.variants) or "-",
            target.suffix,
            ", ".join(f"{t} {pins[t]} (pinned)" if t in pins else t for t in target.toolchain) or "-",
            "[green]yes[/]" if missing is None else f"[red]no[/]: {missing}",
            ", ".join(target.runner_labels()),
        )
    console().print(table)
    for name, target in targets:
        console().print(f"[bold]{name}[/]: {target.description}")
    return 0


@command("templates")
def templates_cmd(args: argparse.Namespace) -> int:
    """Each template: its roles and one line of what it renders (a table; tab-separated off a terminal)."""
    from mlcbuild.templates import AUTO, CONV_TEMPLATES, describe

    rows = [(AUTO, "-", "fitted to the checkpoint's own chat template at gen-config time", "the default")]
    for name in sorted(CONV_TEMPLATES):
        conv = CONV_TEMPLATES[name]
        notes = []
        if conv.strip_reasoning_in_history:
            notes.append("strips <think> from history")
        if conv.system_prefix_token_ids:
            notes.append(f"bos ids {conv.system_prefix_token_ids}")
        notes.append(f"stop ids {conv.stop_token_ids}")
        roles = " / ".join(f"{r}={v!r}" for r, v in conv.roles.items())
        rows.append((name, roles, describe(conv), ", ".join(notes)))
    out = console()
    if not out.is_terminal:
        for row in rows:
            print("\t".join(row))
        return 0
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="conversation templates (S: system message, U: user message)", box=box.SIMPLE_HEAD,
                  pad_edge=False, title_justify="left")
    for col in ("template", "roles", "renders", "notes"):
        table.add_column(col, no_wrap=col == "template", overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    out.print(table)
    return 0
