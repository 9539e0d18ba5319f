"""Cold build of 4 independent compile nodes (the bundled tiny model, one quantization, four
targets): local -j1, -j2 (longest recorded first, and in recipe order with no history), Ray with
1 and 2 single-CPU workers; and a no-op build with `--executor ray` against the local one.

Each run starts from the same seed cache: everything built, then the compile results removed
(as after a toolchain upgrade), so only the four compiles run. The node history (with each
compile's last duration) stays, unless the run is the "no history" one.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


from bench.common import DEMO_MODEL, WORK, median_wall, run
from bench.common import write_recipe as write_recipe_file

ROOT = WORK / "schedule"
SEED = ROOT / "seed-cache"
TARGETS = ["llvm", "cuda:sm_80", "cuda:sm_89", "cuda:sm_90a"]
NVCC = {"toolchain:nvcc": 1}
"""What a worker of this machine offers: cuda compiles need it (llvm ones need nothing)."""


def write_recipe() -> Path:
    ROOT.mkdir(parents=True, exist_ok=True)
    model = ROOT / "tiny-redpajama"
    if not model.exists():
        shutil.copytree(DEMO_MODEL, model)
    return write_recipe_file(ROOT / "recipe.yaml", "tiny", model, ["q4f16_1"], TARGETS, 512, 128)


def mlcbuild(cache: Path, *args: str) -> None:
    run([sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache), *args])


def fresh_cache(name: str, history: bool = True) -> Path:
    """The seed cache without its compile results (and without node history if asked)."""
    import json

    cache = ROOT / name
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(SEED, cache, ignore=shutil.ignore_patterns("tmp", "locks"))
    for entry in (cache / "ac").glob("*/*.json"):
        if json.loads(entry.read_bytes())["preimage"]["kind"] == "compile":
            entry.unlink()
    if not history:
        shutil.rmtree(cache / "nodes", ignore_errors=True)
    return cache


def timed_build(recipe: Path, cache: Path, *args: str) -> float:
    began = time.perf_counter()
    mlcbuild(cache, "build", str(recipe), *args)
    return time.perf_counter() - began


def main() -> dict[str, float]:
    recipe = write_recipe()
    if not (SEED / "ac").exists():
        mlcbuild(SEED, "build", str(recipe), "-j", "2")
    result = {
        "local_j1_s": timed_build(recipe, fresh_cache("j1"), "-j", "1"),
        "local_j2_s": timed_build(recipe, fresh_cache("j2"), "-j", "2"),
        "local_j2_no_history_s": timed_build(recipe, fresh_cache("j2-nohist", history=False), "-j", "2"),
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from raycluster import LocalRayCluster

    cluster = LocalRayCluster().start_head()
    try:
        cluster.add_worker(cpus=1, resources=NVCC)
        result["ray_1_worker_s"] = timed_build(recipe, fresh_cache("ray1"), "--executor", "ray", "--ray-address", cluster.address)
        cluster.add_worker(cpus=1, resources=NVCC)
        result["ray_2_workers_s"] = timed_build(recipe, fresh_cache("ray2"), "--executor", "ray", "--ray-address", cluster.address)
    finally:
        cluster.stop()
    cache = ROOT / "ray2"
    time.sleep(2.2)  # past the racy window, so the next build writes the no-op stamp the timed ones use
    mlcbuild(cache, "build", str(recipe))
    result["noop_local_s"] = median_wall(lambda: mlcbuild(cache, "build", str(recipe)), repeat=7)
    result["noop_ray_executor_s"] = median_wall(
        lambda: mlcbuild(cache, "build", str(recipe), "--executor", "ray", "--ray-address", "127.0.0.1:1"), repeat=7
    )
    result["speedup_local_j2"] = result["local_j1_s"] / result["local_j2_s"]
    result["speedup_ray_2_workers"] = result["ray_1_worker_s"] / result["ray_2_workers_s"]
    print("\ncold build of 4 independent compiles (tiny model, q4f16_1, llvm + 3 cuda archs), 2-core machine")
    print(f"  local -j1                 {result['local_j1_s']:6.1f} s")
    print(f"  local -j2                 {result['local_j2_s']:6.1f} s   {result['speedup_local_j2']:.2f}x (goal >= 1.85x)")
    print(f"  local -j2, no history     {result['local_j2_no_history_s']:6.1f} s   (recipe order)")
    print(f"  ray, 1 worker x 1 CPU     {result['ray_1_worker_s']:6.1f} s")
    print(f"  ray, 2 workers x 1 CPU    {result['ray_2_workers_s']:6.1f} s   {result['speedup_ray_2_workers']:.2f}x")
    print(f"no-op: local {result['noop_local_s'] * 1000:.0f} ms, --executor ray {result['noop_ray_executor_s'] * 1000:.0f} ms (no Ray started)")
    return result


if __name__ == "__main__":
    main()
