"""LLMEngine: OpenAI-shaped API, greedy parity with transformers, batching, prefix reuse, streaming text."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcbuild.errors import UserError
from mlcbuild.runtime.sampling import SamplingParams, apply_penalties
from mlcbuild.runtime.textstream import TextStream

TWINKLE = "\nHow I wonder what you are!\nUp above the world so high,"
MLCBUILD_ANSWER = " mlcbuild is a build system for language models."


def _byte_tokenizer():
    """A byte-level BPE with no merges: every UTF-8 byte is its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_stream_holds_back_split_utf8_characters() -> None:
    tok = _byte_tokenizer()
    text = "añ→😀 ok"
    ids = tok.encode(text).ids
    assert len(ids) == len(text.encode("utf-8"))
    stream = TextStream(tok)
    deltas = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[ids.index(ids[-4]) - 1] == ""  # the 4-byte emoji's first bytes show nothing


def test_stream_stop_string_is_cut_and_never_leaked() -> None:
    tok = _byte_tokenizer()
    stream = TextStream(tok, stop=["<human>"])
    shown = []
    for t in tok.encode("Hi there\n<hum").ids:
        shown.append(stream.push(t))
    assert "".join(shown) == "Hi there\n"  # "<hum" may start the stop string: held back
    for t in tok.encode("an>: more").ids:
        shown.append(stream.push(t))
    assert stream.stopped and "".join(shown) + stream.finish() == "Hi there\n"


def test_penalties_follow_openai_and_hf() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype="float32")
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=2.0)
    out = apply_penalties(logits, params, {0: 2}, {0, 1})
    np.testing.assert_allclose(out, [(2.0 - 1.0 - 0.25) / 2.0, -4.0, 1.0, 0.5])
    assert apply_penalties(logits, SamplingParams(), {0: 2}, {0}) is logits


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
     ({"presence_penalty": 3}, "presence_penalty")],
)
def test_bad_sampling_params_name_the_field(kwargs, field) -> None:
    with pytest.raises(UserError) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "model_type, tokenizer_config, expected",
    [("llama", None, True), ("gpt_neox", None, False), ("mistral", None, False), ("unknown_family", None, False),
     ("llama", {"add_bos_token": False}, False), ("gpt_neox", {"add_bos_token": True}, True), ("llama", {"bos_token": "<s>"}, True)],
)
def test_bos_on_raw_prompts_is_the_tokenizers_word_else_the_familys(tmp_path: Path, model_type, tokenizer_config, expected) -> None:
    """Not a model-name check: tokenizer_config.json's add_bos_token decides, else `ModelFamily.adds_bos`."""
    from mlcbuild.artifact import ChatConfig
    from mlcbuild.runtime.loader import adds_bos

    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = ChatConfig(model_type=model_type, quantization="q0f32", model_config={})
    assert adds_bos(tmp_path, config) is expected
    assert adds_bos(tmp_path, None) is (expected if tokenizer_config and "add_bos_token" in tokenizer_config else False)


# --- compiled models --------------------------------------------------------------------------


