"""``pip install ".[gpu]"`` installs everything the GPU path imports: build_engine.py, predict.py on
an engine, the TensorRT plugins and both kernel sets. The imports are collected from the code
itself (every ``import`` statement, function-level ones included, following the project's own
modules); the requirements are read from the installed package metadata."""
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
NOT_INSTALLED = {"tensorrt": "tensorrt-cu12"}
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


def _gpu_requirements() -> list[Requirement]:
    try:
        requires = md.requires("panoptic-fpn-deploy") or []
    except md.PackageNotFoundError:
        pytest.skip("the project is not installed (run make setup)")
    reqs = [Requirement(r) for r in requires]
    base = [r for r in reqs if r.marker is None]
    gpu = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "gpu"})]
    return base + gpu


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
