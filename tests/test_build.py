"""End-to-end behaviour of the build system on the bundled tiny model: incremental rebuilds,
early cutoff, crash safety, concurrency, cache maintenance. Real steps, real TVM compiles
(llvm), one cache shared by the session so each compile happens once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "recipes" / "models" / "tiny-redpajama"

pytestmark = pytest.mark.slow


def write_recipe(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model"
    if not model.exists():
        shutil.copytree(DEMO_MODEL, model)
    data = {
        "name": "tiny",
        "source": {"path": "model"},
        "quantizations": ["q0f32"],
        "targets": ["llvm"],
        "conv_template": "redpajama_chat",
        "overrides": {"context_window_size": 512, "prefill_chunk_size": 128, "max_batch_size": 1},
        "output": "dist",
    }
    data.update(changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mlcbuild(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mlcbuild", *args], capture_output=True, text=True, env=env, timeout=900
    )


def statuses(recipe: Path, cache: Path) -> dict[str, str]:
    """node label -> status, from an in-process dry run."""
    from mlcbuild.execute.decision import Decider, dry_run
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.store.cas import Store

    store = Store(cache)
    graph = plan([load_recipe(recipe)], store, PlanOptions())
    report = dry_run(graph, set(graph.nodes), Decider(store, graph))
    return {o.node.label: o.status for o in report.outcomes.values()}


def test_build_layout_and_second_build_all_cached(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    first = mlcbuild("build", str(recipe), cache=cache)
    assert first.returncode == 0, first.stderr
    dist = tmp_path / "r" / "dist"
    model_dir = dist / "tiny-q0f32-MLC"
    assert (model_dir / "tensor-cache.json").is_file()
    assert (model_dir / "mlc-chat-config.json").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert (dist / "libs" / "tiny-q0f32-llvm-x86_64.so").is_file()
    assert set(statuses(recipe, cache).values()) == {"cached"}
    second = mlcbuild("build", str(recipe), cache=cache)
    assert second.returncode == 0 and "up to date" in second.stdout


def test_template_edit_reruns_only_gen_config(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r", conv_template="chatml")
    assert statuses(recipe, cache) == {
        "local model": "cached",
        "local model (config, tokenizer)": "cached",
        "convert tiny q0f32": "cached",
        "gen-config tiny q0f32": "pending",
        "compile tiny q0f32 llvm": "pending",
    }
    result = mlcbuild("build", str(recipe), cache=cache)
    assert result.returncode == 0, result.stderr
    built = [line for line in result.stderr.splitlines() if line.startswith("built ")]
    assert len(built) == 1 and "gen-config" in built[0], result.stderr
    config = json.loads((tmp_path / "r/dist/tiny-q0f32-MLC/mlc-chat-config.json").read_text())
    assert config["conv_template"]["name"] == "chatml"


def test_sampling_edit_does_not_recompile(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r",
        overrides={"context_window_size": 512, "prefill_chunk_size": 128, "max_batch_size": 1, "temperature": 0.11},
    )
    result = mlcbuild("build", str(recipe), cache=cache)
    assert result.returncode == 0, result.stderr
    assert "built gen-config" in result.stderr and "built compile" not in result.stderr


def test_early_cutoff_on_identical_output(tmp_path: Path, cache: Path) -> None:
    """Restating a value the model already has changes gen-config's key, not its output."""
    generation = json.loads((DEMO_MODEL / "generation_config.json").read_text())
    recipe = write_recipe(tmp_path / "r")
    baseline = mlcbuild("build", str(recipe), cache=cache)
    assert baseline.returncode == 0
    before = (tmp_path / "r/dist/tiny-q0f32-MLC/mlc-chat-config.json").read_bytes()
    overrides = {"context_window_size": 512, "prefill_chunk_size": 128, "max_batch_size": 1}
    key, value = next((k, v) for k, v in generation.items() if k in ("temperature", "top_p"))
    recipe = write_recipe(tmp_path / "r", overrides={**overrides, key: value})
    result = mlcbuild("build", str(recipe), cache=cache)
    assert "built gen-config" in result.stderr
    assert (tmp_path / "r/dist/tiny-q0f32-MLC/mlc-chat-config.json").read_bytes() == before
    assert "built compile" not in result.stderr