def _word_level_copy(built, tmp_path: Path, vocab: int = 256) -> Path:
    """The fixture's model folder plus a tokenizer whose words w0..w255 are the token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / built.model_dir.name
    shutil.copytree(built.model_dir, folder)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_greedy_generation_matches_transformers_generate(compiled_model, tmp_path: Path, family: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from mlcbuild.runtime.llm_engine import LLMEngine

    built = compiled_model(family, "q0f32")
    prompt = [3, 141, 59, 26, 5, 35]
    model = AutoModelForCausalLM.from_pretrained(str(built.hf_dir), dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
    expected = out[0, len(prompt) :].tolist()
    assert len(expected) == 40
    with LLMEngine.load(_word_level_copy(built, tmp_path), built.lib) as engine:
        reply = engine.completions.create(prompt, max_tokens=40, temperature=0, ignore_eos=True)
    got = [int(w[1:]) for w in reply.choices[0].text.split()]
    assert got == expected
    assert reply.usage.completion_tokens == 40 and reply.choices[0].finish_reason == "length"


@pytest.fixture(scope="module")
def talker(demo_artifacts):
    from mlcbuild.runtime import open_engine

    engine = open_engine(demo_artifacts.model_dir("q0f32"))
    yield engine
    engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q0f32", "q4f16_1"])
def test_trained_demo_recites_its_training_text(demo_artifacts, quant: str) -> None:
    from mlcbuild.runtime import open_engine

    with open_engine(demo_artifacts.recipe, quant) as engine:
        raw = engine.completions.create("Twinkle, twinkle, little star,", max_tokens=16, temperature=0)
        chat = engine.chat.completions.create([{"role": "user", "content": "What is mlcbuild?"}], temperature=0, max_tokens=20)
    assert raw.choices[0].text.startswith(TWINKLE[:30]), raw.choices[0].text
    assert chat.choices[0].message.content.startswith(MLCBUILD_ANSWER), chat.choices[0].message.content


@pytest.mark.slow
def test_next_chat_turn_prefills_only_the_new_tokens(talker) -> None:
    first = [{"role": "user", "content": "What is mlcbuild?"}]
    reply = talker.chat.completions.create(first, temperature=0)
    turn2 = first + [
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "What is quantization?"},
    ]
    second = talker.chat.completions.create(turn2, temperature=0)
    assert second.choices[0].message.content.startswith(" Quantization stores each weight with fewer bits.")
    new_turn = len(talker.chat_tokens(turn2)) - reply.usage.total_tokens
    assert second.usage.prompt_tokens > reply.usage.total_tokens
    assert second.usage.prefill_tokens <= new_turn + 2, (second.usage, new_turn)


@pytest.mark.slow
def test_stream_equals_non_stream_for_a_seed_and_seed_reproduces(talker) -> None:
    msgs = [{"role": "user", "content": "zebra quartz?"}]
    kw = {"temperature": 2.0, "top_p": 1.0, "seed": 11, "max_tokens": 40}
    chunks = list(talker.chat.completions.create(msgs, stream=True, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in ("stop", "length")
    whole = talker.chat.completions.create(msgs, **kw).choices[0].message.content
    assert streamed == whole
    others = {talker.chat.completions.create(msgs, **{**kw, "seed": s}).choices[0].message.content for s in range(4)}
    assert len(others) > 1  # sampling really samples


@pytest.mark.slow
def test_request_joins_a_running_batch(talker) -> None:
    """A second request submitted while the first decodes joins it (batch_decode of 2), and both
    answers equal their solo greedy answers."""
    long = {"max_tokens": 300, "temperature": 0, "ignore_eos": True}
    short = {"max_tokens": 40, "temperature": 0}
    solo = [
        talker.completions.create("The lighthouse keeper", **long).choices[0].text,
        talker.completions.create("Once upon a time there was", **short).choices[0].text,
    ]
    first = talker.completions.create("The lighthouse keeper", stream=True, **long)
    got = [next(first).choices[0].text]
    second = talker.completions.create("Once upon a time there was", **short)
    got += [c.choices[0].text for c in first]
    assert ["".join(got), second.choices[0].text] == solo
    assert talker.stats().max_decode_batch >= 2


@pytest.mark.slow
def test_overlong_prompt_and_bad_requests_are_clear_errors(talker) -> None:
    long = "twinkle " * 600
    with pytest.raises(UserError, match=r"the prompt has \d+ tokens but the context window is 512"):
        talker.chat.completions.create([{"role": "user", "content": long}])
    with pytest.raises(UserError, match="unknown model"):
        talker.chat.completions.create([{"role": "user", "content": "hi"}], model="gpt-4")
    with pytest.raises(UserError, match="last message must come from the user"):
        talker.chat.completions.create([{"role": "assistant", "content": "hi"}])
    with pytest.raises(UserError) as info:
        talker.completions.create("hi", max_tokens=0)
    assert info.value.field == "max_tokens"
    assert talker.completions.create("The lighthouse", max_tokens=4, temperature=0).usage.completion_tokens == 4


@pytest.mark.slow
def test_stop_strings_and_logprobs(talker) -> None:
    reply = talker.completions.create("Twinkle, twinkle, little star,", max_tokens=40, temperature=0, stop=["wonder"])
    assert reply.choices[0].text == "\nHow I " and reply.choices[0].finish_reason == "stop"
    chat = talker.chat.completions.create(
        [{"role": "user", "content": "Thank you!"}], temperature=0, logprobs=True, top_logprobs=2, max_tokens=3
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    assert "".join(c.token for c in content) == chat.choices[0].message.content


@pytest.mark.slow
def test_a_request_that_fails_mid_batch_fails_alone(talker, monkeypatch) -> None:
    """A failure while finishing one request's step (here: injected into its token bookkeeping) ends
    that request with the error; the other requests in the same batch go on to the same answer."""
    from mlcbuild.runtime.llm_engine import LLMEngine

    solo = talker.completions.create("The lighthouse keeper", max_tokens=30, temperature=0, ignore_eos=True).choices[0].text
    real = LLMEngine._accept

    def accept(self, req, token, row):
        if req.prompt == victim_prompt and len(req.generated) >= 3:
            raise RuntimeError("injected failure")
        return real(self, req, token, row)

    victim_prompt = talker.completion_tokens("Once upon a time there was")
    monkeypatch.setattr(LLMEngine, "_accept", accept)
    survivor = talker.completions.create("The lighthouse keeper", stream=True, max_tokens=30, temperature=0, ignore_eos=True)
    got = [next(survivor).choices[0].text]
    with pytest.raises(RuntimeError, match="injected failure"):
        talker.completions.create("Once upon a time there was", max_tokens=30, temperature=0, ignore_eos=True)
    got += [c.choices[0].text for c in survivor]
    assert "".join(got) == solo
    monkeypatch.undo()
    assert talker.completions.create("The lighthouse", max_tokens=4, temperature=0).usage.completion_tokens == 4


@pytest.mark.slow
def test_logit_bias_goes_through_the_library(talker) -> None:
    """OpenAI's logit_bias, applied by the library's apply_logit_bias_inplace (then penalties, softmax)."""
    decode = talker.engine.tokenizer.decode
    forced = talker.completions.create([5, 6, 7], max_tokens=6, temperature=0, logit_bias={"42": 100}, ignore_eos=True)
    assert forced.choices[0].text == decode([42] * 6)
    sampled = talker.completions.create([5, 6, 7], max_tokens=6, temperature=1.0, seed=3, logit_bias={"42": 100}, ignore_eos=True)
    assert sampled.choices[0].text == forced.choices[0].text
    greedy = talker.completions.create([5, 6, 7], max_tokens=1, temperature=0, logprobs=0).choices[0].logprobs.tokens[0]
    first = next(t for t in range(talker.engine.vocab_size) if decode([t], skip_special_tokens=False) == greedy)
    banned = talker.completions.create([5, 6, 7], max_tokens=1, temperature=0, logprobs=0, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != greedy
    for bad in ({"99999": 1}, {"5": 200}, {"x": 1}, [1]):
        with pytest.raises(UserError) as info:
            talker.completions.create("hi", logit_bias=bad)
        assert info.value.field == "logit_bias"


MLC_SNIPPET = """
from mlcbuild.compat import ChatModule, GenerationConfig, StreamToStdout
import sys
cm = ChatModule(model=sys.argv[1], model_lib_path=sys.argv[2])
greedy = GenerationConfig(temperature=0.0)
output = cm.generate(prompt="What is mlcbuild?", generation_config=greedy, progress_callback=StreamToStdout(callback_interval=2))
print("STATS", cm.stats())
again = cm.generate(prompt="What is quantization?", generation_config=greedy)
print("SECOND", again)
cm.reset_chat()
print("RESET", cm.generate(prompt="What is mlcbuild?", generation_config=greedy) == output)
"""


@pytest.mark.slow
def test_mlc_chat_module_snippet_runs_unchanged(demo_artifacts) -> None:
    """MLC's old Python example (ChatModule + StreamToStdout), with only the import line changed."""
    import re
    import subprocess
    import sys

    folder = demo_artifacts.model_dir("q0f32")
    lib = next((folder.parent / "libs").glob(f"{folder.name[:-4]}-llvm*.so"))
    done = subprocess.run([sys.executable, "-c", MLC_SNIPPET, str(folder), str(lib)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    streamed, rest = done.stdout.split("STATS ", 1)
    assert streamed.strip().startswith(MLCBUILD_ANSWER.strip())
    assert re.match(r"prefill: [\d.]+ tok/s, decode: [\d.]+ tok/s", rest)
    assert "SECOND" in rest and "RESET True" in rest


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["answer", "color", "tags"],
    "additionalProperties": False,
}


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q0f32", "q4f16_1"])
def test_json_schema_output_always_validates(demo_artifacts, quant: str) -> None:
    """response_format through xgrammar and the library's apply_bitmask_inplace: greedy and sampled
    replies of a model never trained on JSON parse and validate against the schema."""
    import jsonschema

    from mlcbuild.runtime import open_engine

    fmt = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    with open_engine(demo_artifacts.recipe, quant) as engine:
        for seed in (None, 1, 2, 3):
            kw = {"temperature": 0} if seed is None else {"temperature": 1.5, "seed": seed}
            reply = engine.chat.completions.create([{"role": "user", "content": "What is mlcbuild?"}], max_tokens=80, response_format=fmt, **kw)
            assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
            jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
        free = engine.completions.create("The lighthouse keeper", max_tokens=12, temperature=0)
        assert not free.choices[0].text.lstrip().startswith("{")  # the grammar is per request
        for bad in ({"type": "xml"}, {"type": "json_schema"}, "json", {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}):
            with pytest.raises(UserError) as info:
                engine.chat.completions.create([{"role": "user", "content": "hi"}], response_format=bad)
            assert info.value.field.startswith("response_format")
