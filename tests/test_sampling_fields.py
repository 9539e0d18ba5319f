"""One declaration of the sampling fields (`artifact.chat_config.Sampling`): the recipe schema's
`overrides`, gen-config, mlc-chat-config.json's reader, the runtime's SamplingParams and the
server's request fields all follow it, so a value one layer writes the next one reads."""
from __future__ import annotations

import dataclasses
import math

import jsonschema
import pytest

from mlcbuild.artifact import RUNTIME_SIZE_FIELDS, SAMPLING_FIELDS, SAMPLING_RANGES, ChatConfig, Sampling
from mlcbuild.artifact.chat_config import TOKEN_ID_FIELDS
from mlcbuild.errors import UserError
from mlcbuild.recipe.schema import load_schema
from mlcbuild.runtime.openai_api import REQUEST_SAMPLING
from mlcbuild.runtime.sampling import SamplingParams
from mlcbuild.steps.gen_config import OVERRIDE_KEYS


def _overrides_schema() -> dict:
    return load_schema()["properties"]["overrides"]


def test_recipe_overrides_are_the_artifact_fields() -> None:
    names = set(_overrides_schema()["properties"])
    assert names == set(RUNTIME_SIZE_FIELDS) | set(SAMPLING_FIELDS) | set(TOKEN_ID_FIELDS) == OVERRIDE_KEYS


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
def test_recipe_override_range_is_the_artifact_range(name: str) -> None:
    prop = _overrides_schema()["properties"][name]
    allowed = SAMPLING_RANGES[name]
    assert prop["type"] == "number"
    low = prop.get("exclusiveMinimum", prop.get("minimum"))
    assert (low, prop["maximum"], "exclusiveMinimum" in prop) == (allowed.low, allowed.high, allowed.low_open)


def _accepts_all(name: str, value: float) -> list[bool]:
    """Whether the recipe schema, mlc-chat-config.json's reader and a request accept `value`."""
    verdicts = [jsonschema.Draft202012Validator(_overrides_schema()).is_valid({name: value})]
    for read in (lambda: ChatConfig.from_json({"model_type": "llama", "quantization": "q0f32", "model_config": {}, name: value}),
                 lambda: SamplingParams(**{name: value})):
        try:
            read()
            verdicts.append(True)
        except UserError as exc:
            assert exc.field == name and str(SAMPLING_RANGES[name]) in exc.message, exc
            verdicts.append(False)
    return verdicts


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
def test_every_layer_draws_the_same_line(name: str) -> None:
    allowed = SAMPLING_RANGES[name]
    for value in (allowed.low, allowed.high, math.nextafter(allowed.low, -math.inf), math.nextafter(allowed.high, math.inf),
                  (allowed.low + allowed.high) / 2):
        verdicts = _accepts_all(name, value)
        assert verdicts == [value in allowed] * 3, (name, value, verdicts)


def test_defaults_are_in_range_and_requests_may_set_every_field() -> None:
    for f in dataclasses.fields(Sampling):
        assert f.default in SAMPLING_RANGES[f.name]
    assert set(SAMPLING_FIELDS) < set(REQUEST_SAMPLING)
    assert SamplingParams.from_config(Sampling(top_p=0.5), temperature=0.0).top_p == 0.5


def test_mlc_compat_generation_config_covers_every_field() -> None:
    from mlcbuild.compat import GenerationConfig

    assert set(SAMPLING_FIELDS) <= {f.name for f in dataclasses.fields(GenerationConfig)}


def test_server_accepts_every_request_sampling_field() -> None:
    pytest.importorskip("fastapi")
    from mlcbuild.serve.app import CHAT_FIELDS, COMPLETION_FIELDS

    assert set(REQUEST_SAMPLING) <= CHAT_FIELDS and set(REQUEST_SAMPLING) <= COMPLETION_FIELDS


def test_chat_page_inputs_stay_inside_the_ranges() -> None:
    import re
    from pathlib import Path

    import mlcbuild

    page = (Path(mlcbuild.__file__).parent / "serve" / "static" / "chat.html").read_text()
    inputs = re.findall(r'<input id="(\w+)" type="number" min="([\d.]+)" max="([\d.]+)"', page)
    sampling = [(name, float(low), float(high)) for name, low, high in inputs if name in SAMPLING_FIELDS]
    assert sampling, "the chat page has no sampling inputs"
    for name, low, high in sampling:
        assert low in SAMPLING_RANGES[name] and high in SAMPLING_RANGES[name], (name, low, high)
