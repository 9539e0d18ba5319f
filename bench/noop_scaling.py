"""How a no-op build grows with the number of recipes (1, 10, 40, 300: 5 to 603 nodes), next to
`dvc repro` over an equivalent pipeline of the same size, and `mlcbuild plan` of the same recipes.

Each recipe builds the bundled tiny model (q0f32, llvm) with its own temperature, so it owns a
gen-config node and a compile node (whose key ignores sampling fields, so all compile nodes share
one result) and shares the two source nodes and convert with the others; its model folder and
library are its own. dvc gets one stage per mlcbuild node, each copying the file mlcbuild built,
so both tools check the same files.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import yaml

from bench.common import REPO, WORK, median_wall, run, write_recipe

SIZES = (1, 10, 40, 300)
ROOT = WORK / "noop-scaling"
MODEL = REPO / "recipes" / "models" / "tiny-redpajama"


def write_recipes(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = write_recipe(folder / f"r{i:03d}.yaml", f"tiny{i:03d}", MODEL, ["q0f32"], ["llvm"], 256, 128,
                            overrides={"temperature": round(0.5 + i / 1000, 3)})
        paths.append(path)
    return paths


def dvc_project(folder: Path, count: int) -> Path:
    """One stage per mlcbuild node: the two source nodes and convert once, a gen-config and a compile
    per recipe."""
    project = folder / "dvc"
    if (project / "dvc.lock").exists():
        return project
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copytree(MODEL, project / "model")
    dist = folder / "dist"
    first = dist / "tiny000-q0f32-MLC"
    stages: dict[str, dict] = {
        "download": {"cmd": "cp -r model/. source", "deps": ["model"], "outs": ["source"]},
        "download_config": {
            "cmd": "mkdir -p source_config && cp model/config.json model/tokenizer.json source_config/",
            "deps": ["model/config.json", "model/tokenizer.json"], "outs": ["source_config"],
        },
        "convert": {
            "cmd": f"mkdir -p weights && cp {first}/params_shard_* {first}/tensor-cache.json weights/",
            "deps": ["source"], "outs": ["weights"],
        },
    }
    for i in range(count):
        built = dist / f"tiny{i:03d}-q0f32-MLC"
        stages[f"gen_config_{i}"] = {
            "cmd": f"mkdir -p config_{i} && cp {built}/mlc-chat-config.json config_{i}/",
            "deps": ["source_config"], "outs": [f"config_{i}"],
        }
        stages[f"compile_{i}"] = {
            "cmd": f"cp {dist}/libs/tiny{i:03d}-q0f32-llvm-x86_64.so lib_{i}.so",
            "deps": [f"config_{i}"], "outs": [f"lib_{i}.so"],
        }
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    dvc = str(Path(sys.executable).with_name("dvc"))
    run([dvc, "init", "--no-scm", "-q"], cwd=project)
    run([dvc, "config", "core.analytics", "false"], cwd=project)
    run([dvc, "repro", "-q"], cwd=project)
    return project


def main() -> dict[str, float]:
    results: dict[str, float] = {}
    dvc = str(Path(sys.executable).with_name("dvc"))
    cache = ROOT / "cache"
    print("\nno-op build vs number of recipes (tiny model, q0f32 llvm; median of 7, page cache warm)")
    print(f"  {'recipes':>7s} {'nodes':>5s} {'mlcbuild build':>15s} {'mlcbuild plan':>14s} {'plan/build':>10s} {'dvc repro':>10s} {'dvc/build':>9s}")
    for count in SIZES:
        folder = ROOT / str(count)
        recipes = [str(p) for p in write_recipes(folder, count)]
        cmd = [sys.executable, "-m", "mlcbuild", "--cache-dir", str(cache)]
        run([*cmd, "build", "-j", "2", *recipes], cwd=folder)
        time.sleep(2.2)  # past the racy window, so the next no-op writes the stat stamp
        run([*cmd, "build", *recipes], cwd=folder)
        ours = median_wall(lambda: run([*cmd, "build", *recipes], cwd=folder), repeat=7)
        plan = median_wall(lambda: run([*cmd, "plan", *recipes], cwd=folder), repeat=7)
        project = dvc_project(folder, count)
        peer = median_wall(lambda: run([dvc, "repro", "-q"], cwd=project), repeat=7)
        nodes = 3 + 2 * count
        results.update({
            f"recipes_{count}_nodes": nodes,
            f"recipes_{count}_noop_s": ours,
            f"recipes_{count}_plan_s": plan,
            f"recipes_{count}_dvc_repro_s": peer,
            f"recipes_{count}_speedup_vs_dvc": peer / ours,
            f"recipes_{count}_plan_over_noop": plan / ours,
        })
        print(f"  {count:7d} {nodes:5d} {ours * 1000:12.0f} ms {plan * 1000:11.0f} ms {plan / ours:9.2f}x "
              f"{peer * 1000:7.0f} ms {peer / ours:8.1f}x")
    return results


if __name__ == "__main__":
    main()
