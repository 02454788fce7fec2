"""``pip install ".[gpu]"`` installs everything the GPU path imports: build_engine.py, predict.py on
an engine, the TensorRT plugins and both kernel sets. The imports are collected from the code
itself (every ``import`` statement, function-level ones included, following the project's own
modules); the requirements are read from the installed package metadata. The ``onnxruntime``
module comes from onnxruntime-gpu there (the cpu extra's onnxruntime, installed here, provides
the same module and must never be installed with it)."""
from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "pfpn"  # the import root; pfpn.<folder>.<module> is <folder>/<module>.py in the checkout
# what an engine user runs: the build script, predict on an engine, the plugins and kernels
ENTRY_MODULES = tuple(f"pfpn.{m}" for m in (
    "runtime.build_engine", "runtime.predict", "runtime.trt.backend", "runtime.trt.runner", "runtime.trt.calibration",
    "plugins.trt_plugins", "plugins.triton_kernels", "runtime.gpu.kernels", "runtime.gpu.build_ptx"))
# import name -> distribution, for what is not installed here (TensorRT: only its type stubs are)
# or is installed here from another package (onnxruntime: the cpu extra's build of the module)
NOT_INSTALLED = {"tensorrt": "tensorrt-cu12", "onnxruntime": "onnxruntime-gpu"}
# the distributions that provide the `onnxruntime` module (runtime/ort_package.py): one per extra
ORT_CPU, ORT_GPU = "onnxruntime", "onnxruntime-gpu"
# imports that are optional on the GPU path, with the reason (nothing else may be missing)
OPTIONAL = {"openvino": "the OpenVINO backend (runtime.backends), not used with engines"}


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(entries=ENTRY_MODULES) -> dict[str, set[str]]:
    """top-level third-party module -> the project modules that import it (transitively from entries)."""
    seen, todo, found = set(), list(entries), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = _module_file(name)
        if file is None:
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for full in names:
                top = full.split(".")[0]
                if top == PROJECT:
                    todo.append(full)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(name)
    return found


def _installed_distribution() -> md.Distribution:
    """The project's metadata as pip installed it. A ``*.egg-info`` folder in the checkout
    (left by a build, ignored by git) comes first on sys.path when the tests run from the root but
    may be older than pyproject.toml: the installed ``.dist-info`` is preferred to it."""
    dists = list(md.distributions(name="panoptic-fpn-deploy"))
    if not dists:
        pytest.skip("the project is not installed (run make setup)")
    in_checkout = [d for d in dists if Path(str(getattr(d, "_path", ""))).parent == ROOT
                   and str(getattr(d, "_path", "")).endswith(".egg-info")]
    return next((d for d in dists if d not in in_checkout), dists[0])


def _installed_requirements() -> list[Requirement]:
    return [Requirement(r) for r in _installed_distribution().requires or []]


def _extra_requirements(extra: str | None) -> list[Requirement]:
    """The base requirements (extra None) or those only ``extra`` adds."""
    reqs = _installed_requirements()
    if extra is None:
        return [r for r in reqs if r.marker is None]
    return [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]


def _gpu_requirements() -> list[Requirement]:
    return _extra_requirements(None) + _extra_requirements("gpu")


def _distribution_of(module: str) -> set[str]:
    if module in NOT_INSTALLED:
        return {NOT_INSTALLED[module]}
    dists = md.packages_distributions().get(module, [])
    return {canonicalize_name(d) for d in dists}


def test_gpu_extra_installs_every_import_of_the_gpu_path():
    reqs = {canonicalize_name(r.name): r for r in _gpu_requirements()}
    imports = third_party_imports()
    assert {"tensorrt", "triton", "cuda", "onnx", "numpy"} <= set(imports), imports  # the walk sees the code
    missing = {}
    for module, users in sorted(imports.items()):
        if module in OPTIONAL:
            continue
        dists = _distribution_of(module)
        if not dists & set(reqs):
            missing[module] = (sorted(dists), sorted(users))
    assert not missing, f"imported on the GPU path but not installed by .[gpu]: {missing}"


def test_gpu_extra_pins_one_cuda_major():
    reqs = {canonicalize_name(r.name): r for r in _gpu_requirements()}
    cuda = reqs["cuda-bindings"].specifier  # the distribution behind `import cuda.bindings`
    assert "12.9.4" in cuda and "12.6.0" in cuda
    assert "13.0.0" not in cuda and "13.4.4" not in cuda  # cuda-bindings 13 needs a CUDA 13 driver
    assert "tensorrt" not in reqs, "the bare tensorrt package pulls the CUDA 13 build (10.16+) and TensorRT 11"
    trt = reqs["tensorrt-cu12"].specifier
    assert "10.13.3.9" in trt and "10.9.0.34" in trt
    assert "10.8.0.43" not in trt  # no ahead-of-time Python plugins before 10.9
    assert "11.0.0.114" not in trt
    assert "triton" in reqs and "onnx" in reqs


def test_onnx_runtime_comes_from_exactly_one_extra():
    """The base install has no ONNX Runtime; the gpu extra brings onnxruntime-gpu and not
    onnxruntime, and no extra but cpu lists onnxruntime (two of them overwrite each other)."""
    base = {canonicalize_name(r.name) for r in _extra_requirements(None)}
    assert ORT_CPU not in base and ORT_GPU not in base
    gpu = {canonicalize_name(r.name) for r in _extra_requirements("gpu")}
    assert ORT_GPU in gpu and ORT_CPU not in gpu
    cpu = {canonicalize_name(r.name) for r in _extra_requirements("cpu")}
    assert ORT_CPU in cpu and ORT_GPU not in cpu
    extras = set(_installed_distribution().metadata.get_all("Provides-Extra") or [])
    assert {"cpu", "gpu"} <= extras
    listing = {extra for extra in extras
               if {ORT_CPU, ORT_GPU} & {canonicalize_name(r.name) for r in _extra_requirements(extra)}}
    assert listing == {"cpu", "gpu"}, listing  # onnxruntime-extensions is another package (not matched)
    for extra in extras - {"cpu"}:
        assert ORT_CPU not in {canonicalize_name(r.name) for r in _extra_requirements(extra)}, extra
