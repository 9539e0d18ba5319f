"""`build`, `clean`, `plan`, `matrix`, `explain`, `graph`: a recipe's graph, built or shown.
Each handler returns the process exit code."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlcbuild.artifact.layout import artifact_of
from mlcbuild.cli.common import console, dry_run_report, find_nodes, open_remote, open_store, prepare_graph, shown, wanted_nodes
from mlcbuild.cli.main import EXIT_CODES, EXIT_ELSEWHERE, command, positive_int
from mlcbuild.errors import UserError
from mlcbuild.store import cache_home

if TYPE_CHECKING:
    from mlcbuild.execute.base import BuildReport, Executor, Reporter
    from mlcbuild.plan.graph import BuildGraph
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.store.cas import Store
    from mlcbuild.store.remote import RemoteCache

BUILD_HELP = """Build recipes, running only the nodes whose key has no cached result.

A model folder is placed only when its convert and gen-config both succeeded (never without
tensor-cache.json); a library when its compile succeeded and no node of its model folder failed.
A failed variant places nothing and leaves what an earlier build placed as it was. Only files
mlcbuild placed are ever removed from an output folder; a placed file edited there is restored."""

CLEAN_HELP = """\
Remove what a recipe no longer asks for: the model folders and libraries of a quantization or
target taken out of it (this recipe's names only; the whole recipe counts, never a -q/-t selection).
Only files listed in the folder's .mlcbuild-placed.json and unchanged since they were placed go;
an edited one stays and is named. Files you added, and other recipes' outputs, are never touched.
`build --prune` does the same after a successful build."""

MATRIX_HELP = """One cell per target variant, plus one 'weights' cell (convert + gen-config, no toolchain,
on ubuntu-latest). Each cell: a stable id (<recipe name>-<cell>), the runner labels its target needs
(`runner:` in the target definitions), the command that builds it (`mlcbuild build RECIPE --only CELL`) and the
artifact paths it produces. Not split by quantization: a toolchain runner (GPU box, Mac) is the scarce
resource and its setup costs minutes, so it builds every quantization of its target (-q narrows).
A compile cell builds its own gen-config (config and tokenizer only) and downloads no weight file.

--affected lists only cells with a node whose key has no result in the shared cache. Compile keys
depend on gen-config's output, so gen-config (seconds, no weights) runs here in a scratch store;
a target that pins its tool versions (`toolchain_versions:`, as the builtin cuda pins nvcc) needs
no tool here to compute its keys, so its cells are exact on a machine without nvcc; a key that cannot
be computed here (a tool this machine lacks and no pin) counts as affected.

formats: json ({"cells": [...]}); github (strategy.matrix JSON with `include`, for fromJSON);
gitlab (a child-pipeline YAML, one job per runner with `parallel: matrix`, tags = runner labels)."""


def add_parsers(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    """`subcommand(name, **kwargs)` is mlcbuild.cli.main's parser factory."""

    def only(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--only",
            metavar="CELL",
            help="only one matrix cell: 'weights' or a target variant such as 'cuda-sm_90a'; or nodes: an id prefix or part of a label",
        )

    def selection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-t", "--target", action="append", default=[], help="only this target (repeatable)")
        sp.add_argument("-q", "--quant", action="append", default=[], help="only this quantization (repeatable)")
        sp.add_argument("--frozen", action="store_true", help="fail if the lock file would change")

    b = subcommand(
        "build",
        help="build recipes (only what changed)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=BUILD_HELP,
    )
    b.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(b)
    only(b)
    b.add_argument(
        "-j", "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N",
        help="local executor: run up to N steps at once (default: the number of CPUs)",
    )
    b.add_argument("--dry-run", action="store_true", help="show what would run")
    b.add_argument("--keep-going", action="store_true", help="build what can be built after a failure")
    b.add_argument("--force", action="store_true", help="rebuild even when cached (also replaces modified cache objects)")
    b.add_argument("--check", action="store_true", help="rebuild cached nodes in scratch space and compare bytes")
    b.add_argument("--executor", choices=["local", "ray"], default="local", help="where nodes that must run go (default: local)")
    b.add_argument("--ray-address", default=None, help="ray: cluster address (default: $RAY_ADDRESS, else a local Ray); workers must see the same --cache-dir")
    b.add_argument("--prune", action="store_true", help="after a successful build, remove what `mlcbuild clean` removes")

    cl = subcommand(
        "clean",
        help="remove outputs mlcbuild placed that the recipes no longer ask for (a dropped target or quantization)",
        description=CLEAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cl.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    cl.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    pl = subcommand("plan", help="every node: key, cached or why it will run")
    pl.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(pl)
    only(pl)

    m = subcommand(
        "matrix",
        help="CI matrix: one cell per target variant plus 'weights', with runner, command, artifacts",
        description=MATRIX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(m)
    m.add_argument("--format", choices=["github", "gitlab", "json"], default="json")
    m.add_argument("--affected", action="store_true", help="only cells with a node whose key has no result in the remote cache")
    m.add_argument("-j", "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="--affected: parallel gen-config runs")

    e = subcommand("explain", help="which input of a node changed since its cached build")
    e.add_argument("recipe", type=Path, help="recipe file (YAML)")
    e.add_argument("node", help="the key prefix `plan` shows, a node id prefix, or part of a label ('q4f16_1 llvm')")
    selection(e)

    g = subcommand("graph", help="print the build graph")
    g.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    g.add_argument("--format", choices=["mermaid", "dot", "json"], default="mermaid")
    selection(g)


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
        how = f": mlcbuild build {recipes} --only {cell}" if cell else ""
        print(f"  {node.label}: {_elsewhere_reason(graph, node.id)}{how}", file=sys.stderr)
    print(f"  every cell and the runner it needs: mlcbuild matrix {recipes}", file=sys.stderr)


def _mark_elsewhere(graph: BuildGraph, report: "BuildReport", wanted: set[str]) -> set[str]:
    """In a dry run's report, the nodes another machine must build: those this machine cannot build
    (or that need one) and that are not cached here (a cached result needs no toolchain)."""
    from mlcbuild.execute.base import ELSEWHERE, Outcome

    elsewhere = {n for n in graph.elsewhere(wanted) if report.outcomes[n].status != "cached"}
    for node_id in elsewhere:
        before = report.outcomes[node_id]
        report.outcomes[node_id] = Outcome(before.node, ELSEWHERE, before.key, reason=_elsewhere_reason(graph, node_id))
    return elsewhere


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
    from mlcbuild.cli.reporting import live_reporter, summary_table, write_step_summary
    from mlcbuild.execute.build import run_build

    recipes, store, graph = prepare_graph(args, args.recipes, offline=args.dry_run)
    wanted = wanted_nodes(args, graph)
    if args.check:
        from mlcbuild.execute.check import run_check

        elsewhere = graph.elsewhere(wanted)
        code = run_check(graph, wanted - elsewhere, store)
        if elsewhere:
            _report_elsewhere(args, graph, elsewhere)
        return code or (EXIT_ELSEWHERE if elsewhere else 0)
    if args.dry_run:
        report = dry_run_report(store, graph, wanted, force=args.force)
        elsewhere = _mark_elsewhere(graph, report, wanted)
        console().print(summary_table(report, title="dry run"))
        if elsewhere:
            _report_elsewhere(args, graph, elsewhere)
        return 0
    print(f"cache: {store.root} ({cache_home(args.recipes).why})", file=sys.stderr)
    remote = open_remote(args)
    from mlcbuild.provenance import signing_key

    key = remote.signing_key if remote is not None else signing_key(getattr(args, "signing_key", None))
    with live_reporter(lambda: console(True)) as reporter:
        result = run_build(recipes, graph, store, wanted, _executor(args, store, reporter, remote), remote=remote, stamp=vars(args),
                           on_restored=lambda path: print(f"restored {shown(path)} (edited in place)", file=sys.stderr),
                           signing_key=key)
    report, written, elsewhere = result.report, result.written, result.elsewhere
    write_step_summary(report, {Path(shown(artifact_of(p))) for p in written})
    if remote is not None and (remote.stats.hits or remote.stats.uploaded_entries):
        print(remote.summary(), file=sys.stderr)
    if report.count("built") or not report.ok:
        console().print(summary_table(report))
        for artifact in sorted({shown(artifact_of(p)) for p in written}):
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
    if args.prune:
        narrowed = args.quant or args.target or args.only
        _clean(recipes, prepare_graph(argparse.Namespace(), args.recipes)[2] if narrowed else graph, dry_run=False, quiet=True)
    return EXIT_ELSEWHERE if elsewhere else 0


@command("clean")
def clean_cmd(args: argparse.Namespace) -> int:
    recipes, _, graph = prepare_graph(argparse.Namespace(), args.recipes)
    _clean(recipes, graph, dry_run=args.dry_run)
    return 0


def _clean(recipes: list[Recipe], graph: BuildGraph, dry_run: bool, quiet: bool = False) -> None:
    """Remove (or list) what the whole recipes no longer ask for; name what stays because it was
    edited. `quiet` (build --prune): nothing to say when nothing goes."""
    from mlcbuild.execute.prune import prune

    report = prune(recipes, graph, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in report.removed:
        print(f"{verb} {shown(path)} (no longer in the recipe)")
    for path in report.kept:
        print(f"kept {shown(path)}: no longer in the recipe, but edited since mlcbuild placed it")
    if not report.removed and not report.kept and not quiet:
        print("nothing to clean: every output mlcbuild placed is still asked for")


@command("plan")
def plan_cmd(args: argparse.Namespace) -> int:
    from mlcbuild.cli.reporting import summary_table

    recipes, store, graph = prepare_graph(args, args.recipes)
    wanted = wanted_nodes(args, graph)
    report = dry_run_report(store, graph, wanted)
    _mark_elsewhere(graph, report, wanted)
    screen = console()
    with screen.capture() as drawn:
        screen.print(f"cache: {store.root} ({cache_home(args.recipes).why})", soft_wrap=True)
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
    from mlcbuild.execute.build import check_node
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.plan.revisions import pin_revisions
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.store.cas import Store

    store = open_store(args.recipes)
    recipes = [load_recipe(p, store.root) for p in args.recipes]
    revisions = pin_revisions(recipes, frozen=args.frozen)
    options = PlanOptions(quantizations=tuple(args.quant), targets=tuple(args.target), revisions=revisions)
    planned = []
    for path, recipe in zip(args.recipes, recipes):
        graph = plan([recipe], store, options, check=check_node)
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
    from mlcbuild.store.cas import Store

    url = getattr(args, "remote", None) or os.environ.get("MLCBUILD_REMOTE")
    if not url:
        return local
    folder = url[len("file://") :] if url.startswith("file://") else None if "://" in url else url
    if folder is not None and not (Path(folder) / "cas").is_dir():
        if not Path(folder).is_dir():
            raise UserError(f"no cache folder at {folder}", field="--remote")
        return Store(Path(folder))
    remote = open_remote(args)
    assert remote is not None
    return remote


@command("explain")
def explain(args: argparse.Namespace) -> int:
    _, store, graph = prepare_graph(args, [args.recipe])
    report = dry_run_report(store, graph)
    matches = [o.node for o in report.outcomes.values() if (o.key or "").startswith(args.node)] or find_nodes(graph, args.node)
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

    _, _, graph = prepare_graph(args, args.recipes)
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
