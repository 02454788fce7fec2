"""Torch-free Panoptic FPN runtime: ``from runtime import Predictor``.

Needs numpy, opencv and onnxruntime; TensorRT engines additionally need TensorRT 10 and
cuda-bindings 12 (``pip install ".[gpu]"``). Nothing here imports torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "PanopticResult", "CategoryTable", "ModelMetadata"]


def __getattr__(name: str) -> Any:  # lazy: importing a submodule stays cheap
    if name == "Predictor":
        from pfpn.runtime.predictor import Predictor

        return Predictor
    if name == "PanopticResult":
        from pfpn.runtime.result import PanopticResult

        return PanopticResult
    if name == "CategoryTable":
        from pfpn.runtime.categories import CategoryTable

        return CategoryTable
    if name == "ModelMetadata":
        from pfpn.runtime.contract import ModelMetadata

        return ModelMetadata
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
