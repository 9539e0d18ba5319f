"""Compile options resolve per target kind: equal meaning gives equal keys, impossible asks fail."""
from __future__ import annotations

import pytest

from mlcbuild.compiler.options import CompileOptions
from mlcbuild.errors import UserError


def test_levels_resolve_to_explicit_choices() -> None:
    o3 = CompileOptions.from_json({"opt": "O3"})
    # no level turns on cuBLAS, which the compiler refuses (no cuBLAS dispatch in the pipeline yet)
    assert o3.resolved("cuda", cublas_available=True) == {"opt": "O3", "cudagraph": True, "cublas": False, "embed_ptx": False}
    assert o3.resolved("cuda", cublas_available=False)["cublas"] is False
    assert o3.resolved("llvm", cublas_available=False) == {"opt": "O3", "cudagraph": False, "cublas": False, "embed_ptx": False, "cpu_int8_digits": 2}


def test_equal_meaning_gives_equal_options() -> None:
    implicit = CompileOptions.from_json({"opt": "O2"}).resolved("cuda", cublas_available=False)
    explicit = CompileOptions.from_json({"opt": "O2", "cudagraph": False, "cublas": False}).resolved("cuda", False)
    assert implicit == explicit


def test_int8_digits_key_only_llvm_and_only_by_meaning() -> None:
    """`cpu_int8_digits: 2` written out is the default (one cache entry); 1 is another library; a GPU
    target never sees the option in its key."""
    default = CompileOptions.from_json({}).resolved("llvm", False)
    assert CompileOptions.from_json({"cpu_int8_digits": 2}).resolved("llvm", False) == default
    assert CompileOptions.from_json({"cpu_int8_digits": 1}).resolved("llvm", False) != default
    assert CompileOptions.from_json({"cpu_int8_digits": 1}).resolved("cuda", False) == CompileOptions.from_json({}).resolved("cuda", False)
    with pytest.raises(UserError, match="compile.cpu_int8_digits"):
        CompileOptions.from_json({"cpu_int8_digits": True})


def test_impossible_requests_are_user_errors() -> None:
    with pytest.raises(UserError, match="no cuBLAS"):
        CompileOptions.from_json({"cublas": True}).resolved("cuda", cublas_available=False)


def test_mlcs_opt_syntax_maps_flags_and_ignored_ones_do_not_split_the_key() -> None:
    """The seed's own line: faster_transformer=1 is a warning; cudagraph=0 is honoured; the key is O2's."""
    from mlcbuild.compiler.options import compile_warnings, resolve_options

    seed = {"opt": "flashinfer=0;cublas_gemm=0;faster_transformer=1;cudagraph=0"}
    assert resolve_options(seed, "cuda") == resolve_options({"opt": "O2"}, "cuda")
    assert compile_warnings(seed) == [
        "compile.opt: faster_transformer=1 is ignored: the apache-tvm wheel from PyPI has no FasterTransformer (CUTLASS) kernels"
    ]
    assert compile_warnings({"opt": "O3;flashinfer=0;cutlass=0"}) == []
    assert CompileOptions.from_json({"flashinfer": True}).ignored == ("flashinfer=1",)
    with_flag = resolve_options({"opt": "O3;flashinfer=1;cublas_gemm=1;ipc_allreduce_strategy=AUTO"}, "cuda")
    assert with_flag == resolve_options({"opt": "O3"}, "cuda")
    assert resolve_options({"opt": "O3;cudagraph=0"}, "cuda")["cudagraph"] is False
    assert resolve_options({"opt": "cudagraph=1"}, "cuda") == {**resolve_options({"opt": "O2"}, "cuda"), "cudagraph": True}
    assert resolve_options({"opt": "cudagraph=1"}, "llvm") == resolve_options({"opt": "O2"}, "llvm")


@pytest.mark.parametrize(
    "opt, message",
    [
        ("O9", "'O9' is not one of O0, O1, O2, O3, nor a flag name=0|1"),
        ("cudagraph=2", "cudagraph must be 0 or 1"),
        ("turbo=1", "unknown flag 'turbo'; valid: .*flashinfer"),
        ("cuda_graph=1", "unknown flag 'cuda_graph' — did you mean 'cudagraph'"),
        ("O1;O3", "names two levels"),
        ("ipc_allreduce_strategy=FAST", "ipc_allreduce_strategy must be one of NONE"),
    ],
)
def test_malformed_opt_is_one_line_naming_the_part(opt: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        CompileOptions.from_json({"opt": opt})


def test_recipe_with_mlcs_opt_loads_and_a_bad_flag_names_its_line(tmp_path) -> None:
    from mlcbuild.recipe.load import load_recipe

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    body = "source: {path: m}\nquantizations: [q0f32]\ntargets: [llvm]\ncompile:\n  opt: \"%s\"\n"
    (tmp_path / "ok.yaml").write_text(body % "flashinfer=0;cublas_gemm=0;faster_transformer=1;cudagraph=0")
    assert load_recipe(tmp_path / "ok.yaml").compile_options["opt"].endswith("cudagraph=0")
    (tmp_path / "bad.yaml").write_text(body % "O2;cudagraph=yes")
    with pytest.raises(UserError) as err:
        load_recipe(tmp_path / "bad.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'bad.yaml'}:5:") and "compile.opt: cudagraph must be 0 or 1" in str(err.value)
