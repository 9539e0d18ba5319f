"""`conv_template: auto`: fit an MLC template to the checkpoint's chat template, token for token.

The chat templates below reproduce what the published ones do (Qwen2.5, Qwen3, Gemma 2, Gemma 3,
Llama 3, Llama 3.1, Phi-3, TinyLlama; tool branches left out); the tokenizers are byte-level with
the families' special tokens at their real ids, so stop ids compare with MLC's registered ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlcbuild.errors import UserError
from mlcbuild.templates import AUTO, CONV_TEMPLATES, Conversation
from mlcbuild.templates.auto import compile_chat_template, fit_folder

ROOT = Path(__file__).resolve().parent.parent

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

TINYLLAMA = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

NUMBERED = (  # numbers each turn: no MLC template can say that
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' + loop.index|string + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QWEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
GEMMA_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
LLAMA_IDS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
             "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009}
PHI_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 32000, "<|assistant|>": 32001,
           "<|system|>": 32006, "<|end|>": 32007, "<|user|>": 32010}

# family: (template, special token ids, bos, eos, generation_config eos_token_id, expected name, system exact)
FAMILIES = {
    "qwen2.5": (QWEN25, QWEN_IDS, None, "<|im_end|>", [151645, 151643], "qwen2", True),
    "qwen3": (QWEN3, QWEN_IDS, None, "<|im_end|>", [151645, 151643], "qwen3", False),
    "gemma2": (GEMMA2, {**GEMMA_IDS, "<start_of_turn>": 106, "<end_of_turn>": 107}, "<bos>", "<eos>", [1, 107],
               "gemma_instruction", False),
    "gemma3": (GEMMA3, {**GEMMA_IDS, "<start_of_turn>": 105, "<end_of_turn>": 106}, "<bos>", "<eos>", [1, 106],
               "gemma3_instruction", False),
    "llama3": (LLAMA3, LLAMA_IDS, "<|begin_of_text|>", "<|eot_id|>", [128001, 128009], "llama-3", False),
    "llama3.1": (LLAMA31, LLAMA_IDS, "<|begin_of_text|>", "<|eot_id|>", [128001, 128008, 128009], "llama-3_1", True),
    "phi3": (PHI3, PHI_IDS, "<s>", "<|endoftext|>", [32000, 32001, 32007], "phi-3", False),
    "tinyllama": (TINYLLAMA, {"<unk>": 0, "<s>": 1, "</s>": 2}, "<s>", "</s>", 2, "tinyllama_v1_0", False),
}

# MLC's own stop ids for the families (conversation_template/*.py), reproduced by the fit
MLC_STOP_IDS = {"qwen2": [151643, 151645], "qwen3": [151643, 151645], "gemma_instruction": [1, 107],
                "gemma3_instruction": [1, 106], "llama-3": [128001, 128009], "llama-3_1": [128001, 128008, 128009]}


def make_tokenizer(special_ids: dict[str, int]):
    """Byte-level BPE without merges (every text tokenizes), special tokens at the given ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {c: 300 + i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update(special_ids)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_ids])
    return tok


