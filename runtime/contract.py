"""The export contract: what an exported Panoptic FPN file takes and returns, in one place.

Read by ``export/`` (to build and describe the graph) and ``runtime/`` (to feed it and read
its outputs and metadata). Torch-free.

Input (the caller resizes with REFERENCE §2's rule and pads; everything else happens in the graph):

* ``images``: uint8 ``[B, H, W, 3]``, BGR, each image resized (keep ratio, OpenCV bilinear) and
  zero-padded at the bottom/right; ``H`` and ``W`` multiples of ``size_divisor`` (32).
* ``image_sizes``: int64 ``[B, 2]``: ``(h, w)`` of each resized image inside the padding.

The graph converts BGR to RGB, normalises with mean/std, zeroes the padding (as the reference
pads *after* normalising), and runs the network with RPN, box, mask and semantic heads.

Outputs (fixed maximum D = ``max_detections`` detections per image, friendly to TensorRT):

* ``boxes`` float32 ``[B, D, 4]``: x1, y1, x2, y2 in resized-input pixels (divide by the
  resize factors to get original-image pixels);
* ``scores`` float32 ``[B, D]``: descending within the valid rows;
* ``labels`` int64 ``[B, D]``: thing labels 0..T-1;
* ``mask_probs`` float32 ``[B, D, 28, 28]``: sigmoid probabilities of each detection's class;
* ``num_detections`` int64 ``[B]``: rows ``>= num_detections`` are padding (zeros);
* ``semantic_logits`` float32 ``[B, S + 1, H / 4, W / 4]``: stride-4 logits, not upsampled
  (channels 0..S-1 stuff, channel S all things).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

CONTRACT_VERSION = "1"
MASK_SIZE = 28
SEMANTIC_STRIDE = 4

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "mask_probs", "num_detections", "semantic_logits")

# name -> (numpy dtype name, symbolic shape)
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "images": ("uint8", ("batch", "height", "width", "3")),
    "image_sizes": ("int64", ("batch", "2")),
}
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "boxes": ("float32", ("batch", "max_detections", "4")),
    "scores": ("float32", ("batch", "max_detections")),
    "labels": ("int64", ("batch", "max_detections")),
    "mask_probs": ("float32", ("batch", "max_detections", str(MASK_SIZE), str(MASK_SIZE))),
    "num_detections": ("int64", ("batch",)),
    "semantic_logits": ("float32", ("batch", "num_stuff_plus_one", "height/4", "width/4")),
}

# ONNX dynamic axes for the exporter
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "images": {0: "batch", 1: "height", 2: "width"},
    "image_sizes": {0: "batch"},
    "boxes": {0: "batch"},
    "scores": {0: "batch"},
    "labels": {0: "batch"},
    "mask_probs": {0: "batch"},
    "num_detections": {0: "batch"},
    "semantic_logits": {0: "batch", 2: "height_4", 3: "width_4"},
}

# Inference thresholds that can be chosen at export (export/to_onnx.py --score-threshold ...);
# the file records them and the runtime follows them. Names are ModelMetadata fields.
DEPLOYMENT_SETTINGS = ("score_threshold", "max_detections", "mask_threshold", "mask_overlap_threshold",
                       "stuff_area_limit")


@dataclass(frozen=True)
class FusionConfig:
    """The heuristic panoptic fusion's parameters (REFERENCE §5): one type for the
    training config (``ModelConfig.fusion``), the model file (:attr:`ModelMetadata.fusion`) and
    the three post-processings (PyTorch, numpy, GPU kernels). The defaults are REFERENCE §5's."""

    # An instance is skipped when more than this fraction of its mask is already taken.
    mask_overlap_threshold: float = 0.5
    # Stuff segments with fewer pixels than this become VOID.
    stuff_area_limit: int = 4096
    # Kept instance k (1-based) is written as ``label + k * instance_offset``.
    instance_offset: int = 1000


def format_deployment_settings(settings: Mapping[str, float | int]) -> str:
    """``{"score_threshold": 0.3, ...}`` -> ``"score_threshold 0.3, ..."`` (one console line)."""
    return ", ".join(f"{name} {value:g}" for name, value in settings.items())


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported file says about itself (ONNX ``metadata_props``, values are strings;
    lists and dicts are JSON)."""

    contract_version: str
    flavor: str  # "ort" or "trt"
    input_format: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_long_side: int
    max_short_side: int
    size_divisor: int
    categories: list[dict]  # contiguous-label order: {"id", "name", "isthing"}
    num_thing_classes: int
    num_stuff_classes: int
    max_detections: int
    score_threshold: float
    box_nms_iou_threshold: float
    rpn_nms_iou_threshold: float
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    mask_threshold: float
    mask_overlap_threshold: float
    stuff_area_limit: int
    instance_offset: int
    source: str = ""

    INPUT_FORMAT = ("uint8 BGR NHWC, resized keeping aspect ratio (OpenCV INTER_LINEAR) to fit "
                    "max_long_side x max_short_side, zero-padded bottom/right to a multiple of size_divisor; "
                    "image_sizes int64 [B, 2] = (h, w) before padding")

    @property
    def fusion(self) -> FusionConfig:
        """The fusion parameters this file was exported with (its keys ``mask_overlap_threshold``,
        ``stuff_area_limit``, ``instance_offset``)."""
        return FusionConfig(mask_overlap_threshold=self.mask_overlap_threshold,
                            stuff_area_limit=self.stuff_area_limit, instance_offset=self.instance_offset)

    def deployment_settings(self) -> dict[str, float | int]:
        """The thresholds this file was exported with (:data:`DEPLOYMENT_SETTINGS`)."""
        return {name: getattr(self, name) for name in DEPLOYMENT_SETTINGS}

    def to_props(self) -> dict[str, str]:
        out = {}
        for key, value in self.__dict__.items():
            out[key] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> "ModelMetadata":
        missing = [f for f in cls.__dataclass_fields__ if f not in props and f != "source"]
        if missing:
            raise ValueError(f"model metadata lacks {', '.join(missing)}: not exported by this project's exporter "
                             f"(contract {CONTRACT_VERSION})")
        if props["contract_version"] != CONTRACT_VERSION:
            raise ValueError(f"model contract version {props['contract_version']!r} is not supported "
                             f"(this runtime reads {CONTRACT_VERSION!r}); re-export the model")
        kwargs: dict[str, Any] = {}
        for name, field in cls.__dataclass_fields__.items():
            if name not in props:
                continue
            raw = props[name]
            kwargs[name] = raw if field.type == "str" else json.loads(raw)
        for name in ("mean", "std"):
            kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)
