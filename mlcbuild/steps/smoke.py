"""smoke: load a compiled library with its weights and generate a few tokens greedily.

A library that compiles can still fail to load (a lib/weights mismatch) or produce NaNs; this
node catches that at build time, on a device that can run the library (llvm: the CPU, always).
It is keyed like any other node — by the library, the weights and the config it ran — so it
re-runs exactly when one of them changes. Importing this module must not import TVM.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping

from mlcbuild.errors import StepError
from mlcbuild.steps.base import JSON, RunContext, Step
from mlcbuild.store.manifest import Manifest
from mlcbuild.targets import ResolvedTarget
from mlcbuild.toolchain import tvm_version

RESULT = "smoke.json"
PROMPT = "Hello"


def device_kind(target: Mapping[str, JSON]) -> str:
    """The runtime device a target's library runs on (llvm libraries run on the CPU)."""
    kind = str(target["tvm_target"]["kind"])
    return "cpu" if kind in ("llvm", "c") else kind


def device_present(kind: str) -> bool:
    """Cheap (no TVM import): a GPU device needs its driver loaded."""
    probes = {
        "cpu": [],
        "cuda": ["/proc/driver/nvidia/version", "/dev/nvidiactl"],
        "rocm": ["/dev/kfd"],
    }
    if kind not in probes:
        return False
    return all(Path(p).exists() for p in probes[kind])


def no_build_machine(target_params: Mapping[str, JSON]) -> str | None:
    """Why no build machine (no CI runner either) can smoke-test this target's library: it runs in
    an app (a wasm in a browser) or on the device it was cross-compiled for. None: a runner with the
    device can."""
    target = ResolvedTarget.from_params(target_params)
    if target.suffix not in ("so", "dylib", "dll"):
        return f"a {target.suffix} library runs in an app, not here: smoke-test it where it is deployed"
    cross = [t for t in target.toolchain if t.endswith(("-gcc", "-clang"))]
    if cross:
        return f"cross-compiled ({cross[0]}): smoke-test it on a {target.name}:{target.variant} machine"
    return None


def missing_cpu_features(target: Mapping[str, JSON]) -> list[str]:
    """`mattr` features of an x86 llvm target that /proc/cpuinfo does not list (running it would SIGILL);
    a target built for a named CPU (`mcpu`: znver4, a resolved native) runs where LLVM detects that CPU."""
    tvm_target = ResolvedTarget.from_params(target).tvm_target_config()
    cpuinfo = Path("/proc/cpuinfo")
    if tvm_target.get("kind") != "llvm" or not str(tvm_target.get("mtriple", "")).startswith("x86_64") or not cpuinfo.exists():
        return []
    mcpu = str(tvm_target.get("mcpu") or "")
    if mcpu:
        from mlcbuild.toolchain import host_cpu

        here = host_cpu()
        lacking = [str(f)[1:] for f in tvm_target.get("mattr") or [] if str(f).startswith("+") and f"-{str(f)[1:]}" in here["mattr"]]
        if here["mcpu"] != mcpu:
            return [f"the {mcpu} CPU model (this CPU is {here['mcpu']})"]
        return lacking
    flags: set[str] = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    wanted = [str(f).lstrip("+") for f in tvm_target.get("mattr") or [] if str(f).startswith("+")]
    return [f for f in wanted if f not in flags]


class SmokeStep(Step):
    kind: ClassVar[str] = "smoke"
    version: ClassVar[str] = "1"

    def identity(self, params: Mapping[str, JSON]) -> JSON:
        """The library it tests: quantization and target name + variant (like compile)."""
        target = params.get("target") or {}
        return {"quantization": params.get("quantization"), "target": [target.get("name"), target.get("variant")]}

    def resources(self, params: Mapping[str, JSON], inputs: Mapping[str, Manifest]) -> dict[str, float]:
        """One CPU, and a GPU when the library runs on one (Ray's GPU resource)."""
        return {"CPU": 1} if device_kind(params["target"]) == "cpu" else {"CPU": 1, "GPU": 1}

    def unavailable(self, params: Mapping[str, JSON]) -> str | None:
        """A library runs only where its device (and CPU features) are: elsewhere the node waits for such a machine."""
        reason = no_build_machine(params["target"])
        if reason is not None:
            return reason
        missing = missing_cpu_features(params["target"])
        if missing:
            return f"this CPU lacks {', '.join(missing)}: smoke-test it on a CPU that has them"
        kind = device_kind(params["target"])
        if not device_present(kind):
            return f"runs on {kind}, and this machine has no {kind} device: smoke-test it where there is one"
        return None

    def toolchain(self, params: Mapping[str, JSON]) -> JSON:
        return {"apache-tvm": tvm_version()}

    def declares(self, params: Mapping[str, JSON], rel: str) -> bool:
        return rel == RESULT

    def run(self, ctx: RunContext) -> None:
        from mlcbuild.runtime.engine import Engine

        libs = sorted(p for p in ctx.inputs["lib"].iterdir() if p.name.startswith("lib."))
        if not libs:
            raise StepError("smoke: the compile output holds no library")
        start = time.perf_counter()
        engine = Engine.load(ctx.inputs["config"], libs[0], device=device_kind(ctx.params["target"]), weights_dir=ctx.inputs["weights"])
        prompt_ids: list[int]
        if engine.tokenizer is not None:
            conv = engine.conversation()
            conv.messages = [("user", PROMPT), ("assistant", None)]
            prompt_ids = list(conv.system_prefix_token_ids or []) + engine.tokenizer.encode(conv.as_prompt(), add_special_tokens=False).ids
        else:
            bos = engine.chat_config.token_ids.bos_token_id if engine.chat_config else 1
            prompt_ids = [bos if isinstance(bos, int) and bos > 0 else 1]
        n = int(ctx.params.get("tokens", 8))
        if engine.context_window_size > 0:
            prompt_ids = prompt_ids[: max(engine.context_window_size - n, 1)]
        tokens = list(engine.generate_tokens(prompt_ids, n, _greedy(), stop=False))
        logits = engine.logits_for(prompt_ids, tokens[:-1])
        if not _finite(logits):
            raise StepError(f"smoke: the library produced non-finite logits on {device_kind(ctx.params['target'])}")
        replay = [int(t) for t in logits.argmax(-1)]
        if len(tokens) != n or replay != tokens:
            raise StepError(f"smoke: greedy decode {tokens} disagrees with prefill+decode replay {replay}")
        text = engine.tokenizer.decode(tokens) if engine.tokenizer is not None else None
        result: dict[str, Any] = {
            "device": device_kind(ctx.params["target"]),
            "prompt_tokens": len(prompt_ids),
            "tokens": tokens,
            "text": text,
        }
        (ctx.out / RESULT).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        ctx.progress(1.0, f"{len(tokens)} tokens in {time.perf_counter() - start:.1f}s: {text!r}")


def _greedy() -> Any:
    from mlcbuild.runtime.sampling import SamplingParams

    return SamplingParams(temperature=0.0)


def _finite(array: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())
