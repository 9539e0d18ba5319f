"""The subcommands. Each returns the process exit code."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mlcbuild.cli.main import EXIT_ELSEWHERE, command
from mlcbuild.errors import UserError
from mlcbuild.execute.base import ELSEWHERE
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.recipe.model import Recipe
from mlcbuild.store import default_cache_dir
from mlcbuild.store.cas import Store

if TYPE_CHECKING:
    from rich.console import Console

    from mlcbuild.store.remote import RemoteCache
    from mlcbuild.store.cas import ActionResult
    from mlcbuild.execute.base import BuildReport, Executor, Reporter



@lru_cache(maxsize=None)
def console(stderr: bool = False) -> "Console":
    """rich is imported only when there is something to draw: a no-op build prints one plain line."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _store() -> Store:
    return Store(default_cache_dir())


def _remote(args: argparse.Namespace) -> "RemoteCache | None":
    """The remote cache from --remote/$MLCBUILD_REMOTE, or None; nothing heavy is imported here."""
    from mlcbuild.store.remote import RemoteCache

    return RemoteCache.configure(
        getattr(args, "remote", None),
        read_only=getattr(args, "remote_read_only", False),
        signing_key=getattr(args, "signing_key", None),
        warn=_warn,
    )


def _warn(message: str) -> None:
    """One line on stderr, never wrapped, and above any live progress bars."""
    from rich.text import Text

    console(True).print(Text(f"mlcbuild: warning: {message}"), soft_wrap=True)


def _check(node: Node) -> None:
    from mlcbuild.steps import get_step

    get_step(node.kind).check({**node.params, **node.hints})


def _prepare(args: argparse.Namespace, recipes_arg: list[Path], offline: bool = True) -> tuple[list[Recipe], Store, BuildGraph]:
    """Recipes → graph. offline=True (plan, graph, explain, dry runs): no network, no lock written;
    a revision the lock does not pin is shown unresolved."""
    from mlcbuild.plan.revisions import pin_revisions

    store = _store()
    recipes = [load_recipe(p, store.root) for p in recipes_arg]
    options = PlanOptions(
        quantizations=tuple(getattr(args, "quant", []) or ()),
        targets=tuple(getattr(args, "target", []) or ()),
        revisions=pin_revisions(recipes, frozen=getattr(args, "frozen", False), offline=offline),
        fetch_config=not offline,
    )
    graph = plan(recipes, store, options, check=_check)
    return recipes, store, graph


def _all(graph: BuildGraph) -> set[str]:
    return set(graph.nodes)


def _wanted(args: argparse.Namespace, graph: BuildGraph) -> set[str]:
    """Every node, one matrix cell's (`--only CELL`), or the nodes `--only NODE` names (id prefix or
    part of a label, as `explain` takes them); an unknown name is a UserError naming the cells."""
    only = getattr(args, "only", None)
    if not only:
        return _all(graph)
    from mlcbuild.ci.matrix import cell_nodes, cell_of

    if any(cell_of(n) == only for n in graph.nodes.values()):
        return cell_nodes(graph, only)
    return {n.id for n in graph.find(only)} or cell_nodes(graph, only)


def _elsewhere_reason(graph: BuildGraph, node_id: str) -> str:
    if node_id in graph.unbuildable:
        return graph.unbuildable[node_id]
    blocked = graph.dependents(set(graph.unbuildable))
    dep = next(d for _, d in graph.node(node_id).deps if d in blocked)
    return f"needs {graph.node(dep).label}, which this machine cannot build"


def _report_elsewhere(args: argparse.Namespace, graph: BuildGraph, elsewhere: set[str]) -> None:
    """What could not be built here, and the command that builds it on a machine with the tool."""
    from mlcbuild.ci.matrix import cell_of

    recipes = " ".join(str(p) for p in args.recipes)
    nodes = [n for n in graph.topological() if n.id in elsewhere]
    print(f"not built here: {len(nodes)} node(s) need another machine", file=sys.stderr)
    for node in nodes:
        cell = cell_of(node)
        how = f"mlcbuild build {recipes} --only {cell}" if cell else f"mlcbuild build {recipes}"
        print(f"  {node.label}: {_elsewhere_reason(graph, node.id)}: {how}", file=sys.stderr)
    print(f"  every cell and the runner it needs: mlcbuild matrix {recipes}", file=sys.stderr)


