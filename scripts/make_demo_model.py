"""Make recipes/models/tiny-redpajama: a tiny random GPT-NeoX with a real (tiny) byte-level BPE tokenizer.

`make demo` must work without network, so the demo model is bundled. This script is how it was
made; it is reproducible (fixed seed, single-threaded tokenizer training, sorted JSON) so that
re-running it yields the same bytes on the same library versions.

    python scripts/make_demo_model.py [OUT_DIR]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SEED = 0
VOCAB_SIZE = 384
SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>"]

def gpt_neox_config(vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int) -> dict:
    """A tiny GPT-NeoX config.json (RedPajama's layout: parallel residual, rotary on a quarter)."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 4,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }


CONFIG = gpt_neox_config(VOCAB_SIZE, hidden_size=64, intermediate_size=256, num_hidden_layers=2)

GENERATION_CONFIG = {"bos_token_id": 0, "eos_token_id": 0, "do_sample": True, "temperature": 0.7, "top_p": 0.95}

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|padding|>",
    "add_bos_token": False,
    "add_eos_token": False,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 512,
}

SPECIAL_TOKENS_MAP = {
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|padding|>",
}

CORPUS = """\
<human>: Hello! Who are you?
<bot>: I am a tiny demo model. I was made to test a build system, so my answers are random.
<human>: What does a build system do?
<bot>: It turns a recipe into artifacts. It runs only the steps whose inputs changed, and it keeps
every result in a cache keyed by the content of its inputs.
<human>: What is quantization?
<bot>: Quantization stores the weights of a model with fewer bits, for example four bits per weight
in groups of thirty two, with one scale for each group. The model gets smaller and faster.
<human>: Can you write a poem about the sea?
<bot>: The sea is wide, the sea is deep, the waves go on while sailors sleep.
The wind is cold, the night is long, the stars above still sing their song.
<human>: Thank you, that was lovely.
<bot>: You are welcome. Is there anything else you would like to know?
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024. Punctuation: (a, b); [c]; {d}! "e"? 'f'...
def add(a, b):
    return a + b
"""


def make_tokenizer(out: Path, corpus: str = CORPUS, vocab_size: int = VOCAB_SIZE):
    """A GPT-NeoX style byte-level BPE trained on `corpus`: ByteLevel pre-tokenizer and decoder, NFC
    normalizer; single-threaded, so the same corpus gives the same tokenizer.json."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    data = json.loads(tok.to_str())
    (out / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def make_weights(out: Path) -> None:
    """Random weights from transformers' own initializer, saved as sorted safetensors.

    The head is stored as `embed_out.weight`, the name real RedPajama/Pythia checkpoints use
    (transformers 5 calls it lm_head in memory and maps the old name on load).
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(SEED)
    config = GPTNeoXConfig(**{k: v for k, v in CONFIG.items() if k not in ("architectures", "torch_dtype")})
    save_weights(GPTNeoXForCausalLM(config).eval(), out)


def save_weights(model, out: Path) -> None:
    """Sorted safetensors; the head named `embed_out.weight` as in real Pythia/RedPajama checkpoints."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        name: t.detach().to(torch.float32).contiguous().clone()
        for name, t in sorted(model.state_dict().items())
        if not name.endswith((".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq"))
    }
    tensors["embed_out.weight"] = tensors.pop("lm_head.weight")
    save_file(dict(sorted(tensors.items())), str(out / "model.safetensors"), metadata={"format": "pt"})


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", CONFIG)
    write_json(out / "generation_config.json", GENERATION_CONFIG)
    write_json(out / "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(out / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    make_tokenizer(out)
    make_weights(out)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "recipes" / "models" / "tiny-redpajama")
