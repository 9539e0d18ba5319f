"""Shared pytest fixtures (each section is owned by the module it serves)."""

# --- fake Hugging Face Hub (tests/fakehub.py) ---------------------------------------------------
import os as _os

import pytest as _pytest


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
