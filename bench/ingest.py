"""First build of a large local model: time from `mlcbuild build` start to convert start, against
reading the weights once (`cat`), and the disk the cache adds, per link type.

Each run gets a fresh cache and a cold source (its pages dropped from the page cache with
posix_fadvise, so no other process's cache is touched). The probe runs the real CLI in a fresh
process and stops it when the executor is about to run the first convert.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from bench.common import REPO, WORK, drop_page_cache, make_big_gpt_neox
from bench.common import write_recipe as write_recipe_file

ON = os.environ.get("MLCBUILD_BENCH_INGEST_DIR")
"""Run source and cache on another file system (e.g. a reflink-capable xfs/btrfs mount)."""
ROOT = Path(ON) if ON else WORK / "ingest"
MODEL = ROOT / "big-neox" if ON else WORK / "big-neox"
BASELINE_COMMIT = "e9def168edc0e4f402aad3fecdcbca09fcfcddca"
"""main before ingest (perf and store merged): the download step copies, the store hashes again and fsyncs."""

PROBE = r"""
import os, sys, time
t0 = time.perf_counter()

def starts(node):
    if node.kind == "convert":
        print("CONVERT_STARTS_AT", time.perf_counter() - t0, flush=True)
        os._exit(0)

try:
    import mlcbuild.execute.runner as runner  # the shared runner (since the scheduler split)
    real = runner.execute_step
    def until_convert(store, node, inputs, progress):
        starts(node)
        return real(store, node, inputs, progress)
    runner.execute_step = until_convert
except ImportError:  # the baseline commit
    import mlcbuild.execute.local as local
    real = local.LocalExecutor._execute
    def until_convert(self, node, inputs):
        starts(node)
        return real(self, node, inputs)
    local.LocalExecutor._execute = until_convert
from mlcbuild.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def write_recipe() -> Path:
    return write_recipe_file(ROOT / "recipe.yaml", "big-neox", MODEL, ["q0f16"], ["llvm"], 2048, 512)


def weight_files() -> list[Path]:
    return sorted(p for p in MODEL.iterdir() if p.is_file() and not p.name.startswith("."))


def cat_s(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def du_bytes(*paths: Path) -> int:
    """Bytes on disk under paths together (a hard-linked inode counts once)."""
    out = subprocess.run(["du", "-sc", "--block-size=1", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def fs_used(path: Path) -> int:
    """Bytes used on path's file system: sees reflinks share extents, which du cannot; noisy where
    other processes write to the same file system."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def until_convert_s(recipe: Path, cache: Path, link_type: str, pythonpath: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "MLCBUILD_LINK_TYPE": link_type}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--cache-dir", str(cache), "build", str(recipe), "--only", "weights"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200,
    )
    for line in result.stdout.splitlines():
        if line.startswith("CONVERT_STARTS_AT"):
            return float(line.split()[1])
    raise RuntimeError(f"convert never started ({link_type}):\n{result.stdout}\n{result.stderr}")


def hash_once_s(files: list[Path]) -> float:
    """What hashing the weights once costs (warm): the floor of any first build, which must key them."""
    code = (
        "import sys, time; from mlcbuild.store.hashing import sha256_files; t = time.perf_counter(); "
        "sha256_files(sys.argv[1:]); print(time.perf_counter() - t)"
    )
    cat_s(files)
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return float(out.stdout.strip())


def baseline_tree() -> Path:
    """The `main` branch as committed (before ingest), for the same measurement."""
    tree = ROOT / "baseline"
    if not (tree / "mlcbuild").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_COMMIT, "mlcbuild", "targets"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def main(modes: tuple[str, ...] = ("copy", "hardlink"), baseline: bool = True, repeat: int = 3) -> dict:
    """Per link type: cold (source pages dropped, each run paired with a `cat` of the same cold
    files just before it, the machine being shared) and warm (source in the page cache)."""
    size = make_big_gpt_neox(WORK / "big-neox")
    if not MODEL.exists():
        shutil.copytree(WORK / "big-neox", MODEL)
    files = weight_files()
    source_bytes = du_bytes(MODEL)
    recipe = write_recipe()
    results: dict = {
        "weights_bytes": size,
        "source_bytes_on_disk": source_bytes,
        "reflink_here": _reflink_works(),
        "sha256_once_warm_s": round(hash_once_s(files), 2),
        "runs": {},
    }
    if results["reflink_here"] and "reflink" not in modes:
        modes = ("reflink,copy", *modes)
    runs = [(f"ingest {m}", m, REPO) for m in modes]
    if baseline:
        runs.append(("before (main: hash, copy, hash the copy, fsync)", "copy", baseline_tree()))
    cache = ROOT / "cache"
    cold: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runs}
    warm: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runs}
    added: dict[str, int] = {}
    used: dict[str, int] = {}
    for _ in range(repeat):  # modes interleaved: the machine's load drifts between runs
        for label, mode, tree in runs:
            shutil.rmtree(cache, ignore_errors=True)
            drop_page_cache(files)
            cat = cat_s(files)
            drop_page_cache(files)
            before = fs_used(ROOT)
            cold[label].append((until_convert_s(recipe, cache, mode, tree), cat))
            used[label] = fs_used(ROOT) - before
            added[label] = du_bytes(MODEL, cache) - source_bytes
            shutil.rmtree(cache, ignore_errors=True)
            cat = cat_s(files)
            warm[label].append((until_convert_s(recipe, cache, mode, tree), cat))
            shutil.rmtree(cache, ignore_errors=True)
    for label, _, _ in runs:
        results["runs"][label] = {
            "cold_build_start_to_convert_start_s": [round(t, 2) for t, _ in cold[label]],
            "cold_cat_s": [round(c, 2) for _, c in cold[label]],
            "cold_median_s": round(statistics.median(t for t, _ in cold[label]), 2),
            "cold_x_cat_median": round(statistics.median(t / c for t, c in cold[label]), 2),
            "warm_build_start_to_convert_start_s": [round(t, 2) for t, _ in warm[label]],
            "warm_median_s": round(statistics.median(t for t, _ in warm[label]), 2),
            "warm_cat_s": [round(c, 2) for _, c in warm[label]],
            "cache_adds_bytes_on_disk": added[label],
            "cache_adds_x_source": round(added[label] / source_bytes, 3),
            "fs_used_grew_bytes": used[label],
        }
    return results


def _reflink_works() -> bool:
    from mlcbuild.store.fs import reflink

    with tempfile.TemporaryDirectory(dir=ROOT) as d:
        a, b = Path(d) / "a", Path(d) / "b"
        a.write_bytes(b"x" * 4096)
        try:
            reflink(a, b)
            return True
        except OSError:
            return False


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
