"""What the rest of mlcbuild needs to know about one model family.

Everything here is pure Python; the nn module (TVM) and the weight mapping (numpy) are
imported only when `create_model` / `weight_plan` are called, so planning never imports TVM.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from mlcbuild.models.config_base import ModelConfigBase
    from mlcbuild.weights.plan import WeightPlan


@dataclass(frozen=True)
class ModelFamily:
    """One architecture. `package` is the folder holding config.py, model.py and weights.py."""

    name: str
    package: str
    config_cls_name: str
    hf_model_types: tuple[str, ...]
    hf_architectures: tuple[str, ...] = ()
    conv_templates: tuple[str, ...] = ()
    """MLC's conversation templates for this family, most recent first: `conv_template: auto`
    prefers them among templates that fit the checkpoint equally well."""
    adds_bos: bool = False
    """Whether a raw prompt starts with bos_token_id when the tokenizer does not say (its
    tokenizer_config.json `add_bos_token` wins): HF's LlamaTokenizer default for llama."""

    def _module(self, leaf: str) -> Any:
        return importlib.import_module(f"{self.package}.{leaf}")

    @property
    def config_cls(self) -> type["ModelConfigBase"]:
        return getattr(self._module("config"), self.config_cls_name)

    def config_from_hf(self, hf_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> "ModelConfigBase":
        """HF config.json (+ recipe overrides of the runtime sizes) → MLC model config."""
        return self._module("config").config_from_hf(hf_config, overrides or {})

    def config_from_json(self, model_config: Mapping[str, Any]) -> "ModelConfigBase":
        """The `model_config` object of mlc-chat-config.json → model config."""
        return self.config_cls.from_json(model_config)

    def create_model(self, config: "ModelConfigBase", quantization_name: str, target: Any = None) -> Any:
        """The tvm.relax.frontend.nn module, already quantized (imports TVM): the family's model.py
        builds it in the scheme's model dtype, the scheme swaps in its quantized layers.

        `target` (a tvm Target or string) picks the paged-KV-cache kernels; when None, the
        enclosing `with Target(...)` at export time is used, else llvm.
        """
        from mlcbuild.quantization import get_scheme

        scheme = get_scheme(quantization_name)
        return scheme.quantize_model(self._module("model").create_model(config, scheme, target))

    def weight_plan(self, config: "ModelConfigBase", quantization_name: str) -> "WeightPlan":
        """HF tensor names → final MLC parameters (names, shapes, dtypes, transforms); numpy only."""
        from mlcbuild.quantization import get_scheme

        scheme = get_scheme(quantization_name)
        return self._module("weights").weight_plan(config, scheme)
