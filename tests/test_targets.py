"""Target definitions and availability checks (no TVM import, no compile)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlcbuild.errors import UserError
from mlcbuild.targets import ResolvedTarget, load_targets, resolve_target, target_params
from mlcbuild.toolchain import Lack, Missing, check_available, check_resolved, list_targets


def test_one_yaml_per_kind() -> None:
    assert set(load_targets()) == {"llvm", "cuda", "metal", "webgpu", "opencl", "rocm", "vulkan"}
    assert set(load_targets()["cuda"].variants) == {"sm_80", "sm_86", "sm_89", "sm_90a"}


def test_cuda_variant_resolves_to_arch_and_host() -> None:
    config = resolve_target("cuda", "sm_90a").tvm_target_config()
    assert config["kind"] == "cuda" and config["arch"] == "sm_90a"
    assert config["host"]["kind"] == "llvm"
    assert resolve_target("cuda").variant == "sm_90a"


def test_variant_overrides_suffix_host_and_toolchain() -> None:
    ios = resolve_target("metal", "ios")
    assert ios.suffix == "tar" and ios.host["mtriple"] == "arm64-apple-ios" and ios.toolchain == ()
    assert resolve_target("metal", "macos").suffix == "dylib"
    assert "ios" not in resolve_target("metal", "ios").attrs


def test_params_round_trip() -> None:
    params = target_params("opencl", "linux")
    assert ResolvedTarget.from_params(params).params() == params


def test_unknown_variant_and_target_are_user_errors() -> None:
    with pytest.raises(UserError, match="sm_80"):
        resolve_target("cuda", "sm_75")
    with pytest.raises(UserError, match="known"):
        resolve_target("tpu")


def test_missing_codegen_is_reported() -> None:
    missing = check_available("vulkan")
    assert missing == Missing(Lack.CODEGEN, "vulkan", missing.detail) and "no vulkan codegen" in str(missing)


def test_missing_toolchain_is_reported() -> None:
    webgpu = resolve_target("webgpu")
    missing = check_resolved(webgpu, have_tool=lambda tool: False)
    assert missing is not None and (missing.lack, missing.what) == (Lack.TOOL, "emcc") and "Emscripten" in str(missing)
    assert missing.elsewhere == f"needs {missing.detail}: build it where that is"
    assert check_resolved(webgpu, have_tool=lambda tool: True) is None
    ndk = check_resolved(resolve_target("opencl", "android-so"), have_tool=lambda tool: False)
    assert ndk is not None and ndk.what == "ndk" and "NDK" in str(ndk)


def test_host_and_mobile_tar_targets_need_no_extra_tools() -> None:
    assert check_available("llvm") is None
    assert check_available("opencl", "android") is None
    assert check_available("metal", "ios") is None


def test_cuda_needs_nvcc() -> None:
    missing = check_available("cuda", "sm_90a")
    assert (missing is None) == (shutil.which("nvcc") is not None)


def test_list_targets_covers_every_variant_in_one_line() -> None:
    rows = list_targets()
    assert {(r.name, r.variant) for r in rows} >= {("cuda", "sm_80"), ("cuda", "sm_90a"), ("llvm", "x86_64"), ("webgpu", None)}
    for row in rows:
        assert row.missing is None or "\n" not in str(row.missing)


def test_availability_does_not_import_tvm() -> None:
    code = "import sys\nfrom mlcbuild.toolchain import list_targets\nlist_targets()\nassert 'tvm' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [oops\n", "bad.yaml:2:1: not valid YAML"),
        ("- a\n- b\n", "bad.yaml: a target definition is a mapping, got list"),
        ("kind: 5\n", "bad.yaml: name: missing"),
        ("name: x\ntvm_target: {kind: llvm}\nsuffix: so\ntoolchian: []\n", "toolchian: unknown field 'toolchian' — did you mean 'toolchain'?"),
        ("name: x\ntvm_target: llvm\nsuffix: so\n", "tvm_target: must be a mapping, got str"),
        ("name: x\ntvm_target: {opt: 1}\nsuffix: so\n", "tvm_target: needs a `kind`"),
        ("name: x\ntvm_target: {kind: cuda}\nsuffix: so\ntoolchain: [nvcc, cc]\ntoolchain_versions: 13.0\n", "toolchain_versions: must be a mapping, got float"),
        ("name: x\ntvm_target: {kind: cuda}\nsuffix: so\ntoolchain: [nvcc, cc]\ntoolchain_versions: {nvcc: 13.0}\n", 'toolchain_versions.nvcc: must be a quoted version string like "13.0" (YAML read 13.0, a float)'),
        ("name: x\ntvm_target: {kind: cuda}\nsuffix: so\ntoolchain: [nvcc, cc]\ntoolchain_versions: {nvcc: \"13\"}\n", "toolchain_versions.nvcc: must be MAJOR.MINOR or MAJOR.MINOR.PATCH (as nvcc --version prints it), got '13'"),
        ("name: x\ntvm_target: {kind: cuda}\nsuffix: so\ntoolchain: [nvcc, cc]\ntoolchain_versions: {nvc: \"13.0\"}\n", "toolchain_versions.nvc: unknown tool 'nvc' — did you mean 'nvcc'?"),
        ("name: x\ntvm_target: {kind: llvm}\nsuffix: so\ntoolchain: [cc]\ntoolchain_versions: {nvcc: \"13.0\"}\n", "toolchain_versions.nvcc: pins nvcc, which is not in this target's toolchain ['cc']"),
        ("name: x\ntvm_target: {kind: cuda}\nsuffix: so\ntoolchain: [nvcc, cc]\nvariants:\n  a: {toolchain_versions: {nvcc: \"v13\"}}\n", "variants.a.toolchain_versions.nvcc: must be MAJOR.MINOR"),
    ],
)
def test_a_malformed_target_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "bad.yaml").write_text(text)
    env = {**os.environ, "MLCBUILD_TARGETS_DIR": str(folder), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = subprocess.run([sys.executable, "-m", "mlcbuild", "targets"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_pin_follows_the_variants_toolchain(tmp_path: Path) -> None:
    """A variant may re-pin; one whose toolchain drops the tool drops its pin (and keeps its old params)."""
    import yaml

    folder = tmp_path / "targets"
    folder.mkdir()
    spec = {
        "name": "gpu",
        "tvm_target": {"kind": "cuda"},
        "suffix": "so",
        "toolchain": ["nvcc", "cc"],
        "toolchain_versions": {"nvcc": "13.0"},
        "variants": {"a": {"arch": "sm_80"}, "b": {"arch": "sm_90a", "toolchain_versions": {"nvcc": "13.0.88"}}, "c": {"toolchain": ["cc"]}},
    }
    (folder / "gpu.yaml").write_text(yaml.safe_dump(spec))
    code = (
        "import json\nfrom mlcbuild.targets import resolve_target\n"
        "print(json.dumps({v: resolve_target('gpu', v).params().get('toolchain_versions') for v in 'abc'}))"
    )
    env = {**os.environ, "MLCBUILD_TARGETS_DIR": str(folder), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == {"a": {"nvcc": "13.0"}, "b": {"nvcc": "13.0.88"}, "c": None}


def test_native_resolves_to_this_cpu_and_another_cpu_gets_another_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`llvm:native` is this machine's CPU (LLVM's host detection) in the key and the provenance (both
    carry the compile node's target params): a library built on one CPU is never served for another."""
    import mlcbuild.toolchain as toolchain
    from mlcbuild.steps.compile import CompileStep

    here = target_params("llvm", "native")
    assert here["attrs"]["mcpu"] not in ("", "native") and here["attrs"]["mtriple"].split("-")[0] in ("x86_64", "aarch64", "arm64")
    assert all(f[0] in "+-" for f in here["attrs"]["mattr"])
    monkeypatch.setattr(toolchain, "host_cpu", lambda: {"mcpu": "other-cpu", "mtriple": "x86_64-linux-gnu", "mattr": []})
    there = target_params("llvm", "native")
    assert there["attrs"]["mcpu"] == "other-cpu" and there["variant"] == here["variant"] == "native"
    step = CompileStep()
    assert step.toolchain({"target": here}) != step.toolchain({"target": there})


def test_host_cpu_detection_runs_once_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlcbuild.toolchain as toolchain

    first = toolchain.host_cpu()

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("probed again")

    monkeypatch.setattr(subprocess, "run", no_probe)
    assert toolchain.host_cpu() == first


def test_cpu_variants_name_their_cpu_and_features() -> None:
    assert resolve_target("llvm", "znver4").tvm_target_config() == {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}
    arm = resolve_target("llvm", "aarch64_dotprod")
    assert arm.attrs["mattr"] == ["+neon", "+dotprod"] and arm.toolchain == ("aarch64-linux-gnu-gcc",)
    assert resolve_target("llvm").variant == "x86_64"