def _mark_elsewhere(graph: BuildGraph, report: "BuildReport", wanted: set[str]) -> set[str]:
    """In a dry run's report, the nodes another machine must build: those this machine cannot build
    (or that need one) and that are not cached here (a cached result needs no toolchain)."""
    from mlcbuild.execute.base import Outcome

    elsewhere = {n for n in graph.elsewhere(wanted) if report.outcomes[n].status != "cached"}
    for node_id in elsewhere:
        before = report.outcomes[node_id]
        report.outcomes[node_id] = Outcome(before.node, ELSEWHERE, before.key, reason=_elsewhere_reason(graph, node_id))
    return elsewhere


def _find(graph: BuildGraph, query: str) -> list[Node]:
    matches = graph.find(query)
    if not matches:
        labels = ", ".join(sorted(n.label for n in graph.nodes.values()))
        raise UserError(f"no node matches '{query}' (give a key or id prefix, or part of a label: {labels})")
    return matches


def _dry_run(store: Store, graph: BuildGraph, wanted: set[str] | None = None, force: bool = False) -> "BuildReport":
    from mlcbuild.execute.decision import Decider, dry_run

    return dry_run(graph, _all(graph) if wanted is None else wanted, Decider(store, graph, force=force))


def _executor(args: argparse.Namespace, store: Store, reporter: "Reporter", remote: "RemoteCache | None") -> "Executor":
    options = dict(keep_going=args.keep_going, force=args.force, reporter=reporter)
    if args.executor == "ray":
        from mlcbuild.execute.ray_executor import RayExecutor

        return RayExecutor(store, address=args.ray_address, remote=remote, **options)
    if args.ray_address is not None:
        raise UserError("--ray-address needs --executor ray", field="--ray-address")
    from mlcbuild.execute.local import LocalExecutor

    return LocalExecutor(store, jobs=args.jobs, remote=remote, **options)


@command("build")
def build(args: argparse.Namespace) -> int:
    from mlcbuild.cli.reporting import RichReporter, summary_table
    from mlcbuild.execute.materialize import materialize
    from mlcbuild.provenance import write_provenance

    recipes, store, graph = _prepare(args, args.recipes, offline=args.dry_run)
    wanted = _wanted(args, graph)
    if args.check:
        from mlcbuild.execute.check import run_check

        elsewhere = graph.elsewhere(wanted)
        code = run_check(graph, wanted - elsewhere, store)
        if elsewhere:
            _report_elsewhere(args, graph, elsewhere)
        return code or (EXIT_ELSEWHERE if elsewhere else 0)
    if args.dry_run:
        report = _dry_run(store, graph, wanted, force=args.force)
        elsewhere = _mark_elsewhere(graph, report, wanted)
        console().print(summary_table(report, title="dry run"))
        if elsewhere:
            _report_elsewhere(args, graph, elsewhere)
        return 0
    remote = _remote(args)
    with RichReporter(lambda: console(True)) as reporter:
        report = _executor(args, store, reporter, remote).run(graph, wanted)
    elsewhere = {node_id for node_id, o in report.outcomes.items() if o.status == ELSEWHERE}
    if remote is not None:
        remote.close()
        if remote.stats.hits or remote.stats.uploaded_entries:
            print(remote.summary(), file=sys.stderr)
    written = materialize(graph, report, store)
    write_provenance(recipes, graph, report, store)
    if report.count("built") or not report.ok:
        console().print(summary_table(report))
        for artifact in sorted({_shown(p if p.parent.name == "libs" else p.parent) for p in written}):
            console().print(f"  [bold]{artifact}[/]")
    elif wanted:
        print(f"up to date: {report.count('cached')} nodes cached, {len(written)} files in place ({report.wall_s:.2f}s)")
    for outcome in report.outcomes.values():
        if outcome.status == "failed":
            console(True).print(f"[bold red]error[/]: {outcome.node.label}: {outcome.reason}", soft_wrap=True)
    if elsewhere:
        _report_elsewhere(args, graph, elsewhere)
    if not report.ok:
        return 1
    if elsewhere:
        return EXIT_ELSEWHERE
    from mlcbuild.execute.noop import write_stamp

    write_stamp(vars(args), recipes, graph, report, store, written)
    return 0


