"""download step and hub helpers against tests/fakehub.py through the real huggingface_hub client."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from mlcbuild.errors import MlcbuildError, StepError, UserError
from mlcbuild.hub import resolve_revision, snapshot_path
from mlcbuild.steps.base import RunContext
from mlcbuild.steps.download import DownloadStep
from mlcbuild.weights.model_files import DEFAULT_PATTERNS, select_files

_counter = iter(range(10**6))


TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'


def safetensors_bytes(payload: bytes) -> bytes:
    """A valid safetensors file holding `payload` as one uint8 tensor."""
    header = json.dumps({"x": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    return len(header).to_bytes(8, "little") + header + payload


def make_folder(root: Path, version: int = 1, bin_weights: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "version": version}))
    (root / "tokenizer.json").write_text(TOKENIZER_JSON)
    (root / "model.safetensors").write_bytes(safetensors_bytes(bytes([version]) * 4096))
    if bin_weights:
        (root / "pytorch_model.bin").write_bytes(b"pickle" * 100)
    (root / "README.md").write_text("# card")
    (root / "original").mkdir(exist_ok=True)
    (root / "original" / "consolidated.safetensors").write_bytes(b"x" * 100)
    return root


def unique(name: str) -> str:
    return f"org/{name}-{next(_counter)}"


@pytest.fixture
def hf_cache(fake_hub, tmp_path, monkeypatch) -> Path:
    """A fresh HF cache per test so request counts do not depend on test order."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def run_download(params: dict, out: Path, progress=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(params=params, inputs={}, out=out)
    if progress is not None:
        ctx.progress = progress
    DownloadStep().run(ctx)
    return out


def hf_params(repo: str, revision: str) -> dict:
    return {"repo": repo, "revision": revision, "allow_patterns": list(DEFAULT_PATTERNS)}


def test_select_files_prefers_safetensors_and_top_level():
    names = [
        "config.json", "README.md", "pytorch_model.bin", "pytorch_model.bin.index.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "consolidated.safetensors", "original/params.json", "tokenizer.model", "tokenizer.json", "training_args.bin",
    ]
    assert select_files(names) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
    ]
    assert select_files(["config.json", "pytorch_model.bin", "vocab.json", "merges.txt"]) == [
        "config.json", "merges.txt", "pytorch_model.bin", "vocab.json",
    ]


