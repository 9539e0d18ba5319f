"""gen-config step and conversation templates."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.steps.base import RunContext
from mlcbuild.steps.gen_config import GenConfigStep, detect_tokenizer_info
from mlcbuild.store.manifest import FileEntry, Manifest
from mlcbuild.templates import CONV_TEMPLATES, Conversation, get_template

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "models" / "tiny-redpajama"

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 384,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def gen(source: Path, out: Path, conv_template: str = "redpajama_chat", overrides: dict | None = None,
        quantization: str = "q4f16_1", model_type: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    params = {"quantization": quantization, "conv_template": conv_template, "overrides": overrides or {},
              "model_type": model_type}
    GenConfigStep().run(RunContext(params=params, inputs={"source": source}, out=out))
    return json.loads((out / "mlc-chat-config.json").read_text())


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "src"))


def test_demo_config_fields(tmp_path):
    cfg = gen(DEMO, tmp_path / "out")
    for key in ("version", "model_type", "quantization", "model_config", "vocab_size", "context_window_size",
                "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards",
                "temperature", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_p",
                "tokenizer_files", "tokenizer_info", "conv_template", "pad_token_id", "bos_token_id",
                "eos_token_id", "max_batch_size"):
        assert key in cfg, key
    assert cfg["version"] == "0.1.0" and cfg["model_type"] == "gpt_neox" and cfg["quantization"] == "q4f16_1"
    assert cfg["vocab_size"] == 384 and cfg["model_config"]["rotary_pct"] == 0.25
    assert cfg["context_window_size"] == 512
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "mlc-chat-config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]
    assert cfg["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    assert cfg["tokenizer_info"] == {
        "token_postproc_method": "byte_level", "prepend_space_in_encode": False, "strip_space_in_decode": False,
    }


def test_precedence_overrides_generation_config_config_defaults(demo_copy, tmp_path):
    config = json.loads((demo_copy / "config.json").read_text())
    config.update(top_p=0.5, temperature=0.2, repetition_penalty=1.5)
    (demo_copy / "config.json").write_text(json.dumps(config))
    (demo_copy / "generation_config.json").write_text(
        json.dumps({"temperature": 0.8, "repetition_penalty": 1.1, "eos_token_id": [0, 1], "top_p": None})
    )
    cfg = gen(demo_copy, tmp_path / "out", overrides={"temperature": 0.3})
    assert cfg["temperature"] == 0.3
    assert cfg["repetition_penalty"] == 1.1
    assert cfg["top_p"] == 0.5
    assert cfg["presence_penalty"] == 0.0 and cfg["frequency_penalty"] == 0.0
    assert cfg["eos_token_id"] == [0, 1]
    assert cfg["bos_token_id"] == 0 and cfg["pad_token_id"] == 0


def test_out_of_range_checkpoint_value_is_unset_and_the_output_loads(demo_copy, tmp_path):
    """`repetition_penalty: 0` in generation_config.json (HF and MLC's runtime refuse it) falls through
    to config.json, then to the default; what gen-config writes, ChatConfig reads back."""
    from mlcbuild.artifact import ChatConfig

    config = json.loads((demo_copy / "config.json").read_text())
    config.update(temperature=7, top_p=0.9)
    (demo_copy / "config.json").write_text(json.dumps(config))
    (demo_copy / "generation_config.json").write_text(json.dumps({"repetition_penalty": 0, "top_p": 0, "temperature": 0.5}))
    cfg = gen(demo_copy, tmp_path / "out")
    assert (cfg["repetition_penalty"], cfg["top_p"], cfg["temperature"]) == (1.0, 0.9, 0.5)
    loaded = ChatConfig.read(tmp_path / "out")
    assert loaded.sampling.repetition_penalty == 1.0 and loaded.sampling.top_p == 0.9
    with pytest.raises(UserError, match=r"overrides\.repetition_penalty.*\[0\.01, 100\]"):
        gen(demo_copy, tmp_path / "bad", overrides={"repetition_penalty": 0})


def test_arch_overrides_land_in_model_config(tmp_path):
    overrides = {"context_window_size": 256, "prefill_chunk_size": 64, "max_batch_size": 4, "attention_sink_size": 2}
    cfg = gen(DEMO, tmp_path / "out", overrides=overrides)
    for key, value in overrides.items():
        assert cfg[key] == value, key
        assert cfg["model_config"][key] == value, key
    assert cfg["model_config"]["tensor_parallel_shards"] == cfg["tensor_parallel_shards"] == 1


def test_unknown_override_and_template(tmp_path):
    with pytest.raises(UserError, match="overrides.max_gen_len"):
        gen(DEMO, tmp_path / "a", overrides={"max_gen_len": 10})
    with pytest.raises(UserError, match="did you mean 'llama-2'"):
        gen(DEMO, tmp_path / "b", conv_template="llama2")


def test_template_object_is_mlc_conversation(tmp_path):
    cfg = gen(DEMO, tmp_path / "out", conv_template="llama-2")
    assert cfg["conv_template"] == CONV_TEMPLATES["llama-2"].to_json()
    t = cfg["conv_template"]
    assert t["system_prefix_token_ids"] == [1] and t["stop_token_ids"] == [2]
    assert t["role_templates"] == {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"}
    assert Conversation.from_json(t) == CONV_TEMPLATES["llama-2"]


def test_template_ids_outside_the_vocabulary_are_refused(tmp_path):
    """llama-3's ids (128000...) on a 384-token model would read past the embedding table at run time."""
    with pytest.raises(UserError, match=r"template 'llama-3' stop_token_ids: token id 128001 is outside the model's vocabulary \[0, 384\)") as info:
        gen(DEMO, tmp_path / "out", conv_template="llama-3")
    assert info.value.field == "conv_template"


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DEMO, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(UserError, match="the tokenizer has 3[0-9][0-9] tokens but the model's vocabulary .* is 300") as info:
        gen(src, tmp_path / "out", conv_template="redpajama_chat")
    assert info.value.field == "source"


def test_output_is_deterministic(tmp_path):
    a = gen(DEMO, tmp_path / "a", overrides={"temperature": 0.5, "context_window_size": 256})
    b = gen(DEMO, tmp_path / "b", overrides={"context_window_size": 256, "temperature": 0.5})
    assert a == b
    for name in ("mlc-chat-config.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_view_ignores_weights():
    step = GenConfigStep()

    def manifest(weights: str, config: str) -> Manifest:
        return Manifest({
            "config.json": FileEntry(config, 10),
            "tokenizer.json": FileEntry("t", 10),
            "model-00001-of-00002.safetensors": FileEntry(weights, 100),
            "model.safetensors.index.json": FileEntry(weights + "i", 5),
            "pytorch_model.bin": FileEntry(weights + "b", 100),
        })

    def view(m: Manifest):
        return step.view("source", m, lambda path: b"")

    assert view(manifest("w1", "c1")) == view(manifest("w2", "c1")) == {"config.json": "c1", "tokenizer.json": "t"}
    assert view(manifest("w1", "c1")) != view(manifest("w1", "c2"))


def test_llama_family(tmp_path):
    src = tmp_path / "llama"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    shutil.copy(DEMO / "tokenizer.json", src / "tokenizer.json")
    cfg = gen(src, tmp_path / "out", conv_template="llama-2", quantization="q0f16")
    assert cfg["model_type"] == "llama" and cfg["context_window_size"] == 1024
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    assert cfg["tokenizer_files"] == ["tokenizer.json"]


def test_missing_config_is_one_line(tmp_path):
    (tmp_path / "src").mkdir()
    from mlcbuild.errors import StepError

    with pytest.raises(StepError, match="config.json not found"):
        gen(tmp_path / "src", tmp_path / "out")


LLAMA2_TOKENIZER = {
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ]},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]},
}


