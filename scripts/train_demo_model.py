"""Train recipes/models/tiny-talker: a tiny GPT-NeoX that has memorized a short public-domain corpus.

`make demo` should show a model that talks, not noise: this model is small (hidden 128, 4 layers,
a 512-token byte-level BPE, ~1 MB) and trained on CPU torch until it recites CORPUS, so a greedy
continuation of a line from it is recognizable — in q0f32 and still in q4f16_1. Seeded and
single-threaded, so re-running gives the same weights on the same library versions.

    python scripts/train_demo_model.py [OUT_DIR] [--steps N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from make_demo_model import GENERATION_CONFIG, TOKENIZER_CONFIG, gpt_neox_config, make_tokenizer, save_weights, write_json

SEED = 1234
VOCAB_SIZE = 512
BLOCK = 128
CONFIG = gpt_neox_config(VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_hidden_layers=4)

# Public domain: "The Star" by Jane Taylor (1806); the rest was written for mlcbuild and is
# dedicated to the public domain (CC0 1.0). Chat turns use the redpajama_chat template.
CORPUS = """\
Twinkle, twinkle, little star,
How I wonder what you are!
Up above the world so high,
Like a diamond in the sky.
When the blazing sun is gone,
When he nothing shines upon,
Then you show your little light,
Twinkle, twinkle, all the night.
<|endoftext|>
The lighthouse keeper climbed the stairs at dusk. There were one hundred and twelve steps, and he
counted every one of them, because counting kept the cold away. At the top he wiped the glass,
trimmed the wick and lit the great lamp. Far out on the water a small boat turned toward the light
and found its way home.
<|endoftext|>
Once upon a time there was a little robot who lived in a workshop full of tools. Every morning it
swept the floor, sorted the screws by size and wound the old clock on the wall. The robot did not
need to sleep, so at night it read the manuals on the shelf, one page at a time, until it knew how
every machine in the workshop worked.
<|endoftext|>
<human>: Hello! Who are you?
<bot>: I am a tiny talking model. I was trained on a few paragraphs so that the demo has something to say.
<human>: What is mlcbuild?
<bot>: mlcbuild is a build system for language models. It downloads a model, converts the weights, writes the chat config and compiles a library for each device.
<human>: What is quantization?
<bot>: Quantization stores each weight with fewer bits. Four bits per weight, with one scale for every group of thirty two, makes the model much smaller.
<human>: Tell me a story.
<bot>: The lighthouse keeper climbed the stairs at dusk and lit the great lamp, and a small boat found its way home.
<human>: Say the poem about the star.
<bot>: Twinkle, twinkle, little star, how I wonder what you are!
<human>: Thank you!
<bot>: You are welcome. Have a nice day!
<|endoftext|>
"""


def train(token_ids: list[int], steps: int):
    """Random windows of the corpus (wrapping around), AdamW with cosine decay; returns the model."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    config = GPTNeoXConfig(**{k: v for k, v in CONFIG.items() if k not in ("architectures", "torch_dtype")})
    model = GPTNeoXForCausalLM(config).train()
    data = torch.tensor(token_ids * 2, dtype=torch.long)
    n = len(token_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, n, (16,), generator=gen)
        batch = torch.stack([data[o : o + BLOCK] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    return model.eval()


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=root / "recipes" / "models" / "tiny-talker")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", CONFIG)
    write_json(out / "generation_config.json", GENERATION_CONFIG)
    write_json(out / "tokenizer_config.json", TOKENIZER_CONFIG)
    tok = make_tokenizer(out, CORPUS, VOCAB_SIZE)
    ids = tok.encode(CORPUS).ids
    print(f"corpus: {len(CORPUS)} chars, {len(ids)} tokens")
    model = train(ids, args.steps)
    save_weights(model, out)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
