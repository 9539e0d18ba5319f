"""Conversation templates MLC-LLM ships for the families we build, by name.

Pure Python and cheap to import: recipe validation checks names against CONV_TEMPLATES.
"""
from __future__ import annotations


from mlcbuild.errors import UserError
from mlcbuild.templates.conversation import SYSTEM, Conversation

_HELPFUL = "You are a helpful, respectful and honest assistant."
_LLAMA3_SYSTEM = f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>"

_ALL = [
    Conversation(
        name="redpajama_chat",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "<human>", "assistant": "<bot>"},
        seps=["\n"],
        role_content_sep=": ",
        role_empty_sep=":",
        stop_str=["<human>"],
        stop_token_ids=[0],
    ),
    Conversation(
        name="dolly",
        system_template=SYSTEM,
        system_message=(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        ),
        roles={"user": "### Instruction", "assistant": "### Response"},
        seps=["\n\n", "### End\n"],
        role_content_sep=":\n",
        role_empty_sep=":\n",
        stop_str=["### End"],
        stop_token_ids=[50256],
    ),
    Conversation(
        name="llama-2",
        system_template=f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n",
        system_message=_HELPFUL,
        roles={"user": "<s>[INST]", "assistant": "[/INST]", "tool": "[INST]"},
        seps=[" ", " </s>"],
        role_content_sep=" ",
        role_empty_sep=" ",
        stop_str=["[INST]"],
        stop_token_ids=[2],
        system_prefix_token_ids=[1],
        add_role_after_system_message=False,
    ),
    Conversation(
        name="llama-3",
        system_template=_LLAMA3_SYSTEM,
        system_message=_HELPFUL,
        roles={"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"},
        seps=["<|eot_id|>"],
        role_content_sep="<|end_header_id|>\n\n",
        role_empty_sep="<|end_header_id|>\n\n",
        stop_str=["<|end_of_text|>", "<|eot_id|>"],
        stop_token_ids=[128001, 128009],
        system_prefix_token_ids=[128000],
        add_role_after_system_message=True,
    ),
    Conversation(
        name="llama-3_1",
        system_template=_LLAMA3_SYSTEM,
        system_message=_HELPFUL,
        roles={
            "user": "<|start_header_id|>user",
            "assistant": "<|start_header_id|>assistant",
            "tool": "<|start_header_id|>ipython",
        },
        seps=["<|eot_id|>"],
        role_content_sep="<|end_header_id|>\n\n",
        role_empty_sep="<|end_header_id|>\n\n",
        stop_str=[],
        stop_token_ids=[128001, 128008, 128009],
        system_prefix_token_ids=[128000],
        add_role_after_system_message=True,
    ),
    Conversation(
        name="codellama_instruct",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "[INST]", "assistant": "[/INST]"},
        seps=[" "],
        role_content_sep=" ",
        role_empty_sep=" ",
        stop_str=["</s>"],
        stop_token_ids=[2],
        system_prefix_token_ids=[1],
    ),
    Conversation(
        name="mistral_default",
        system_template=f"[INST] {SYSTEM}",
        system_message=(
            "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
            "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
        ),
        roles={"user": "[INST]", "assistant": "[/INST]", "tool": "[INST]"},
        seps=[" "],
        role_content_sep=" ",
        role_empty_sep="",
        stop_str=["</s>"],
        stop_token_ids=[2],
        system_prefix_token_ids=[1],
        add_role_after_system_message=False,
    ),
    Conversation(
        name="chatml",
        system_template=f"<|im_start|>system\n{SYSTEM}<|im_end|>\n",
        system_message=(
            "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers."
        ),
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<|im_end|>"],
        stop_token_ids=[2],
    ),
    Conversation(
        name="chatml_nosystem",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<|im_end|>"],
        stop_token_ids=[2],
    ),
    Conversation(
        name="qwen2",
        system_template=f"<|im_start|>system\n{SYSTEM}<|im_end|>\n",
        system_message="You are a helpful assistant.",
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<|endoftext|>", "<|im_end|>"],
        stop_token_ids=[151643, 151645],
    ),
    Conversation(
        name="qwen3",
        system_template=f"<|im_start|>system\n{SYSTEM}<|im_end|>\n",
        system_message="You are a helpful assistant.",
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<|endoftext|>", "<|im_end|>"],
        stop_token_ids=[151643, 151645],
        strip_reasoning_in_history=True,
    ),
    Conversation(
        name="gemma_instruction",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"},
        seps=["<end_of_turn>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<end_of_turn>"],
        stop_token_ids=[1, 107],
        system_prefix_token_ids=[2],
    ),
    Conversation(
        name="gemma3_instruction",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"},
        seps=["<end_of_turn>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["<end_of_turn>"],
        stop_token_ids=[1, 106],
        system_prefix_token_ids=[2],
    ),
    Conversation(
        name="phi-3",
        system_template=f"<|system|>\n{SYSTEM}",
        system_message="You are a helpful digital assistant. Please provide safe, ethical and accurate information to the user.",
        roles={"user": "<|user|>", "assistant": "<|assistant|>"},
        seps=["<|end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
        system_prefix_token_ids=[1],
        stop_str=["<|endoftext|>"],
        stop_token_ids=[2, 32000, 32001, 32007],
    ),
    Conversation(
        name="tinyllama_v1_0",
        system_template=f"<|system|>\n{SYSTEM}</s>",
        system_message="You are a helpful chatbot.",
        roles={"user": "<|user|>", "assistant": "<|assistant|>"},
        seps=["</s>"],
        role_content_sep="\n",
        role_empty_sep="\n",
        stop_str=["</s>"],
        stop_token_ids=[2],
    ),
    Conversation(
        name="vicuna_v1.1",
        system_template=SYSTEM,
        system_message=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        roles={"user": "USER", "assistant": "ASSISTANT"},
        seps=[" ", "</s>"],
        role_content_sep=": ",
        role_empty_sep=":",
        stop_str=["</s>"],
        stop_token_ids=[2],
        system_prefix_token_ids=[1],
    ),
    Conversation(
        name="LM",
        system_template=SYSTEM,
        system_message="",
        roles={"user": "", "assistant": ""},
        seps=[""],
        stop_str=[],
        stop_token_ids=[2],
        system_prefix_token_ids=[1],
    ),
]

CONV_TEMPLATES: dict[str, Conversation] = {c.name: c for c in _ALL if c.name}

AUTO = "auto"
"""`conv_template: auto` (the default): fit a template to the checkpoint's own chat template at
gen-config time (`mlcbuild.templates.auto`)."""


def template_names() -> list[str]:
    return sorted(CONV_TEMPLATES)


def get_template(name: str) -> Conversation:
    """A fresh copy of a registered template (callers may edit it), or a UserError naming the choices."""
    if name in CONV_TEMPLATES:
        return CONV_TEMPLATES[name].copy()
    if name == AUTO:
        raise UserError("'auto' is fitted to a checkpoint at gen-config time; it names no template", field="conv_template")
    from mlcbuild.suggest import unknown

    raise UserError(unknown("conversation template", name, [*CONV_TEMPLATES, AUTO]), field="conv_template")


def describe(conv: Conversation) -> str:
    """One line: a system message, one user turn and the generation prompt, as the template renders
    them (S, U: the messages; newlines shown as \\n)."""
    probe = conv.copy(messages=[("user", "U"), ("assistant", None)])
    if SYSTEM in conv.system_template:
        probe.system_message = "S"
    bos = "<bos ids>" if conv.system_prefix_token_ids else ""
    return (bos + probe.as_prompt()).replace("\n", "\\n")


__all__ = ["AUTO", "CONV_TEMPLATES", "Conversation", "describe", "get_template", "template_names"]