def test_detect_tokenizer_info():
    info = detect_tokenizer_info(LLAMA2_TOKENIZER)
    assert (info.token_postproc_method, info.prepend_space_in_encode, info.strip_space_in_decode) == (
        "byte_fallback", True, True,
    )
    gpt2 = detect_tokenizer_info({"decoder": {"type": "ByteLevel", "add_prefix_space": True}, "normalizer": None})
    assert (gpt2.token_postproc_method, gpt2.prepend_space_in_encode, gpt2.strip_space_in_decode) == (
        "byte_level", False, False,
    )
    assert detect_tokenizer_info(None).token_postproc_method == "byte_fallback"
    assert detect_tokenizer_info({"decoder": {"type": "WordPiece"}}).token_postproc_method == "byte_fallback"


def test_required_templates_present():
    for name in ("redpajama_chat", "llama-2", "llama-3", "chatml", "mistral_default", "dolly", "tinyllama_v1_0",
                 "vicuna_v1.1"):
        assert CONV_TEMPLATES[name].name == name
        assert Conversation.from_json(CONV_TEMPLATES[name].to_json()) == CONV_TEMPLATES[name]


def test_prompts():
    t = get_template("llama-2")
    t.messages = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Why?"), ("assistant", None)]
    assert t.as_prompt() == (
        "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n"
        "Hi [/INST] Hello! </s><s>[INST] Why? [/INST] "
    )
    r = get_template("redpajama_chat")
    r.messages = [("user", "Hi"), ("assistant", None)]
    assert r.as_prompt() == "<human>: Hi\n<bot>:"
    assert CONV_TEMPLATES["llama-2"].messages == []


def test_templates_import_is_light():
    code = (
        "import sys, mlcbuild.templates, mlcbuild.steps.gen_config;"
        "heavy = [m for m in ('tvm', 'torch', 'transformers', 'huggingface_hub', 'numpy', 'tokenizers') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_demo_model_is_reproducible(tmp_path):
    """scripts/make_demo_model.py regenerates the bundled folder byte for byte (same library versions)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_model.py"), str(tmp_path)], check=True,
                   capture_output=True)
    bundled = sorted(p.name for p in DEMO.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == bundled
    for name in bundled:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 2_000_000
