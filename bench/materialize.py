"""No-op placement of outputs: 12 cached results x 100 files looked up (every object's stat
signature checked) and placed into their output folders, next to the placement this replaced
(existence check per object, then per file a mkdir and os.path.samefile, relinking what differs)."""
from __future__ import annotations

import os
import shutil

from bench.common import WORK, median_wall
from mlcbuild.execute.base import BuildReport, Outcome
from mlcbuild.execute.materialize import materialize
from mlcbuild.plan.graph import Artifact, BuildGraph, Node
from mlcbuild.store.cas import ActionResult, Store

ROOT = WORK / "materialize"
RESULTS, FILES = 12, 100


def setup() -> tuple[BuildGraph, dict[str, str]]:
    shutil.rmtree(ROOT, ignore_errors=True)
    store = Store(ROOT / "cache")
    graph, keys = BuildGraph(), {}
    for i in range(RESULTS):
        node = graph.add(Node.make("convert", {"i": i}, {}, f"n{i}"))
        out = ROOT / f"out{i}"
        out.mkdir(parents=True)
        for j in range(FILES):
            (out / f"params_shard_{j}.bin").write_bytes(os.urandom(4096) + bytes([i, j]))
        key = f"{i:064x}"
        store.put_action(ActionResult(key, store.put_dir(out, move=True), {}))
        keys[node.id] = key
        graph.artifacts.append(Artifact(node.id, ROOT / "dist" / f"m{i}-MLC"))
    store.save_index()
    return graph, keys


def noop(graph: BuildGraph, keys: dict[str, str]) -> None:
    store = Store(ROOT / "cache")
    report = BuildReport()
    for node_id, key in keys.items():
        hit = store.get_action(key)
        assert hit is not None
        report.outcomes[node_id] = Outcome(graph.nodes[node_id], "cached", key, hit.manifest)
    materialize(graph, report, store)


def previous(graph: BuildGraph, keys: dict[str, str]) -> None:
    """The placement before stat signatures and placement records, as it was."""
    store = Store(ROOT / "cache")
    for artifact in graph.artifacts:
        hit = store.get_action(keys[artifact.node_id])
        assert hit is not None and all(store.object_path(e.digest).exists() for e in hit.manifest.files.values())
        dest = ROOT / "dist-previous" / artifact.dest.name
        for rel, entry in hit.manifest.files.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = store.object_path(entry.digest)
            if target.exists() and os.path.samefile(source, target):
                continue
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            os.link(source, tmp)
            os.replace(tmp, target)


def main() -> dict[str, float]:
    graph, keys = setup()
    noop(graph, keys)
    previous(graph, keys)
    ours = median_wall(lambda: noop(graph, keys), repeat=9)
    peer = median_wall(lambda: previous(graph, keys), repeat=9)
    print(f"\nno-op placement of {RESULTS * FILES} output files ({RESULTS} cached results)")
    print(f"  mlcbuild (stat checks, nothing rewritten) {ours * 1000:7.1f} ms")
    print(f"  the previous placement (samefile per file) {peer * 1000:7.1f} ms -> {peer / ours:.2f}x")
    return {"files": RESULTS * FILES, "noop_place_s": ours, "previous_place_s": peer, "ratio": peer / ours}


if __name__ == "__main__":
    main()