def write_checkpoint(folder: Path, family: str, template: str | None = None, as_list: bool = False,
                     jinja_file: bool = False) -> Path:
    """A model folder: tiny llama config.json, tokenizer.json, tokenizer_config.json (+ chat template)."""
    tmpl, ids, bos, eos, gen_eos, _, _ = FAMILIES[family]
    tmpl = template if template is not None else tmpl
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(ids).save(str(folder / "tokenizer.json"))
    tc = {"bos_token": bos, "eos_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"}
    if jinja_file:
        (folder / "chat_template.jinja").write_text(tmpl)
    elif as_list:
        tc["chat_template"] = [{"name": "tool_use", "template": "{{ raise_exception('tools') }}"},
                               {"name": "default", "template": tmpl}]
    else:
        tc["chat_template"] = tmpl
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}))
    vocab = max(556, *(i + 1 for i in ids.values()))  # the byte alphabet sits at 300..555
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def runtime_tokens(conv: Conversation, tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids mlcbuild's runtime builds (LLMEngine.chat_tokens itself, on a stub engine)."""
    from mlcbuild.runtime.llm_engine import LLMEngine

    llm = object.__new__(LLMEngine)
    llm._template = Conversation.from_json(json.loads(json.dumps(conv.to_json())))  # as read from mlc-chat-config.json
    llm.engine = SimpleNamespace(tokenizer=tokenizer, sliding_window_size=-1)
    llm.context_window_size = 4096
    return llm.chat_tokens(messages)


def hf_tokens(template: str, tokenizer, messages: list[dict], bos: str | None, eos: str | None) -> list[int]:
    """What transformers' apply_chat_template(tokenize=True, add_generation_prompt=True) gives."""
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v}
    text = compile_chat_template(template)(messages, add_generation_prompt=True, **special)
    return tokenizer.encode(text, add_special_tokens=False).ids


def conversations(system: bool) -> list[list[dict]]:
    """Conversations other than the fitting probes: other words, more turns, reasoning in history."""
    turns = [("user", "Where is Paris"), ("assistant", "Paris is in France"), ("user", "And Rome"),
             ("assistant", "<think>\nItaly, surely\n</think>\n\nRome is in Italy"), ("user", "Good, and Oslo?")]
    out = []
    for n in (1, 3, 5):
        msgs = [{"role": r, "content": c} for r, c in turns[:n]]
        out.append(([{"role": "system", "content": "You speak like a pirate"}] if system else []) + msgs)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_fits_each_family_token_for_token(tmp_path, family):
    template, ids, bos, eos, gen_eos, expected, system_exact = FAMILIES[family]
    folder = write_checkpoint(tmp_path / family, family)
    eos_ids = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    fit = fit_folder(folder, folder / "tokenizer.json", eos_ids)
    conv = fit.conversation
    assert fit.base == expected and conv.name == expected, fit.summary()
    tokenizer = make_tokenizer(ids)
    for messages in conversations(system=False):
        assert runtime_tokens(conv, tokenizer, messages) == hf_tokens(template, tokenizer, messages, bos, eos), messages
    for messages in conversations(system=True):
        try:
            want = hf_tokens(template, tokenizer, messages, bos, eos)
        except Exception:
            assert family == "gemma2"
            continue
        same = runtime_tokens(conv, tokenizer, messages) == want
        assert same == system_exact, (family, fit.notes)
    assert fit.exact == system_exact, fit.notes
    if not system_exact:
        assert fit.notes and all("\n" not in n for n in fit.notes)
    if expected in MLC_STOP_IDS:
        assert conv.stop_token_ids == MLC_STOP_IDS[expected]
    # the fitted template keeps the registered one's roles and separators
    base = CONV_TEMPLATES[expected]
    assert conv.roles["user"] == base.roles["user"] and conv.roles["assistant"] == base.roles["assistant"]
    assert conv.role_content_sep == base.role_content_sep


def test_family_specifics(tmp_path):
    def fit(family: str) -> Conversation:
        folder = write_checkpoint(tmp_path / family, family)
        eos = FAMILIES[family][4]
        return fit_folder(folder, folder / "tokenizer.json", eos if isinstance(eos, list) else [eos]).conversation

    qwen25 = fit("qwen2.5")
    assert qwen25.system_message == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert qwen25.system_template == "<|im_start|>system\n{system_message}<|im_end|>\n"
    assert not qwen25.strip_reasoning_in_history
    qwen3 = fit("qwen3")
    assert qwen3.strip_reasoning_in_history is True and qwen3.to_json()["strip_reasoning_in_history"] is True
    assert qwen3.system_template == "{system_message}" and qwen3.system_message == ""
    gemma3 = fit("gemma3")
    assert gemma3.system_prefix_token_ids == [2]
    llama31 = fit("llama3.1")
    assert "Today Date: 26 Jul 2024" in llama31.system_template and llama31.system_message == ""
    assert llama31.system_prefix_token_ids == [128000]
    tiny = fit("tinyllama")
    assert tiny.seps == ["</s>\n"] and tiny.system_prefix_token_ids is None  # the published template adds no BOS