@command("plan")
def plan_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.cli.reporting import summary_table

    recipes, store, graph = _prepare(args, args.recipes)
    wanted = _wanted(args, graph)
    report = _dry_run(store, graph, wanted)
    _mark_elsewhere(graph, report, wanted)
    screen = console()
    with screen.capture() as drawn:
        screen.print(summary_table(report, title="plan"))
    text = drawn.get()
    sys.stdout.write(text)
    if report.outcomes and all(o.status == "cached" for o in report.outcomes.values()):
        from mlcbuild.execute.noop import write_stamp

        write_stamp(vars(args), recipes, graph, report, store, [], output=text)
    return 0


@command("matrix")
def matrix_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.ci.matrix import FORMATS, check_unique, recipe_cells
    from mlcbuild.plan.revisions import pin_revisions

    store = _store()
    recipes = [load_recipe(p, store.root) for p in args.recipes]
    revisions = pin_revisions(recipes, frozen=args.frozen)
    options = PlanOptions(quantizations=tuple(args.quant), targets=tuple(args.target), revisions=revisions)
    planned = []
    for path, recipe in zip(args.recipes, recipes):
        graph = plan([recipe], store, options, check=_check)
        planned.append((graph, recipe_cells(graph, recipe.name, str(path))))
    cells = [cell for _, recipe_cells_ in planned for cell in recipe_cells_]
    check_unique(cells)
    if args.affected:
        from mlcbuild.ci.affected import affected_cells, missing_nodes

        shared = _shared_store(args, store)
        found: dict[str, str] = {}
        for graph, recipe_cells_ in planned:
            found.update(affected_cells(recipe_cells_, missing_nodes(graph, shared, jobs=args.jobs)))
        where = str(shared.root) if isinstance(shared, Store) else shared.url
        for cell in cells:
            print(f"{cell.id}: {found.get(cell.id, 'cached in ' + where)}", file=sys.stderr)
        cells = [c for c in cells if c.id in found]
    sys.stdout.write(FORMATS[args.format](cells) + "\n")
    return 0


def _shared_store(args: argparse.Namespace, local: Store) -> "Store | RemoteCache":
    """The cache `matrix --affected` asks: --remote, $MLCBUILD_REMOTE, else the local cache. A folder
    is a remote cache if it has the remote layout (cas/, ac/), else a local cache dir."""
    url = getattr(args, "remote", None) or os.environ.get("MLCBUILD_REMOTE")
    if not url:
        return local
    folder = url[len("file://") :] if url.startswith("file://") else None if "://" in url else url
    if folder is not None and not (Path(folder) / "cas").is_dir():
        if not Path(folder).is_dir():
            raise UserError(f"no cache folder at {folder}", field="--remote")
        return Store(Path(folder))
    remote = _remote(args)
    assert remote is not None
    return remote


@command("explain")
def explain(args: argparse.Namespace) -> int:
    _, store, graph = _prepare(args, [args.recipe])
    report = _dry_run(store, graph)
    matches = [o.node for o in report.outcomes.values() if (o.key or "").startswith(args.node)] or _find(graph, args.node)
    for node in matches:
        outcome = report.outcomes[node.id]
        decision = outcome.decision
        console().print(f"[bold]{node.label}[/] ({node.kind}, id {node.id})")
        if outcome.status == "cached":
            console().print(f"  cached: key {outcome.key}")
        elif decision is None:
            console().print(f"  cannot decide: {outcome.reason}")
        elif decision.key is None:
            waiting = [report.outcomes[d].node.label for _, d in node.deps if report.outcomes[d].manifest is None]
            console().print(f"  {decision.why}; waits for: {', '.join(waiting)} (its key depends on their output)")
        elif decision.changes is None:
            console().print("  will run: never built with this cache")
        else:
            console().print(f"  will run; changed since the build with key {(decision.last_key or '')[:12]}:")
            for change in decision.changes or ["nothing in the key changed; the cached result was removed"]:
                console().print(f"    {change}")
    return 0


@command("graph")
def graph_cmd(args: argparse.Namespace) -> int:
    import networkx as nx

    _, _, graph = _prepare(args, args.recipes)
    g = graph.to_networkx()
    if args.format == "json":
        console().print_json(json.dumps(nx.node_link_data(g, edges="edges")))
    elif args.format == "dot":
        lines = ["digraph mlcbuild {", "  rankdir=LR;"]
        lines += [f'  "{n}" [label="{d["label"]}", shape=box];' for n, d in g.nodes(data=True)]
        lines += [f'  "{a}" -> "{b}" [label="{d["role"]}"];' for a, b, d in g.edges(data=True)]
        print("\n".join(lines + ["}"]))
    else:
        lines = ["graph LR"]
        lines += [f'  {n}["{d["label"]}"]' for n, d in g.nodes(data=True)]
        lines += [f"  {a} -->|{d['role']}| {b}" for a, b, d in g.edges(data=True)]
        print("\n".join(lines))
    return 0


