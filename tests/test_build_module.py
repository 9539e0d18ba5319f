"""execute/build.py in process: prepare → run → place → provenance, as the CLI's build runs it."""
from __future__ import annotations

from pathlib import Path

from mlcbuild.execute.base import NullReporter
from mlcbuild.execute.build import prepare, run_build
from mlcbuild.execute.local import LocalExecutor
from mlcbuild.store.cas import Store

try:
    from test_build import write_recipe
except ImportError:
    from tests.test_build import write_recipe


def test_prepare_and_run_build_place_the_weights_and_their_provenance(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    store = Store(tmp_path / "cache")
    recipes, graph = prepare([recipe], store, offline=False)
    wanted = {n.id for n in graph.nodes.values() if n.kind != "compile"}
    result = run_build(recipes, graph, store, wanted, LocalExecutor(store, jobs=1, reporter=NullReporter()), stamp={"command": "build"})
    folder = tmp_path / "r" / "dist" / "tiny-q0f32-MLC"
    assert result.ok and not result.elsewhere
    assert {folder / "tensor-cache.json", folder / "mlc-chat-config.json"} <= set(result.written)
    assert (folder.parent / "tiny-q0f32-MLC.provenance.json").is_file()
    again = run_build(recipes, graph, store, wanted, LocalExecutor(store, jobs=1, reporter=NullReporter()))
    assert {o.status for o in again.report.outcomes.values()} == {"cached"} and not again.stamped


def test_prepare_warns_once_per_mlc_flag_it_cannot_honour(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", compile={"opt": "flashinfer=0;cublas_gemm=0;faster_transformer=1;cudagraph=0"})
    heard: list[str] = []
    _, graph = prepare([recipe], Store(tmp_path / "cache"), warn=heard.append)
    assert heard == [f"{recipe}: compile.opt: faster_transformer=1 is ignored: the apache-tvm wheel from PyPI has no FasterTransformer (CUTLASS) kernels"]
    (compile_node,) = [n for n in graph.nodes.values() if n.kind == "compile"]
    assert compile_node.params["options"]["opt"] == "O2" and compile_node.params["options"]["cudagraph"] is False
