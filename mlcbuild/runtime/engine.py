"""A small single-sequence engine over a compiled model library: prefill, decode, sampling.

It drives the library the way MLC's runtime does — `embed` → `prefill` (in chunks of
prefill_chunk_size) → `decode` per token, with the paged KV cache created by the library and
advanced through the `vm.builtin.kv_state_*` functions — so a library that works here works there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from mlcbuild.artifact import ChatConfig, Sampling
from mlcbuild.errors import UserError
from mlcbuild.runtime.loader import (
    WeightsMismatchError,
    check_weights,
    load_params,
    open_model_folder,
    read_library_metadata,
)
from mlcbuild.runtime.library_sampler import LibrarySampler, Row
from mlcbuild.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from mlcbuild.templates.conversation import Conversation

PAGE_SIZE = 16


def _device(spec: str | Any) -> Any:
    import tvm

    if not isinstance(spec, str):
        return spec
    name, _, index = spec.partition(":")
    if name not in ("cpu", "llvm", "cuda", "metal", "vulkan", "opencl", "rocm", "webgpu"):
        raise UserError(f"unknown device {spec!r} (cpu, cuda[:N], metal, vulkan, opencl, rocm)")
    dev = tvm.device("cpu" if name == "llvm" else name, int(index or 0))
    if not dev.exist:
        raise UserError(f"device {spec} is not available on this machine")
    return dev


@dataclass
class Engine:
    """A loaded (library, weights, config, tokenizer); one sequence at a time."""

    vm: Any
    device: Any
    metadata: dict[str, Any]
    params: list[Any]
    chat_config: ChatConfig | None = None
    """The model folder's mlc-chat-config.json (None: a bare library, e.g. a benchmark's)."""
    tokenizer: Any = None
    adds_bos: bool = False
    """Whether a raw prompt starts with bos_token_id (`loader.adds_bos`: the tokenizer's, else the family's)."""
    _kv: Any = field(default=None, repr=False)
    _seq_len: int = 0
    _funcs: dict[str, Any] = field(default_factory=dict, repr=False)
    _sampler: LibrarySampler | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        lib_path: str | Path,
        device: str | Any = "cpu",
        weights_dir: str | Path | None = None,
    ) -> "Engine":
        """Load and check: the library's `_metadata` is compared with the weights before any run. Needs
        TVM's runtime only (`tvm.runtime.vm`, not relax's compiler), as MLC's runtimes do."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        model_dir = Path(model_dir)
        lib_path = Path(lib_path)
        weights = Path(weights_dir) if weights_dir else model_dir
        if not lib_path.exists():
            raise UserError(f"{lib_path}: model library not found")
        folder = open_model_folder(model_dir, weights)
        dev = _device(device)
        vm = VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)
        metadata = read_library_metadata(vm)
        check_weights(metadata, folder.index, folder.config, lib_name=lib_path.name)
        params = load_params(metadata, folder.index, dev)
        return cls(vm=vm, device=dev, metadata=metadata, params=params, chat_config=folder.config,
                   tokenizer=folder.tokenizer, adds_bos=folder.adds_bos)

    # --- sizes -------------------------------------------------------------------------------

    @property
    def context_window_size(self) -> int:
        lib = int(self.metadata.get("context_window_size", -1))
        cfg = self.chat_config.sizes.context_window_size if self.chat_config else lib
        return min(lib, cfg) if lib > 0 and cfg > 0 else lib

    @property
    def sliding_window_size(self) -> int:
        return int(self.metadata.get("sliding_window_size", -1))

    @property
    def prefill_chunk_size(self) -> int:
        return int(self.metadata.get("prefill_chunk_size", 0)) or 1

    @property
    def max_batch_size(self) -> int:
        """The batch bound the library's memory was planned for (never exceed it)."""
        return max(1, int(self.metadata.get("max_batch_size", 1) or 1))

    # --- KV cache ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table: the ids the library accepts."""
        return int(self.metadata.get("vocab_size") or (self.chat_config.vocab_size if self.chat_config else 0))

    def lookup(self, name: str) -> Any:
        """A library function by name, or None; TIR kernels (apply_*_inplace) are found in the
        library's imports, as MLC's runtimes find them (`GetFunction(name, query_imports=true)`)."""
        if name not in self._funcs:
            try:
                self._funcs[name] = self.vm.module.get_function(name, query_imports=True)
            except (AttributeError, KeyError, RuntimeError, ValueError):
                self._funcs[name] = None
        return self._funcs[name]

    def _func(self, *names: str) -> Any:
        for name in names:
            func = self.lookup(name)
            if func is not None:
                return func
        raise UserError(f"the model library exports none of {', '.join(names)}")

    @property
    def sampler(self) -> LibrarySampler:
        if self._sampler is None:
            self._sampler = LibrarySampler(self.lookup, self.device)
        return self._sampler

    def check_token_ids(self, tokens: Sequence[int], field: str = "prompt") -> None:
        """One line for an id the model has no embedding for (it would read outside the table)."""
        vocab = self.vocab_size
        for i, t in enumerate(tokens):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < (vocab or 1 << 31):
                raise UserError(f"token id {t!r} at position {i} is not in the model's vocabulary [0, {vocab})", field=field)

    def create_kv_cache(self, max_batch_size: int, max_total_seq_len: int) -> Any:
        """A fresh paged KV cache from the library's own constructor (MLC's argument order)."""
        from tvm_ffi import Shape

        sliding = self.sliding_window_size > 0
        create = self._func("create_paged_kv_cache", "create_tir_paged_kv_cache", "create_flashinfer_paged_kv_cache")
        return create(
            Shape([max_batch_size]),
            Shape([max_total_seq_len]),
            Shape([self.prefill_chunk_size]),
            Shape([PAGE_SIZE]),
            Shape([int(sliding)]),
        )

    def add_sequence(self, kv: Any, seq_id: int) -> None:
        import tvm

        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(kv, seq_id)
        if self.sliding_window_size > 0:
            tvm.get_global_func("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")(
                kv, seq_id, self.sliding_window_size, int(self.metadata.get("attention_sink_size", 0))
            )

    def remove_sequence(self, kv: Any, seq_id: int) -> None:
        import tvm

        tvm.get_global_func("vm.builtin.kv_state_remove_sequence")(kv, seq_id)

    def popn(self, kv: Any, seq_id: int, n: int) -> None:
        """Drop the last `n` tokens of a sequence (prefix reuse keeps the common head)."""
        import tvm

        if n > 0:
            tvm.get_global_func("vm.builtin.kv_state_popn")(kv, seq_id, n)

    def reset(self) -> None:
        """Drop the current sequence: a fresh paged KV cache holding one empty sequence."""
        total = self.context_window_size if self.context_window_size > 0 else self.sliding_window_size
        self._kv = self.create_kv_cache(1, total)
        self.add_sequence(self._kv, 0)
        self._seq_len = 0

    def embed(self, tokens: Sequence[int]) -> Any:
        import numpy as np
        import tvm

        ids = tvm.runtime.tensor(np.asarray(tokens, dtype="int32"), self.device)
        return self._func("embed")(ids, self.params)

    def batch_prefill(self, kv: Any, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> Any:
        """Append each sequence's chunk in one call (total ≤ prefill_chunk_size); logits [n, vocab] after each."""
        import numpy as np
        import tvm
        from tvm_ffi import Shape

        lengths = [len(c) for c in chunks]
        flat = [int(t) for c in chunks for t in c]
        embed = self.embed(flat)
        embed = embed._create_view((1, len(flat), int(embed.shape[-1])))
        positions = tvm.runtime.tensor(np.cumsum(lengths).astype("int32") - 1, self.device)
        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(kv, Shape(list(seq_ids)), Shape(lengths))
        out = self.vm["batch_prefill"](embed, positions, kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(kv)
        return self._rows(out)

    def batch_decode(self, kv: Any, seq_ids: Sequence[int], tokens: Sequence[int]) -> Any:
        """Append one token to each sequence in one call; logits [n, vocab]."""
        import tvm
        from tvm_ffi import Shape

        embed = self.embed(tokens)
        embed = embed._create_view((len(tokens), 1, int(embed.shape[-1])))
        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(kv, Shape(list(seq_ids)), Shape([1] * len(tokens)))
        out = self.vm["batch_decode"](embed, kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(kv)
        return self._rows(out)

    def _rows(self, out: Any) -> Any:
        import numpy as np

        arr = (out[0] if not hasattr(out, "shape") else out).numpy()
        return np.asarray(arr.reshape(-1, arr.shape[-1]), dtype="float32")

    def _forward(self, fn_name: str, tokens: Sequence[int]) -> Any:
        import tvm
        from tvm_ffi import Shape

        embed = self.embed(tokens)
        embed = embed._create_view((1, len(tokens), int(embed.shape[-1])))
        tvm.get_global_func("vm.builtin.kv_state_begin_forward")(self._kv, Shape([0]), Shape([len(tokens)]))
        out = self.vm[fn_name](embed, self._kv, self.params)
        tvm.get_global_func("vm.builtin.kv_state_end_forward")(self._kv)
        self._seq_len += len(tokens)
        return out[0] if not hasattr(out, "shape") else out

    def _check_room(self, n: int) -> None:
        window = self.context_window_size
        if window > 0 and self._seq_len + n > window:
            raise UserError(f"sequence of {self._seq_len + n} tokens exceeds context_window_size {window}")

    def prefill(self, tokens: Sequence[int]) -> Any:
        """Append `tokens` (chunked); returns the logits (float32 numpy [vocab]) after the last one."""
        if not tokens:
            raise UserError("prefill needs at least one token")
        self.check_token_ids(tokens)
        if self._kv is None:
            self.reset()
        self._check_room(len(tokens))
        chunk = self.prefill_chunk_size
        logits = None
        for start in range(0, len(tokens), chunk):
            logits = self._forward("prefill", tokens[start : start + chunk])
        return self._last_row(logits)

    def decode(self, token: int) -> Any:
        """Append one token; returns the next-token logits (float32 numpy [vocab])."""
        if self._kv is None:
            raise UserError("decode before prefill")
        self.check_token_ids([token])
        self._check_room(1)
        return self._last_row(self._forward("decode", [int(token)]))

    def _last_row(self, logits: Any) -> Any:
        import numpy as np

        arr = logits.numpy()
        return np.asarray(arr.reshape(-1, arr.shape[-1])[-1], dtype="float32")

    def logits_for(self, prompt: Sequence[int], continuation: Sequence[int] = ()) -> Any:
        """Logits after the prompt (prefill), then after each continuation token (decode): [1+n, vocab]."""
        import numpy as np

        self.reset()
        rows = [self.prefill(list(prompt))]
        for token in continuation:
            rows.append(self.decode(int(token)))
        return np.stack(rows)

    # --- generation --------------------------------------------------------------------------

    @property
    def sampling(self) -> Sampling:
        """The model's sampling defaults (mlc-chat-config.json's, else MLC's)."""
        return self.chat_config.sampling if self.chat_config else Sampling()

    def sampling_defaults(self) -> SamplingParams:
        return SamplingParams.from_config(self.sampling)

    def conversation(self) -> "Conversation":
        """A fresh copy of the model's conversation template (a name is looked up; none: raw text)."""
        from mlcbuild.templates import get_template
        from mlcbuild.templates.conversation import Conversation

        spec = self.chat_config.conv_template if self.chat_config else None
        if isinstance(spec, str):
            return get_template(spec).copy()
        return Conversation.from_json(spec or {"name": "LM"})

    def _probs(self, logits: Any, temperature: float) -> Any:
        """Softmax with temperature through the library's own `softmax_with_temperature`."""
        return self.probs(logits.reshape(1, -1), [temperature])[0]

    def probs(self, logits: Any, temperatures: Sequence[float]) -> Any:
        """Batched softmax with per-row temperature ([n, vocab] → [n, vocab]) on the library."""
        import numpy as np
        import tvm

        n = logits.shape[0]
        arr = tvm.runtime.tensor(np.ascontiguousarray(logits.reshape(n, 1, -1), dtype="float32"), self.device)
        temp = tvm.runtime.tensor(np.asarray(temperatures, dtype="float32"), self.device)
        return self.vm["softmax_with_temperature"](arr, temp).numpy().reshape(n, -1)

    def stop_token_ids(self) -> set[int]:
        if self.chat_config is None:
            return set()
        return {int(i) for i in [*self.chat_config.token_ids.stop_ids(), *(self.conversation().stop_token_ids or [])]}

    def with_bos(self, ids: list[int]) -> list[int]:
        """A raw prompt's ids with bos_token_id in front, where this model's tokenizer puts one."""
        bos = self.chat_config.token_ids.bos_token_id if self.chat_config else None
        if self.adds_bos and isinstance(bos, int) and bos >= 0 and (not ids or ids[0] != bos):
            return [bos, *ids]
        return ids

    def generate_tokens(
        self,
        prompt_tokens: Sequence[int],
        max_tokens: int,
        sampling: SamplingParams | None = None,
        stop: bool = True,
    ) -> Iterator[int]:
        """Yield up to `max_tokens` new tokens (greedy when temperature is 0)."""
        import numpy as np

        sampling = sampling or self.sampling_defaults()
        rng = np.random.default_rng(sampling.seed)
        stops = self.stop_token_ids() if stop else set()
        prompt = list(prompt_tokens)
        generated: dict[int, int] = {}
        self.reset()
        logits = self.prefill(prompt)
        for i in range(max_tokens):
            (token,), _ = self.sampler.sample(logits[None], [Row(sampling, generated, prompt, float(rng.random()))])
            generated[token] = generated.get(token, 0) + 1
            yield token
            if token in stops or i == max_tokens - 1:
                return
            if self.context_window_size > 0 and self._seq_len >= self.context_window_size:
                return
            logits = self.decode(token)

    def generate(self, prompt: str, max_tokens: int = 32, sampling: SamplingParams | None = None) -> str:
        """Text continuation of `prompt` using the tokenizer files next to the config."""
        if self.tokenizer is None:
            raise UserError("no tokenizer.json in the model folder; use generate_tokens with token ids")
        ids = self.with_bos(self.tokenizer.encode(prompt).ids)
        stops = self.stop_token_ids()
        out = [t for t in self.generate_tokens(ids, max_tokens, sampling) if t not in stops]
        return self.tokenizer.decode(out)


__all__ = ["Engine", "WeightsMismatchError"]
