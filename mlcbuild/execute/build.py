"""One build, start to end: recipes → graph (`prepare`), then run → place outputs → provenance →
no-op stamp (`run_build`). The CLI's `build` and MLC verbs, bench/ and tests call these, so every
caller gets the same order (a model folder is placed only after its nodes ran; the stamp is written
only after everything wanted is in place)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mlcbuild.errors import print_warning
from mlcbuild.execute.base import ELSEWHERE, BuildReport
from mlcbuild.plan.graph import BuildGraph, Node
from mlcbuild.plan.planner import PlanOptions, plan
from mlcbuild.recipe.load import load_recipe
from mlcbuild.recipe.model import Recipe
from mlcbuild.store.cas import Store

if TYPE_CHECKING:
    from mlcbuild.execute.base import Executor
    from mlcbuild.store.remote import RemoteCache


def check_node(node: Node) -> None:
    """The planner's per-node check: the step refuses its own bad parameters before anything runs."""
    from mlcbuild.steps import get_step

    get_step(node.kind).check({**node.params, **node.hints})


def prepare(
    paths: Sequence[Path],
    store: Store,
    *,
    quantizations: Sequence[str] = (),
    targets: Sequence[str] = (),
    frozen: bool = False,
    offline: bool = True,
    warn: Callable[[str], None] = print_warning,
) -> tuple[list[Recipe], BuildGraph]:
    """Recipe files → recipes and their graph. offline=True (plan, graph, explain, dry runs): no
    network, no lock written; a revision the lock does not pin is shown unresolved. What a recipe
    asks that this build cannot honour (MLC's `flashinfer=1`) goes to `warn`, one line each."""
    from mlcbuild.compiler.options import compile_warnings
    from mlcbuild.plan.revisions import pin_revisions

    recipes = [load_recipe(p, store.root) for p in paths]
    for path, recipe in zip(paths, recipes):
        for line in compile_warnings(recipe.compile_options):
            warn(f"{path}: {line}")
    options = PlanOptions(
        quantizations=tuple(quantizations),
        targets=tuple(targets),
        revisions=pin_revisions(recipes, frozen=frozen, offline=offline),
        fetch_config=not offline,
    )
    return recipes, plan(recipes, store, options, check=check_node)


@dataclass
class BuildResult:
    report: BuildReport
    written: list[Path] = field(default_factory=list)
    """Every file placed in an output folder (cached or built)."""
    elsewhere: set[str] = field(default_factory=set)
    """Node ids left to a machine with the toolchain."""
    stamped: bool = False

    @property
    def ok(self) -> bool:
        return self.report.ok


def run_build(
    recipes: list[Recipe],
    graph: BuildGraph,
    store: Store,
    wanted: set[str],
    executor: "Executor",
    *,
    remote: "RemoteCache | None" = None,
    stamp: Mapping[str, Any] | None = None,
    on_restored: Callable[[Path], None] | None = None,
    signing_key: Any | None = None,
) -> BuildResult:
    """Run the wanted nodes, place what succeeded, write provenance beside it (signed, given the
    ed25519 `signing_key`), and (given the command's options in `stamp`) leave the no-op stamp
    when everything wanted was built here. The remote cache is closed (its uploads finished)
    before outputs are placed. Placing and provenance hold each output folder's lock, so two
    builds into one folder leave the files and statement of one of them, never a mix."""
    from mlcbuild.execute.materialize import materialize
    from mlcbuild.provenance import write_provenance
    from mlcbuild.store.fs import locked_folders

    try:
        report = executor.run(graph, wanted)
    finally:
        if remote is not None:
            remote.close()
    result = BuildResult(report, elsewhere={n for n, o in report.outcomes.items() if o.status == ELSEWHERE})
    placing = {Path(a.dest).parent for a in graph.artifacts if (o := report.outcomes.get(a.node_id)) is not None and o.ok}
    with locked_folders(placing):
        result.written = materialize(graph, report, store, on_restored)
        write_provenance(recipes, graph, report, store, signing_key)
    if stamp is not None and report.ok and not result.elsewhere:
        from mlcbuild.execute.noop import write_stamp

        result.stamped = write_stamp(stamp, recipes, graph, report, store, result.written)
    return result


def place_output(store: Store, report: BuildReport, node_id: str, dest: Path, rename: Mapping[str, str] | None = None) -> list[Path]:
    """One node's result into `dest` where MLC's verbs write theirs (its own folder, or one library
    file). Unlike a recipe's output folder, `dest` may hold other verbs' files (convert_weight and
    gen_config write one folder): nothing is removed; a file this placed and someone edited is put back."""
    from mlcbuild.store.fs import fs_errors, locked_folders
    from mlcbuild.store.placed import Placed

    outcome = report.outcomes.get(node_id)
    if outcome is None or not outcome.ok or outcome.manifest is None:
        return []
    with fs_errors("output folder", dest):
        dest.mkdir(parents=True, exist_ok=True)
    with locked_folders([dest]):
        placed = Placed.load(dest)
        try:
            store.materialize(outcome.manifest, dest, rename=dict(rename or {}), placed=placed)
        finally:
            store.save_index()
        with fs_errors("output folder", dest):
            placed.save()
    return [dest / (rename or {}).get(rel, rel) for rel in outcome.manifest.files]
