"""The compile key: architecture fields in, sampling/template/weights out; toolchain and target in.

These run without TVM (planning must not import it).
"""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest

from mlcbuild.errors import UserError
from mlcbuild.plan.graph import Node
from mlcbuild.plan.keys import key_preimage, node_key
from mlcbuild.steps.compile import CompileStep
from mlcbuild.store.manifest import FileEntry, Manifest
from mlcbuild.targets import target_params

CHAT_CONFIG: dict[str, Any] = {
    "version": "0.1.0",
    "model_type": "gpt_neox",
    "quantization": "q4f16_1",
    "model_config": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 256, "context_window_size": 512, "prefill_chunk_size": 128},
    "vocab_size": 256,
    "context_window_size": 512,
    "sliding_window_size": -1,
    "prefill_chunk_size": 128,
    "attention_sink_size": 0,
    "tensor_parallel_shards": 1,
    "max_batch_size": 1,
    "temperature": 0.7,
    "top_p": 0.95,
    "repetition_penalty": 1.0,
    "conv_template": {"name": "redpajama_chat", "system_message": ""},
    "tokenizer_files": ["tokenizer.json"],
    "eos_token_id": 0,
}


class _Store:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def read_bytes(self, digest: str) -> bytes:
        return self.blobs[digest]


def _config_output(store: _Store, config: dict[str, Any], tokenizer: bytes = b"{}") -> Manifest:
    files = {}
    for name, data in (("mlc-chat-config.json", json.dumps(config).encode()), ("tokenizer.json", tokenizer)):
        files[name] = FileEntry(store.put(data), len(data))
    return Manifest(files)


def _key(config: dict[str, Any], target: str = "llvm", options: dict[str, Any] | None = None, tokenizer: bytes = b"{}") -> str:
    store = _Store()
    name, _, variant = target.partition(":")
    gen = Node.make("gen-config", {"quantization": config["quantization"]}, {}, "gen-config")
    node = Node.make(
        "compile",
        {"quantization": config["quantization"], "target": target_params(name, variant or None), "options": options or {"opt": "O2"}},
        {"config": gen},
        "compile",
    )
    return node_key(key_preimage(node, {"config": _config_output(store, config, tokenizer)}, store))  # type: ignore[arg-type]


def _changed(**edits: Any) -> dict[str, Any]:
    config = copy.deepcopy(CHAT_CONFIG)
    for dotted, value in edits.items():
        where = config
        *path, last = dotted.split("__")
        for part in path:
            where = where[part]
        where[last] = value
    return config


BASE = _key(CHAT_CONFIG)


@pytest.mark.parametrize(
    "edit",
    [
        {"temperature": 0.1},
        {"top_p": 0.5},
        {"repetition_penalty": 1.3},
        {"conv_template": {"name": "chatml"}},
        {"eos_token_id": 7},
        {"tokenizer_files": []},
    ],
    ids=lambda e: next(iter(e)),
)
def test_sampling_and_template_fields_do_not_change_compile_key(edit: dict[str, Any]) -> None:
    assert _key(_changed(**edit)) == BASE


def test_tokenizer_bytes_do_not_change_compile_key() -> None:
    assert _key(CHAT_CONFIG, tokenizer=b'{"model": "other"}') == BASE


@pytest.mark.parametrize(
    "edit",
    [
        {"context_window_size": 1024, "model_config__context_window_size": 1024},
        {"model_config__context_window_size": 1024},
        {"prefill_chunk_size": 64},
        {"sliding_window_size": 256},
        {"max_batch_size": 4},
        {"model_config__num_hidden_layers": 3},
    ],
    ids=lambda e: "+".join(e),
)
def test_architecture_fields_change_compile_key(edit: dict[str, Any]) -> None:
    assert _key(_changed(**edit)) != BASE


def test_target_and_options_change_compile_key() -> None:
    assert _key(CHAT_CONFIG, target="cuda:sm_80") != _key(CHAT_CONFIG, target="cuda:sm_90a")
    assert _key(CHAT_CONFIG, options={"opt": "O3"}) != BASE


def test_toolchain_fingerprint() -> None:
    step = CompileStep()
    llvm = step.toolchain({"target": target_params("llvm")})
    cuda = step.toolchain({"target": target_params("cuda", "sm_90a")})
    assert llvm["apache-tvm"] and llvm["apache-tvm"] == cuda["apache-tvm"]
    assert "nvcc" not in llvm and "nvcc" in cuda
    assert cuda["target"]["arch"] == "sm_90a" and cuda["target"]["host"]["kind"] == "llvm"


def test_view_ignores_everything_but_architecture_fields() -> None:
    store = _Store()
    manifest = _config_output(store, CHAT_CONFIG)
    view = CompileStep().view("config", manifest, lambda rel: store.read_bytes(manifest.files[rel].digest))
    fields = set(view["mlc-chat-config.json"])
    assert "temperature" not in fields and "conv_template" not in fields and "tokenizer_files" not in fields
    assert {"model_type", "quantization", "model_config", "context_window_size", "prefill_chunk_size"} <= fields


def _params(target: str, **options: Any) -> dict[str, Any]:
    name, _, variant = target.partition(":")
    return {"quantization": "q4f16_1", "target": target_params(name, variant or None), "options": options}


def test_unbuildable_targets_are_information_and_bad_params_errors() -> None:
    step = CompileStep()
    step.check(_params("llvm"))
    step.check(_params("vulkan"))
    assert step.unavailable(_params("llvm")) is None
    assert "no vulkan codegen" in (step.unavailable(_params("vulkan")) or "")
    assert (step.unavailable(_params("webgpu")) or "").startswith("needs Emscripten (emcc)")
    with pytest.raises(UserError, match="unknown quantization"):
        step.check({**_params("llvm"), "quantization": "q9f9"})
    with pytest.raises(UserError, match="opt"):
        step.check(_params("llvm", opt="O7"))


def test_cublas_requested_without_cublas_support_is_a_user_error() -> None:
    from mlcbuild.toolchain import tvm_capabilities

    if "ext:cublas" in tvm_capabilities():
        pytest.skip("this TVM has cuBLAS")
    with pytest.raises(UserError, match="cuBLAS"):
        CompileStep().check(_params("cuda:sm_90a", cublas=True))


def test_compile_key_and_check_do_not_import_tvm() -> None:
    code = (
        "import sys\n"
        "from mlcbuild.steps.compile import CompileStep\n"
        "from mlcbuild.targets import target_params\n"
        "s = CompileStep(); p = {'quantization': 'q4f16_1', 'target': target_params('cuda', 'sm_80'), 'options': {}}\n"
        "s.check({**p, 'target': target_params('llvm')}); s.toolchain(p)\n"
        "assert 'tvm' not in sys.modules, 'tvm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