def test_notes_say_what_differs(tmp_path):
    folder = write_checkpoint(tmp_path / "g2", "gemma2")
    fit = fit_folder(folder, folder / "tokenizer.json", [1, 107])
    assert fit.notes == ["the checkpoint's template refuses a system message (System role not supported); "
                         "here one is put before the first turn as it is"]
    folder = write_checkpoint(tmp_path / "g3", "gemma3")
    note = fit_folder(folder, folder / "tokenizer.json", [1, 106]).notes[0]
    assert note.startswith("with a system message it differs (probe 'system, one turn', token 1)")
    assert "'<start_of_turn>user\\nAnswer briefly" in note


def test_template_sources(tmp_path):
    """chat_template.jinja wins (as in transformers); a list of named templates gives 'default'."""
    listed = write_checkpoint(tmp_path / "listed", "qwen3", as_list=True)
    assert fit_folder(listed, listed / "tokenizer.json", [151645]).base == "qwen3"
    jinja = write_checkpoint(tmp_path / "jinja", "qwen2.5", jinja_file=True)
    cfg = json.loads((jinja / "tokenizer_config.json").read_text())
    cfg["chat_template"] = NUMBERED  # the file takes priority over this
    (jinja / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert fit_folder(jinja, jinja / "tokenizer.json", [151645]).base == "qwen2"


def test_no_fit_is_one_line_naming_the_closest(tmp_path):
    folder = write_checkpoint(tmp_path / "numbered", "qwen2.5", template=NUMBERED)
    with pytest.raises(UserError) as e:
        fit_folder(folder, folder / "tokenizer.json", [151645])
    message = str(e.value)
    assert e.value.field == "conv_template" and "\n" not in message
    assert "fits no MLC conversation template; closest is 'chatml_nosystem': probe 'one turn' differs at character 16" in message
    assert "'<|im_start|>user 1\\n" not in message and "' 1\\nWhat is two" in message


def test_no_template_is_an_error(tmp_path):
    folder = write_checkpoint(tmp_path / "plain", "qwen2.5")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="the checkpoint has no chat template") as e:
        fit_folder(folder, folder / "tokenizer.json", [])
    assert e.value.field == "conv_template"


def test_registered_templates_match_mlc():
    """The new registry entries carry MLC's fields (python/mlc_llm/conversation_template/)."""
    q3 = CONV_TEMPLATES["qwen3"].to_json()
    assert q3["strip_reasoning_in_history"] is True and q3["stop_token_ids"] == [151643, 151645]
    assert "strip_reasoning_in_history" not in CONV_TEMPLATES["qwen2"].to_json()  # MLC's False, left out
    assert CONV_TEMPLATES["phi-3"].stop_token_ids == [2, 32000, 32001, 32007]
    assert CONV_TEMPLATES["gemma3_instruction"].system_prefix_token_ids == [2]
    conv = CONV_TEMPLATES["qwen3"].copy(messages=[("user", "a"), ("assistant", "<think>x</think>\n\nb"),
                                                  ("user", "c"), ("assistant", None)])
    assert "<think>" not in conv.as_prompt() and "<|im_start|>assistant\nb<|im_end|>" in conv.as_prompt()


# --- gen-config and the recipe -------------------------------------------------------------------


def _gen(source: Path, out: Path, conv_template: str | None) -> dict:
    from mlcbuild.steps.base import RunContext
    from mlcbuild.steps.gen_config import GenConfigStep

    out.mkdir(parents=True, exist_ok=True)
    params = {"quantization": "q0f32", "overrides": {}, "model_type": None}
    if conv_template is not None:
        params["conv_template"] = conv_template
    messages: list[str] = []
    GenConfigStep().run(RunContext(params=params, inputs={"source": source}, out=out,
                                   progress=lambda f, m: messages.append(m)))
    config = json.loads((out / "mlc-chat-config.json").read_text())
    config["_progress"] = messages
    return config


