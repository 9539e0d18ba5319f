"""Shared pytest fixtures (each section is owned by the module it serves)."""

# --- fake Hugging Face Hub (tests/fakehub.py) ---------------------------------------------------
import os as _os

import pytest as _pytest

# --- the `slow` marker: `pytest -m "not slow"` is the fast run (CONTRIBUTING.md) ------------------
COMPILE_FIXTURES = frozenset({"compiled_model", "shared_cache", "cache", "demo_artifacts", "compiled", "qwen_compiled", "gemma_compiled"})
"""Fixtures that compile a model with TVM (tens of seconds each, once per session): a test that uses
one is slow by what it stands on, so it is marked here rather than by hand in every file."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if COMPILE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(_pytest.mark.slow)


@_pytest.fixture(scope="session")
def fake_hub(tmp_path_factory):
    """A local server speaking the Hub's HTTP API; HF_ENDPOINT and HF_HUB_CACHE point at it for the session.

    `fake_hub.add_repo("org/name", folder, branch="main", gated=False, tokens=()) -> sha`,
    `fake_hub.count("GET", "/resolve/")`, `fake_hub.clear_requests()`, `fake_hub.url`, `fake_hub.cache_dir`.
    """
    try:
        from fakehub import FakeHub
    except ImportError:
        from tests.fakehub import FakeHub

    cache = tmp_path_factory.mktemp("hf-cache")
    hub = FakeHub().start()
    hub.cache_dir = cache
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
    saved = {k: _os.environ.get(k) for k in [*env, "HF_TOKEN", "HF_HUB_OFFLINE"]}
    _os.environ.update(env)
    _os.environ.pop("HF_TOKEN", None)
    _os.environ.pop("HF_HUB_OFFLINE", None)
    import sys as _sys

    constants = _sys.modules.get("huggingface_hub.constants")
    saved_constants = {}
    if constants is not None:
        patched = {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_CACHE": str(cache),
            "HF_HUB_OFFLINE": False,
        }
        saved_constants = {k: getattr(constants, k) for k in patched}
        for k, v in patched.items():
            setattr(constants, k, v)
    try:
        yield hub
    finally:
        hub.stop()
        for k, v in saved.items():
            if v is None:
                _os.environ.pop(k, None)
            else:
                _os.environ[k] = v
        for k, v in saved_constants.items():
            setattr(constants, k, v)


# --- compiled model libraries (owned by tests/test_compile*.py, tests/test_runtime*.py) ---------
TINY_FAMILIES = ("gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
"""Every registered family, as a tiny random checkpoint (the makers live beside each family's tests)."""


def _tiny_maker(family):
    import importlib

    module, name = {
        "gpt_neox": ("tiny_models", "make_tiny_gpt_neox"),
        "llama": ("tiny_models", "make_tiny_llama"),
        "mistral": ("tiny_models", "make_tiny_mistral"),
        "qwen2": ("tiny_qwen", "make_tiny_qwen2"),
        "qwen3": ("tiny_qwen", "make_tiny_qwen3"),
        "gemma2": ("test_family_gemma", "make_tiny_gemma2"),
        "gemma3": ("test_family_gemma", "make_tiny_gemma3"),
        "phi3": ("test_family_phi3", "make_tiny_phi3"),
    }[family]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return getattr(importlib.import_module(f"tests.{module}"), name)


class _CompiledModels:
    """Tiny HF model → converted weights + mlc-chat-config.json → library, each built once per session."""

    def __init__(self, root):
        self.root = root
        self._hf = {}
        self._built = {}

    def hf_dir(self, family):
        if family not in self._hf:
            self._hf[family] = _tiny_maker(family)(self.root / family / "hf")
        return self._hf[family]

    def model_dir(self, family, quantization, overrides=None):
        from mlcbuild.steps.convert import convert_checkpoint
        from mlcbuild.steps.gen_config import build_config

        out = self.root / family / quantization
        if not (out / "tensor-cache.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            convert_checkpoint(self.hf_dir(family), out, quantization)
            params = {
                "quantization": quantization,
                "conv_template": "redpajama_chat" if family == "gpt_neox" else "llama-2",
                "overrides": {"context_window_size": 128, "prefill_chunk_size": 16, **(overrides or {})},
                "model_type": family,
            }
            config = build_config(self.hf_dir(family), out, params)
            (out / "mlc-chat-config.json").write_bytes(config.dumps())
        return out

    def __call__(self, family, quantization, target="llvm", options=None):
        import json as _json
        from types import SimpleNamespace

        from mlcbuild.compiler.build import build_model_lib
        from mlcbuild.compiler.pipeline import CompileOptions
        from mlcbuild.targets import resolve_target

        key = (family, quantization, target, _json.dumps(options, sort_keys=True))
        if key not in self._built:
            model_dir = self.model_dir(family, quantization)
            name, _, variant = target.partition(":")
            chat_config = _json.loads((model_dir / "mlc-chat-config.json").read_text())
            suffix = "".join(f"-{k}{v}" for k, v in sorted((options or {}).items()))
            out = self.root / family / f"lib-{quantization}-{name}-{variant or 'default'}{suffix}"
            result = build_model_lib(chat_config, resolve_target(name, variant or None), CompileOptions.from_json(options), out)
            self._built[key] = SimpleNamespace(
                family=family,
                quantization=quantization,
                hf_dir=self.hf_dir(family),
                model_dir=model_dir,
                lib=result.path,
                metadata=result.metadata,
                timings=result.timings,
            )
        return self._built[key]


@_pytest.fixture(scope="session")
def compiled_model(tmp_path_factory):
    """compiled_model(family, quantization, target="llvm", options=None) -> namespace(hf_dir, model_dir, lib, metadata).

    family is one of TINY_FAMILIES; context_window_size 128, prefill chunk 16.
    """
    return _CompiledModels(tmp_path_factory.mktemp("compiled"))


# --- a cache with the tiny demo model built for llvm (owned by tests/test_build.py; reused by test_matrix.py, test_store_hardening.py)
@_pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """A cache where `test_build.write_recipe()`'s q0f32 llvm build is done once for the whole session."""
    try:
        from test_build import mlcbuild, write_recipe
    except ImportError:
        from tests.test_build import mlcbuild, write_recipe

    cache = tmp_path_factory.mktemp("cache")
    recipe = write_recipe(tmp_path_factory.mktemp("seed"))
    result = mlcbuild("build", str(recipe), cache=cache)
    assert result.returncode == 0, result.stderr + result.stdout
    return cache


@_pytest.fixture
def cache(shared_cache, tmp_path):
    """A private copy of the shared cache, so a test can change it freely."""
    import shutil as _shutil

    copy = tmp_path / "cache"
    _shutil.copytree(shared_cache, copy, ignore=_shutil.ignore_patterns("tmp", "locks"))
    return copy


# --- the trained demo model, built by the real CLI (owned by tests/test_engine.py, test_serve.py) ---
@_pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory):
    """recipes/demo.yaml built into a temp output: namespace(recipe, out, model_dir(quant), lib(quant))."""
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    import yaml

    repo = Path(__file__).resolve().parent.parent
    root = tmp_path_factory.mktemp("demo")
    recipe = yaml.safe_load((repo / "recipes" / "demo.yaml").read_text())
    recipe["source"]["path"] = str(repo / "recipes" / "models" / "tiny-talker")
    recipe["output"] = str(root / "dist")
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**_os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(
        [sys.executable, "-m", "mlcbuild", "--cache-dir", str(root / "cache"), "build", str(path), "-j", "2"],
        check=True, env=env, capture_output=True, timeout=600,
    )
    name = recipe["name"]
    return SimpleNamespace(
        recipe=path,
        out=root / "dist",
        model_dir=lambda q: root / "dist" / f"{name}-{q}-MLC",
        lib=lambda q: next((root / "dist" / "libs").glob(f"{name}-{q}-llvm*.so")),
    )


# --- an aarch64 Python under qemu-user (tests/aarch64/make_env.py; test_int8_gemv.py, test_cpu_schedule.py)
@_pytest.fixture(scope="session")
def aarch64_python():
    """aarch64_python(script, *args) -> CompletedProcess: `python -c script args` on the aarch64 Python
    that `make tools` unpacks into the venv, under qemu-user, with TVM's aarch64 runtime (no compiler)
    and this checkout importable; skips where `make tools` has not run."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    env_dir = Path(sys.prefix) / "aarch64"
    root = env_dir / "root"
    python = root / "usr" / "bin" / "python3.11"
    if shutil.which("qemu-aarch64") is None or not python.is_file():
        _pytest.skip("`make tools` installs qemu-user and the aarch64 Python (tests/aarch64/make_env.py)")
    guest_env = {
        "LD_LIBRARY_PATH": f"{root}/lib/aarch64-linux-gnu:{root}/usr/lib/aarch64-linux-gnu",
        "PYTHONHOME": f"{root}/usr",
        "PYTHONPATH": f"{env_dir / 'site'}:{Path(__file__).resolve().parent.parent}",
        "TVM_USE_RUNTIME_LIB": "1",
        "TVM_NUM_THREADS": "2",
    }
    flags = [arg for key, value in guest_env.items() for arg in ("-E", f"{key}={value}")]

    def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", *flags, str(python), "-c", script, *args],
                              capture_output=True, text=True, timeout=timeout)

    return run
