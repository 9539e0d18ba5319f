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
    assert o3.resolved("llvm", cublas_available=False) == {"opt": "O3", "cudagraph": False, "cublas": False, "embed_ptx": False}


def test_equal_meaning_gives_equal_options() -> None:
    implicit = CompileOptions.from_json({"opt": "O2"}).resolved("cuda", cublas_available=False)
    explicit = CompileOptions.from_json({"opt": "O2", "cudagraph": False, "cublas": False}).resolved("cuda", False)
    assert implicit == explicit


def test_impossible_requests_are_user_errors() -> None:
    with pytest.raises(UserError, match="no cuBLAS"):
        CompileOptions.from_json({"cublas": True}).resolved("cuda", cublas_available=False)
    with pytest.raises(UserError, match="flashinfer"):
        CompileOptions.from_json({"flashinfer": True})
    with pytest.raises(UserError, match="opt must be one of"):
        CompileOptions.from_json({"opt": "O9"})