def test_adding_a_quantization_adds_only_new_nodes(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r", quantizations=["q0f32", "q4f16_1"])
    got = statuses(recipe, cache)
    assert {k: v for k, v in got.items() if "q0f32" in k or k.startswith("local ")} == {
        "local model": "cached",
        "local model (config, tokenizer)": "cached",
        "convert tiny q0f32": "cached",
        "gen-config tiny q0f32": "cached",
        "compile tiny q0f32 llvm": "cached",
    }
    assert [v for k, v in got.items() if "q4f16_1" in k] == ["pending"] * 3


def test_noop_build_reads_no_weights_and_imports_no_tvm(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    assert mlcbuild("build", str(recipe), cache=cache).returncode == 0
    probe = (
        "import sys, mlcbuild.store.hashing as h\n"
        "calls = []\n"
        "real = h.sha256_file\n"
        "h.sha256_file = lambda p: calls.append(str(p)) or real(p)\n"
        "from mlcbuild.cli.main import main\n"
        f"code = main(['--cache-dir', {str(cache)!r}, 'build', {str(recipe)!r}])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')))\n"
        "print(calls)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "[]"]


def test_noop_build_with_ray_executor_starts_no_ray(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    assert mlcbuild("build", str(recipe), cache=cache).returncode == 0
    probe = (
        "import sys\n"
        "from mlcbuild.cli.main import main\n"
        f"code = main(['--cache-dir', {str(cache)!r}, 'build', {str(recipe)!r}, '--executor', 'ray', '--ray-address', '127.0.0.1:1'])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"


def test_identical_nodes_from_two_recipes_are_one(tmp_path: Path) -> None:
    from mlcbuild.plan.planner import PlanOptions, plan
    from mlcbuild.recipe.load import load_recipe
    from mlcbuild.store.cas import Store

    a = write_recipe(tmp_path / "a")
    b = tmp_path / "a" / "other.yaml"
    b.write_text(a.read_text().replace("redpajama_chat", "chatml"))
    graph = plan([load_recipe(a), load_recipe(b)], Store(tmp_path / "c"), PlanOptions())
    kinds = sorted(n.kind for n in graph.nodes.values())
    assert kinds == ["compile", "compile", "convert", "download", "download", "gen-config", "gen-config"]


def test_sigkill_mid_step_leaves_no_result(tmp_path: Path, shared_cache: Path) -> None:
    cache = tmp_path / "cache"
    recipe = write_recipe(tmp_path / "r", quantizations=["q4f16_1"])
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlcbuild", "build", str(recipe), "-j", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((cache / "tmp").glob("compile-*")):
        assert proc.poll() is None, "build ended before compile started"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    leftover = list((cache / "tmp").glob("compile-*"))
    assert leftover and "leftovers of killed builds 0 " not in mlcbuild("cache", "du", cache=cache).stdout
    collected = mlcbuild("cache", "gc", cache=cache)
    assert collected.returncode == 0 and str(leftover[0]) in collected.stdout
    assert not any(p.exists() for p in leftover)
    got = statuses(recipe, cache)
    assert got["compile tiny q4f16_1 llvm"] == "pending"
    assert got["gen-config tiny q4f16_1"] == "cached"  # compile's input; convert may come later (longest path first)
    result = mlcbuild("build", str(recipe), cache=cache)
    assert result.returncode == 0, result.stderr
    assert set(statuses(recipe, cache).values()) == {"cached"}
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0


def test_concurrent_builds_make_one_result_per_key(tmp_path: Path, cache: Path) -> None:
    recipes = [write_recipe(tmp_path / f"r{i}", conv_template="llama-2") for i in range(3)]
    env = {**os.environ, "MLCBUILD_CACHE_DIR": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "mlcbuild", "build", str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in recipes
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    built = sum(err.count("built gen-config") for _, err in outputs)
    assert built == 1, outputs
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0
    configs = {(tmp_path / f"r{i}/dist/tiny-q0f32-MLC/mlc-chat-config.json").read_bytes() for i in range(3)}
    assert len(configs) == 1


def test_cache_verify_detects_a_flipped_byte(cache: Path) -> None:
    assert mlcbuild("cache", "verify", cache=cache).returncode == 0
    victim = max((p for p in (cache / "objects").glob("*/*")), key=lambda p: p.stat().st_size)
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    result = mlcbuild("cache", "verify", cache=cache)
    assert result.returncode == 1 and "corrupt object" in result.stdout
    assert victim.name[:12] in result.stdout


def test_explain_names_the_changed_input(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    assert mlcbuild("build", str(recipe), cache=cache).returncode == 0
    recipe = write_recipe(tmp_path / "r", conv_template="vicuna_v1.1")
    result = mlcbuild("explain", str(recipe), "gen-config", cache=cache)
    assert result.returncode == 0, result.stderr
    assert "params.conv_template: 'redpajama_chat' -> 'vicuna_v1.1'" in result.stdout


def test_graph_formats(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r", quantizations=["q0f32", "q4f16_1"])
    data = json.loads(mlcbuild("graph", str(recipe), "--format", "json", cache=cache).stdout)
    assert len(data["nodes"]) == 8 and len(data["edges"]) == 6  # two downloads: all files, config+tokenizer
    mermaid = mlcbuild("graph", str(recipe), cache=cache).stdout
    assert mermaid.startswith("graph LR") and mermaid.count("-->") == 6
    assert "digraph" in mlcbuild("graph", str(recipe), "--format", "dot", cache=cache).stdout


def test_gc_keeps_what_a_recipe_needs(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    other = write_recipe(tmp_path / "o", conv_template="chatml")
    assert mlcbuild("build", str(other), cache=cache).returncode == 0
    result = mlcbuild("cache", "gc", "--keep", str(recipe), cache=cache)
    assert result.returncode == 0, result.stderr
    assert set(statuses(recipe, cache).values()) == {"cached"}
    assert statuses(other, cache)["gen-config tiny q0f32"] == "pending"


def test_hf_source_is_locked_and_reproducible(tmp_path: Path, cache: Path, fake_hub) -> None:
    first_sha = fake_hub.add_repo("acme/tiny-redpajama", DEMO_MODEL, branch="main")
    folder = tmp_path / "r"
    recipe = write_recipe(folder, source={"hf": "acme/tiny-redpajama", "revision": "main"})
    frozen = mlcbuild("build", str(recipe), "--frozen", cache=cache)
    assert frozen.returncode == 2 and "lock" in frozen.stderr and frozen.stderr.count("\n") == 1

    built = mlcbuild("build", str(recipe), cache=cache)
    assert built.returncode == 0, built.stderr
    lock = json.loads((folder / "recipe.lock.json").read_text())
    assert lock["sources"] == {"acme/tiny-redpajama@main": first_sha}
    assert "built download" in built.stderr and "built compile" not in built.stderr

    moved = tmp_path / "moved"
    shutil.copytree(DEMO_MODEL, moved)
    (moved / "README.md").write_text("new commit\n")
    config = json.loads((moved / "generation_config.json").read_text())
    (moved / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.3}))
    second_sha = fake_hub.add_repo("acme/tiny-redpajama", moved, branch="main")
    assert second_sha != first_sha
    fake_hub.clear_requests()
    again = mlcbuild("build", str(recipe), "--frozen", cache=cache)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert fake_hub.count() == 0, fake_hub.requests

    assert mlcbuild("lock", str(recipe), cache=cache).returncode == 0
    assert json.loads((folder / "recipe.lock.json").read_text())["sources"]["acme/tiny-redpajama@main"] == second_sha
    updated = mlcbuild("build", str(recipe), cache=cache)
    assert updated.returncode == 0, updated.stderr
    assert "built download" in updated.stderr and "built gen-config" in updated.stderr
    assert "built convert" not in updated.stderr and "built compile" not in updated.stderr


def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path / "r", quantizations=["q4f16"])
    bad = mlcbuild("build", str(recipe), cache=cache)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    assert "recipe.yaml:5:3: quantizations[0]" in bad.stderr and "did you mean 'q4f16_1'" in bad.stderr

    missing = mlcbuild("build", str(tmp_path / "nope.yaml"), cache=cache)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr

    good = write_recipe(tmp_path / "g")
    wrong_target = mlcbuild("build", str(good), "-t", "metal", cache=cache)
    assert wrong_target.returncode == 2 and "metal" in wrong_target.stderr


def test_cache_ls_du_and_targets(cache: Path) -> None:
    listing = mlcbuild("cache", "ls", cache=cache)
    assert listing.returncode == 0
    for kind in ("download", "convert", "gen-config", "compile"):
        assert kind in listing.stdout
    usage = mlcbuild("cache", "du", cache=cache)
    assert usage.returncode == 0 and "5 results" in usage.stdout
    targets = mlcbuild("targets", cache=cache)
    assert targets.returncode == 0
    rows = {line.split()[0]: line for line in targets.stdout.splitlines() if line.startswith(" ") and line.strip()}
    assert "yes" in rows["llvm"] and "yes" in rows["cuda"]
    assert "no" in rows["metal"] and "xcrun" in rows["metal"]
