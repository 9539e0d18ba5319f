"""What the command handlers share: the console, the cache and remote a command uses, recipes →
graph with the command's selection, and how paths and sizes are shown. Cheap to import (every
handler module is imported to build the parser, before the no-op check): heavy modules are
imported by the functions that use them."""
from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mlcbuild.store import open_cache_dir

if TYPE_CHECKING:
    from rich.console import Console

    from mlcbuild.execute.base import BuildReport
    from mlcbuild.plan.graph import BuildGraph, Node
    from mlcbuild.recipe.model import Recipe
    from mlcbuild.store.cas import Store
    from mlcbuild.store.remote import RemoteCache


@lru_cache(maxsize=None)
def console(stderr: bool = False) -> "Console":
    """rich is imported only when there is something to draw: a no-op build prints one plain line."""
    from mlcbuild.cli.reporting import make_console

    return make_console(stderr)


def open_store(recipes: Sequence[Path] = ()) -> "Store":
    """The cache these recipes build into (`store.cache_home`: --cache-dir, the project's, the user's)."""
    from mlcbuild.store.cas import Store

    return Store(open_cache_dir(recipes))


def open_remote(args: argparse.Namespace) -> "RemoteCache | None":
    """The remote cache from --remote/$MLCBUILD_REMOTE, or None; nothing heavy is imported here."""
    from mlcbuild.store.remote import RemoteCache

    return RemoteCache.configure(
        getattr(args, "remote", None),
        read_only=getattr(args, "remote_read_only", False),
        signing_key=getattr(args, "signing_key", None),
        warn=warn,
    )


def warn(message: str) -> None:
    """One line on stderr, never wrapped, and above any live progress bars."""
    from rich.text import Text

    console(True).print(Text(f"mlcbuild: warning: {message}"), soft_wrap=True)


def prepare_graph(args: argparse.Namespace, recipes_arg: list[Path], offline: bool = True) -> "tuple[list[Recipe], Store, BuildGraph]":
    """Recipes → graph with the command's selection (`execute.build.prepare`)."""
    from mlcbuild.execute.build import prepare

    store = open_store(recipes_arg)
    recipes, graph = prepare(
        recipes_arg,
        store,
        quantizations=getattr(args, "quant", []) or (),
        targets=getattr(args, "target", []) or (),
        frozen=getattr(args, "frozen", False),
        offline=offline,
        warn=warn,
    )
    return recipes, store, graph


def all_nodes(graph: "BuildGraph") -> set[str]:
    return set(graph.nodes)


def wanted_nodes(args: argparse.Namespace, graph: "BuildGraph") -> set[str]:
    """Every node, one matrix cell's (`--only CELL`), or the nodes `--only NODE` names (id prefix or
    part of a label, as `explain` takes them); an unknown name is a UserError naming the cells."""
    only = getattr(args, "only", None)
    if not only:
        return all_nodes(graph)
    from mlcbuild.ci.matrix import cell_nodes, cell_of

    if any(cell_of(n) == only for n in graph.nodes.values()):
        return cell_nodes(graph, only)
    return {n.id for n in graph.find(only)} or cell_nodes(graph, only)


def find_nodes(graph: "BuildGraph", query: str) -> "list[Node]":
    from mlcbuild.errors import UserError

    matches = graph.find(query)
    if not matches:
        labels = ", ".join(sorted(n.label for n in graph.nodes.values()))
        raise UserError(f"no node matches '{query}' (give a key or id prefix, or part of a label: {labels})")
    return matches


def dry_run_report(store: "Store", graph: "BuildGraph", wanted: set[str] | None = None, force: bool = False) -> "BuildReport":
    from mlcbuild.execute.decision import Decider, dry_run

    return dry_run(graph, all_nodes(graph) if wanted is None else wanted, Decider(store, graph, force=force))


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