def test_download_pinned_sha_only_needed_files(fake_hub, hf_cache, tmp_path):
    repo = unique("pinned")
    sha1 = fake_hub.add_repo(repo, make_folder(tmp_path / "v1", 1))
    sha2 = fake_hub.add_repo(repo, make_folder(tmp_path / "v2", 2))
    assert sha1 != sha2 and resolve_revision(repo, "main") == sha2
    fake_hub.clear_requests()
    seen: list[float] = []
    out = run_download(hf_params(repo, sha1), tmp_path / "out", lambda f, m: seen.append(f))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((out / "config.json").read_text())["version"] == 1
    assert (out / "model.safetensors").read_bytes() == safetensors_bytes(bytes([1]) * 4096)
    assert sorted(fake_hub.downloads()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert all(sha1 in r.path for r in fake_hub.requests if "/resolve/" in r.path)
    assert fake_hub.count("GET", "/cdn/") == 1
    assert seen and seen[-1] == pytest.approx(1.0)


def test_second_download_reuses_hf_cache(fake_hub, hf_cache, tmp_path):
    repo = unique("cached")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    fake_hub.clear_requests()
    run_download(hf_params(repo, sha), tmp_path / "a")
    assert len(fake_hub.downloads()) == 3
    fake_hub.clear_requests()
    out = run_download(hf_params(repo, sha), tmp_path / "b")
    assert fake_hub.requests == []
    cached = snapshot_path(repo, sha) / "model.safetensors"
    assert (out / "model.safetensors").read_bytes() == cached.read_bytes()  # linking: tests/test_ingest.py


def test_partial_cache_fetches_only_missing(fake_hub, hf_cache, tmp_path):
    repo = unique("partial")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    run_download({"repo": repo, "revision": sha, "allow_patterns": ["config.json"]}, tmp_path / "a")
    fake_hub.clear_requests()
    run_download(hf_params(repo, sha), tmp_path / "b")
    assert sorted(fake_hub.downloads()) == ["model.safetensors", "tokenizer.json"]


def test_bin_weights_when_no_safetensors(fake_hub, hf_cache, tmp_path):
    folder = make_folder(tmp_path / "src")
    (folder / "model.safetensors").unlink()
    repo = unique("binonly")
    sha = fake_hub.add_repo(repo, folder)
    out = run_download(hf_params(repo, sha), tmp_path / "out")
    assert sorted(os.listdir(out)) == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_local_folder(tmp_path):
    from mlcbuild.store.hashing import StatIndex, tree_digest

    folder = make_folder(tmp_path / "src")
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    content, _, _ = tree_digest(folder, files, StatIndex.open(tmp_path / "index.json"))
    out = run_download({"path": str(folder), "files": files, "content": content}, tmp_path / "out")
    assert sorted(os.listdir(out)) == files
    assert os.stat(out / "config.json").st_ino != os.stat(folder / "config.json").st_ino


def test_local_folder_changed_after_planning_is_refused(tmp_path):
    from mlcbuild.store.hashing import StatIndex, tree_digest

    folder = make_folder(tmp_path / "src")
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    content, _, _ = tree_digest(folder, files, StatIndex.open(tmp_path / "index.json"))
    (folder / "config.json").write_text("{}")
    with pytest.raises(StepError, match="changed while the build was running"):
        run_download({"path": str(folder), "files": files, "content": content}, tmp_path / "out")


def test_resolve_revision(fake_hub, hf_cache, tmp_path):
    repo = unique("resolve")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"), branch="dev")
    assert resolve_revision(repo, "dev") == sha
    fake_hub.clear_requests()
    assert resolve_revision(repo, sha.upper()) == sha
    assert fake_hub.requests == []


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and exc.value.__suppress_context__
    return text


def test_missing_repo(fake_hub, hf_cache, tmp_path):
    with pytest.raises(UserError) as e:
        resolve_revision("org/does-not-exist", "main")
    assert "'org/does-not-exist' not found" in one_line(e)
    with pytest.raises(StepError) as e:
        run_download(hf_params("org/does-not-exist", "a" * 40), tmp_path / "out")
    assert "'org/does-not-exist' not found" in one_line(e)


def test_missing_revision(fake_hub, hf_cache, tmp_path):
    repo = unique("norev")
    fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    with pytest.raises(UserError) as e:
        resolve_revision(repo, "no-such-branch")
    assert one_line(e) == f"revision 'no-such-branch' not found in Hugging Face repo '{repo}'"
    with pytest.raises(StepError) as e:
        run_download(hf_params(repo, "b" * 40), tmp_path / "out")
    assert f"revision '{'b' * 40}' not found" in one_line(e)


def test_gated_repo(fake_hub, hf_cache, tmp_path, monkeypatch):
    repo = unique("gated")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"), gated=True, tokens=["hf_good"])
    assert resolve_revision(repo, "main") == sha
    with pytest.raises(StepError) as e:
        run_download(hf_params(repo, sha), tmp_path / "out1")
    assert "is gated: request access" in one_line(e) and "HF_TOKEN" in str(e.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(StepError) as e:
        run_download(hf_params(repo, sha), tmp_path / "out2")
    assert "your token has no access" in one_line(e)
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    out = run_download(hf_params(repo, sha), tmp_path / "out3")
    assert (out / "model.safetensors").exists()
    assert any(r.authorization == "Bearer hf_good" for r in fake_hub.requests)


def test_network_unreachable(hf_cache, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(StepError) as e:
        resolve_revision("org/any", "main")
    assert one_line(e).startswith(f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}")
    with pytest.raises(StepError) as e:
        run_download(hf_params("org/any", "c" * 40), tmp_path / "out")
    assert "cannot reach the Hugging Face Hub" in one_line(e)


def test_offline_after_download_uses_cache(fake_hub, hf_cache, tmp_path, monkeypatch):
    repo = unique("offline")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    run_download(hf_params(repo, sha), tmp_path / "a")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    out = run_download(hf_params(repo, sha), tmp_path / "b")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_errors_are_mlcbuild_errors():
    assert issubclass(StepError, MlcbuildError) and issubclass(UserError, MlcbuildError)


def test_fake_hub_speaks_the_api(fake_hub, hf_cache, tmp_path):
    import urllib.request

    from huggingface_hub import HfApi, hf_hub_download

    repo = unique("api")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    info = HfApi(endpoint=fake_hub.url).model_info(repo)
    assert info.sha == sha and "original/consolidated.safetensors" in [s.rfilename for s in info.siblings]
    path = hf_hub_download(repo, "config.json", revision="main", cache_dir=hf_cache, endpoint=fake_hub.url)
    assert json.loads(Path(path).read_text())["version"] == 1
    request = urllib.request.Request(f"{fake_hub.url}/{repo}/resolve/{sha}/model.safetensors", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(request) as response:
        assert response.url.startswith(fake_hub.cdn_url)
        assert response.status == 206 and response.headers["Content-Range"] == f"bytes 10-19/{len(safetensors_bytes(bytes(4096)))}"
        assert len(response.read()) == 10
    with urllib.request.urlopen(f"{fake_hub.url}/{repo}/resolve/main/config.json") as response:
        assert response.headers["X-Repo-Commit"] == sha and json.loads(response.read())["version"] == 1


def test_malformed_file_from_the_hub_names_repo_and_file(fake_hub, hf_cache, tmp_path):
    folder = make_folder(tmp_path / "src")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": "sixty-four"}))
    repo = unique("badconfig")
    sha = fake_hub.add_repo(repo, folder)
    with pytest.raises(UserError) as e:
        run_download(hf_params(repo, sha), tmp_path / "out")
    assert one_line(e) == f"{repo}@{sha[:12]}/config.json: hidden_size: expected an integer, got a string ('sixty-four')"


def test_unreachable_hub_names_the_remedies(hf_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(StepError) as e:
        run_download(hf_params("org/any", "c" * 40), tmp_path / "out")
    assert "pre-download it into the HF cache" in one_line(e) and "`source: {path: ...}`" in one_line(e)


def test_hf_hub_offline_is_honoured(fake_hub, hf_cache, tmp_path, monkeypatch):
    repo = unique("offline-env")
    sha = fake_hub.add_repo(repo, make_folder(tmp_path / "src"))
    from huggingface_hub import snapshot_download

    snapshot_download(repo, revision="main", cache_dir=str(hf_cache), endpoint=fake_hub.url)  # the remedy the error names
    fake_hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_revision(repo, "main") == sha
    out = run_download(hf_params(repo, sha), tmp_path / "b")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert fake_hub.requests == []
    with pytest.raises(StepError, match="offline mode is on .* pre-download it into the HF cache"):
        resolve_revision(repo, "v9")