@command("cache")
def cache_cmd(args: argparse.Namespace) -> int:
    if args.action in ("push", "pull"):
        return _cache_transfer(args)
    store = _store()
    if args.action == "ls":
        return _cache_ls(store)
    if args.action == "du":
        u = store.usage()
        console().print(
            f"{u['results']} results, {u['objects']} objects, {_human(u['object_bytes'])} in {store.root}; "
            f"quarantined {u['quarantined']} ({_human(u['quarantined_bytes'])}), "
            f"leftovers of killed builds {u['leftovers']} ({_human(u['leftover_bytes'])}), logs {_human(u['log_bytes'])}"
            + (f"; {u['malformed']} malformed result entries" if u["malformed"] else "")
        )
        return 0
    if args.action == "gc":
        return _cache_gc(args, store)
    problems = store.verify()
    for problem in problems:
        console().print(f"[red]{problem}[/]", soft_wrap=True)
    if problems and args.repair:
        console().print(f"repaired {store.repair()} (corrupt objects quarantined, malformed entries deleted)")
    if problems:
        return 1
    console().print(f"[green]ok[/]: {store.usage()['objects']} objects verified")
    return 0


def _describe(result: "ActionResult") -> str:
    params = result.preimage.get("params", {})
    params = params if isinstance(params, dict) else {}
    what = " ".join(str(v) for k, v in params.items() if k in ("repo", "path", "quantization", "conv_template") and v)
    target = params.get("target")
    if isinstance(target, dict):
        what += f" {target.get('name')}:{target.get('variant') or ''}".rstrip(":")
    return what


def _cache_ls(store: Store) -> int:
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
            _describe(result),
            _human(result.manifest.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(result.created)),
            f"{result.duration_s:.1f}s",
        )
    console().print(table)
    if malformed:
        console().print(f"{malformed} malformed result entries (a miss for builds; `cache verify` lists them, `cache gc` removes them)")
    return 0


def _cache_gc(args: argparse.Namespace, store: Store) -> int:
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
        console().print(f"{verb} result {result.key[:12]} {result.preimage.get('kind', '?')} {_describe(result)} ({why})", soft_wrap=True)
    for path in report.malformed:
        console().print(f"{verb} malformed result entry {path}", soft_wrap=True)
    for path in report.leftovers:
        console().print(f"{verb} leftover of a killed build {path}", soft_wrap=True)
    console().print(
        f"{verb} {len(report.results)} results, {report.objects} unreferenced objects ({_human(report.object_bytes)}), "
        f"{report.quarantined} quarantined objects, {len(report.leftovers)} leftovers, {stamps} stale no-op stamps; "
        f"{'would free' if args.dry_run else 'freed'} {_human(report.freed)}",
        soft_wrap=True,
    )
    return 0


def _cache_transfer(args: argparse.Namespace) -> int:
    from mlcbuild.execute import transfer

    if not args.recipes:
        raise UserError(f"cache {args.action} needs at least one recipe")
    remote = _remote(args)
    if remote is None:
        raise UserError(f"cache {args.action} needs --remote URL or $MLCBUILD_REMOTE")
    if args.action == "push" and remote.read_only:
        raise UserError("cache push with --remote-read-only would upload nothing")
    _, store, graph = _prepare(args, args.recipes)
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
    _, store, graph = _prepare(args, recipes)
    report = _dry_run(store, graph)
    return {o.key for o in report.outcomes.values() if o.key}


@command("verify")
def verify_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.provenance import verify_artifact

    failed = 0
    for artifact in args.artifacts:
        problems = verify_artifact(artifact)
        for problem in problems:
            print(f"{artifact}: {problem}")
        if problems:
            failed += 1
        else:
            print(f"ok: {artifact} matches its provenance")
    return 1 if failed else 0


@command("lock")
def lock_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.plan.revisions import resolve
    from mlcbuild.recipe.lock import check_lock, lock_path, update_lock

    for path in args.recipes:
        recipe = load_recipe(path, _store().root)
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

    from mlcbuild.targets import check_available, load_targets

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


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