def test_gen_config_auto(tmp_path):
    folder = write_checkpoint(tmp_path / "src", "gemma3")
    config = _gen(folder, tmp_path / "out", AUTO)
    conv = config["conv_template"]
    assert conv["name"] == "gemma3_instruction" and conv["stop_token_ids"] == [1, 106]
    assert any("conv_template auto: 'gemma3_instruction'" in m for m in config["_progress"])
    # no conv_template at all means auto
    assert _gen(folder, tmp_path / "out2", None)["conv_template"] == conv
    # a named template is used as it is
    assert _gen(folder, tmp_path / "out3", "chatml")["conv_template"]["name"] == "chatml"


def test_gen_config_auto_no_fit(tmp_path):
    folder = write_checkpoint(tmp_path / "src", "qwen2.5", template=NUMBERED)
    with pytest.raises(UserError, match="closest is 'chatml_nosystem'") as e:
        _gen(folder, tmp_path / "out", AUTO)
    assert e.value.field == "conv_template"


def test_recipe_defaults_to_auto(tmp_path):
    from mlcbuild.recipe.load import load_recipe

    write_checkpoint(tmp_path / "model", "qwen3")
    path = tmp_path / "r.yaml"
    path.write_text("source:\n  path: model\nquantizations: [q0f32]\ntargets: [llvm]\n")
    assert load_recipe(path).conv_template == "auto"
    path.write_text("source:\n  path: model\nquantizations: [q0f32]\ntargets: [llvm]\nconv_template: auto\n")
    assert load_recipe(path).conv_template == "auto"
    path.write_text("source:\n  path: model\nquantizations: [q0f32]\ntargets: [llvm]\nconv_template: qwen4\n")
    with pytest.raises(UserError, match="unknown conv_template 'qwen4'"):
        load_recipe(path)


def test_templates_command_lists_them():
    out = subprocess.run([sys.executable, "-m", "mlcbuild", "templates"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    names = [line.split("\t")[0] for line in lines]
    assert names == ["auto", *sorted(CONV_TEMPLATES)]
    qwen3 = next(line for line in lines if line.startswith("qwen3\t"))
    assert "<|im_start|>user\\nU<|im_end|>\\n<|im_start|>assistant\\n" in qwen3 and "strips <think>" in qwen3


def test_recipe_build_end_to_end(tmp_path):
    """A recipe without conv_template: `build --only weights` (convert + gen-config) fits the
    checkpoint's chat_template.jinja; one that fits nothing fails gen-config with one line."""
    import shutil

    def build(template: str) -> tuple[subprocess.CompletedProcess, Path]:
        work = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(ROOT / "recipes" / "models" / "tiny-redpajama", work / "model")
        (work / "model" / "chat_template.jinja").write_text(template)
        (work / "r.yaml").write_text("source:\n  path: model\nquantizations: [q0f32]\ntargets: [llvm]\n")
        cmd = [sys.executable, "-m", "mlcbuild", "--cache-dir", str(work / "cache"), "build", "r.yaml", "--only", "weights"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=work), work

    done, work = build(QWEN25)
    assert done.returncode == 0, done.stderr
    conv = json.loads((work / "dist" / "model-q0f32-MLC" / "mlc-chat-config.json").read_text())["conv_template"]
    # the demo tokenizer has no <|im_end|> token and eos id 0: ChatML's fields, MLC's generic chatml name
    assert conv["name"] == "chatml" and conv["stop_token_ids"] == [0]
    assert conv["system_message"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    failed, _ = build(NUMBERED)
    assert failed.returncode == 1
    lines = [ln for ln in failed.stderr.splitlines() if "conv_template" in ln]
    assert lines and lines[-1].startswith("error: gen-config model q0f32: conv_template: auto: ")
    assert "closest is 'chatml_nosystem'" in lines[-1]
