"""`cache ls|du|gc|verify|push|pull`: inspect and maintain the cache (store/maintenance.py does the
work), and move a recipe's results to and from a remote (execute/transfer.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlcbuild.cli.common import console, dry_run_report, human_size, open_remote, open_store, prepare_graph
from mlcbuild.cli.main import command, non_negative_float
from mlcbuild.errors import UserError

if TYPE_CHECKING:
    from mlcbuild.store.cas import ActionResult, Store

CACHE_HELP = """\
ls      every cached result: key, kind, what, size, when built
du      disk use: results, objects, quarantined objects, leftovers of killed builds, logs
verify  re-hash every object (finds what the cheap stat check cannot); exit 1 on findings
gc      remove what is not needed. Plain `gc` keeps every well-formed result and the objects
        it names, and removes: objects no result names, malformed result entries,
        quarantined objects, what killed builds left (work dirs no build holds,
        temp files), and no-op/plan stamps that no longer hold. It also clears the
        empty per-key lock files every build leaves (not counted as leftovers). `--keep RECIPE...`
        also drops every result those recipes do not use; `--older-than DAYS` drops
        results built more than DAYS ago (0 drops them all).
        gc waits for running builds (they hold a lease on the cache) and lists what goes;
        `--dry-run` lists it and removes nothing. `--remote FOLDER` also removes the
        temp files of uploads killed over an hour ago from that folder remote."""


def add_parsers(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    c = subcommand(
        "cache",
        help="inspect and maintain the cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=CACHE_HELP,
    )
    c.add_argument("action", choices=["ls", "du", "gc", "verify", "push", "pull"])
    c.add_argument("recipes", nargs="*", type=Path, help="push/pull: what these recipes need, to/from --remote")
    c.add_argument("--keep", nargs="*", type=Path, default=None, help="gc: drop every result these recipes do not use")
    c.add_argument("--older-than", type=non_negative_float, default=None, metavar="DAYS", help="gc: drop results built more than DAYS ago (0: all)")
    c.add_argument("--dry-run", action="store_true", help="gc: print what would be removed, remove nothing")
    c.add_argument("--repair", action="store_true", help="verify: quarantine corrupt objects, delete malformed entries and results naming a missing object (exit 0 once the cache verifies)")


@command("cache")
def cache_cmd(args: argparse.Namespace) -> int:
    if args.action in ("push", "pull"):
        return _cache_transfer(args)
    store = open_store(args.keep or ())
    if args.action == "ls":
        return _cache_ls(store)
    if args.action == "du":
        u = store.usage()
        console().print(
            f"{u['results']} results, {u['objects']} objects, {human_size(u['object_bytes'])} in {store.root}; "
            f"quarantined {u['quarantined']} ({human_size(u['quarantined_bytes'])}), "
            f"leftovers of killed builds {u['leftovers']} ({human_size(u['leftover_bytes'])}), logs {human_size(u['log_bytes'])}"
            + (f"; {u['malformed']} malformed result entries" if u["malformed"] else "")
        )
        return 0
    if args.action == "gc":
        return _cache_gc(args, store)
    problems = store.verify()
    for problem in problems:
        console().print(f"[red]{problem}[/]", soft_wrap=True)
    if problems and args.repair:
        fixed = store.repair()
        console().print(f"repaired {fixed} (corrupt objects quarantined; malformed entries and results naming a missing object deleted: their nodes rebuild)")
        problems = store.verify(rehash=False)
        for problem in problems:
            console().print(f"[red]still: {problem}[/]", soft_wrap=True)
    if problems:
        return 1
    console().print(f"[green]ok[/]: {store.usage()['objects']} objects verified")
    return 0


def _describe(result: "ActionResult") -> str:
    """What a result is: the node that made it (`tiny-talker q0f32`, plus the template of a
    gen-config), else, for an entry from before labels, what its params say."""
    params = result.preimage.get("params", {})
    params = params if isinstance(params, dict) else {}
    if result.label:
        what = result.label.removeprefix(f"{result.preimage.get('kind')} ")
        template = params.get("conv_template")
        return f"{what} ({template})" if result.preimage.get("kind") == "gen-config" and template else what
    what = " ".join(str(v) for k, v in params.items() if k in ("repo", "path", "quantization", "conv_template") and v)
    target = params.get("target")
    if isinstance(target, dict):
        what += f" {target.get('name')}:{target.get('variant') or ''}".rstrip(":")
    return what


def _cache_ls(store: Store) -> int:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"cache {store.root}")
    for col in ("key", "kind", "what", "size", "built", "took"):
        table.add_column(col)
    malformed = 0
    for _, result in store.iter_action_files():
        if isinstance(result, str):
            malformed += 1
            continue
        table.add_row(
            result.key[:12],
            str(result.preimage.get("kind", "?")),
            escape(_describe(result)),
            human_size(result.manifest.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(result.created)),
            f"{result.duration_s:.1f}s",
        )
    console().print(table)
    if malformed:
        console().print(f"{malformed} malformed result entries (a miss for builds; `cache verify` lists them, `cache gc` removes them)")
    return 0


def _cache_gc(args: argparse.Namespace, store: Store) -> int:
    from rich.markup import escape

    keep = _live_keys(args, args.keep) if args.keep is not None else None
    older = args.older_than * 86400 if args.older_than is not None else None
    report = store.gc(
        keep,
        older,
        dry_run=args.dry_run,
        on_wait=lambda: print("mlcbuild: waiting for running builds to finish before gc", file=sys.stderr, flush=True),
    )
    from mlcbuild.execute.noop import prune

    stamps = prune(store.root, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    why = "not used by the kept recipes" if keep is not None else "older than the cutoff"
    for result in report.results:
        console().print(f"{verb} result {result.key[:12]} {result.preimage.get('kind', '?')} {escape(_describe(result))} ({why})", soft_wrap=True)
    for result in report.broken:
        console().print(f"{verb} result {result.key[:12]} {result.preimage.get('kind', '?')} {escape(_describe(result))} (names a missing object)", soft_wrap=True)
    for path in report.malformed:
        console().print(f"{verb} malformed result entry {path}", soft_wrap=True)
    for path in report.leftovers:
        console().print(f"{verb} leftover of a killed build {path}", soft_wrap=True)
    console().print(
        f"{verb} {len(report.results)} results, {report.objects} unreferenced objects ({human_size(report.object_bytes)}), "
        f"{report.quarantined} quarantined objects, {len(report.leftovers)} leftovers, {stamps} stale no-op stamps; "
        f"{'would free' if args.dry_run else 'freed'} {human_size(report.freed)}",
        soft_wrap=True,
    )
    if getattr(args, "remote", None) and not args.dry_run:
        remote = open_remote(args)
        assert remote is not None
        print(f"removed {remote.remove_stale_temps()} stale temp files of killed uploads from {remote.url}")
    return 0


def _cache_transfer(args: argparse.Namespace) -> int:
    from mlcbuild.execute import transfer

    if not args.recipes:
        raise UserError(f"cache {args.action} needs at least one recipe")
    remote = open_remote(args)
    if remote is None:
        raise UserError(f"cache {args.action} needs --remote URL or $MLCBUILD_REMOTE")
    if args.action == "push" and remote.read_only:
        raise UserError("cache push with --remote-read-only would upload nothing")
    _, store, graph = prepare_graph(args, args.recipes)
    try:
        report = (transfer.push if args.action == "push" else transfer.pull)(graph, store, remote)
    finally:
        remote.close()
    verb = "pushed" if args.action == "push" else "pulled"
    print(f"{verb} {len(report.moved)} results, {len(report.present)} already here; {remote.summary()}")
    for label in report.missing:
        why = "not built in the local cache" if args.action == "push" else "not in the remote cache"
        print(f"  {label}: {why}")
    return 1 if remote.down else 0


def _live_keys(args: argparse.Namespace, recipes: list[Path]) -> set[str]:
    """Keys of every node of these recipes whose inputs are cached (what `gc --keep` keeps)."""
    _, store, graph = prepare_graph(args, recipes)
    report = dry_run_report(store, graph)
    return {o.key for o in report.outcomes.values() if o.key}
