"""A stand-in for ``mmcv._ext`` (the compiled operators of mmcv 2.1.0) with the two operators the
reference Panoptic FPN calls on the CPU, so that mmdetection 3.3.0 runs on ``mmcv-lite`` 2.1.0
(mmcv's Python code without its compiled library).

It reproduces these mmcv 2.1.0 CPU kernels (``mmcv/ops/csrc/pytorch/cpu/``), float32 only:

``nms(boxes, scores, iou_threshold, offset)`` -- ``nms_cpu`` in ``nms.cpp``:
  1. ``areas = (x2 - x1 + offset) * (y2 - y1 + offset)``, element-wise in float32;
  2. ``order = scores.sort(0, descending=True)`` -- ATen's default, *unstable* sort. We call the
     very same ATen sort, so equal scores come out in the same (implementation-defined) order;
  3. greedy pass in ``order``: box ``i`` that is still selected suppresses every later selected
     box ``j`` with ``ovr > iou_threshold``, where, in float32 and in this order,
     ``xx1 = max(x1[i], x1[j])``, ``yy1 = max(y1[i], y1[j])``, ``xx2 = min(x2[i], x2[j])``,
     ``yy2 = min(y2[i], y2[j])``, ``w = max(0, xx2 - xx1 + offset)``,
     ``h = max(0, yy2 - yy1 + offset)``, ``inter = w * h``,
     ``ovr = inter / ((areas[i] + areas[j]) - inter)``; the threshold is a C++ ``float``, so
     the comparison is float32 against float32(iou_threshold);
     ``std::max(a, b)`` is ``a < b ? b : a`` and ``std::min(a, b)`` is ``b < a ? b : a``
     (this fixes what a NaN does);
  4. returns ``order`` masked by the selection: kept indices (int64), highest score first.
  The greedy pass is vectorised over ``j`` (one row of the IoU matrix per kept box); every
  element goes through the same float32 operations as the C++ loop.

``roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
spatial_scale, sampling_ratio, pool_mode, aligned)`` -- ``ROIAlignForwardCPULauncher`` in
``roi_align.cpp``, average mode (``pool_mode == 1``, what ``mmcv.ops.RoIAlign`` uses by default):
  rois are (K, 5) ``(batch index, x1, y1, x2, y2)``; with ``aligned`` the box is shifted by
  -0.5 after scaling; ``sampling_ratio <= 0`` samples ``ceil(roi_size / pooled_size)`` points
  per bin and axis; each sample is bilinear (zero when more than one pixel outside, clamped to
  the border otherwise); the bin value is ``sum(w1 v1 + w2 v2 + w3 v3 + w4 v4) / count`` with
  ``count = max(grid_h * grid_w, 1)``; an aligned RoI of negative size is an error. That kernel
  came from detectron2's, which is also torchvision's CPU ``roi_align`` (same sample positions,
  same weights, same summation order, float32 throughout), so we call torchvision's and write
  the result into ``output`` in place, as mmcv does. Max mode (``pool_mode == 0``) is not
  supplied.

Every other name of ``mmcv._ext`` resolves to a function that raises ``NotImplementedError``
(mmcv's Python modules check at import time that their operators exist, and mmdetection
imports many it never calls here).

Install with :func:`install` before anything imports ``mmcv.ops``.
"""
from __future__ import annotations

import sys
import types

import torch
from torchvision.ops import roi_align as _tv_roi_align

PROVIDED = ("nms", "roi_align_forward")


def _cpp_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a < b, b, a)  # std::max(a, b)


def _cpp_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b < a, b, a)  # std::min(a, b)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int) -> torch.Tensor:
    """(N, 4) float32 boxes, (N,) float32 scores -> kept indices (K,) int64, highest score first."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.dtype != torch.float32 or scores.dtype != torch.float32:
        raise NotImplementedError(f"the stand-in nms is float32 only, got {boxes.dtype} / {scores.dtype}")
    if boxes.device.type != "cpu":
        raise NotImplementedError("the stand-in reproduces mmcv's CPU kernel only")
    x1, y1, x2, y2 = (boxes[:, k].contiguous() for k in range(4))
    off = torch.tensor(float(offset), dtype=torch.float32)
    zero = torch.tensor(0.0, dtype=torch.float32)
    threshold = torch.tensor(iou_threshold, dtype=torch.float32)  # a C++ float parameter
    areas = (x2 - x1 + off) * (y2 - y1 + off)
    order = scores.sort(0, descending=True)[1]
    x1, y1, x2, y2, areas = x1[order], y1[order], x2[order], y2[order], areas[order]
    n = order.numel()
    select = torch.ones(n, dtype=torch.bool)
    for i in range(n):
        if not bool(select[i]):
            continue
        rest = slice(i + 1, n)
        xx1 = _cpp_max(x1[i], x1[rest])
        yy1 = _cpp_max(y1[i], y1[rest])
        xx2 = _cpp_min(x2[i], x2[rest])
        yy2 = _cpp_min(y2[i], y2[rest])
        w = _cpp_max(zero, xx2 - xx1 + off)
        h = _cpp_max(zero, yy2 - yy1 + off)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        select[rest] &= ~(ovr > threshold)
    return order[select]


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax_y: torch.Tensor,
                      argmax_x: torch.Tensor, aligned_height: int, aligned_width: int, spatial_scale: float,
                      sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """input (B, C, H, W), rois (K, 5) -> writes output (K, C, aligned_height, aligned_width)."""
    if pool_mode != 1:
        raise NotImplementedError("the stand-in roi_align_forward supplies average pooling (pool_mode=1) only")
    if input.dtype != torch.float32 or input.device.type != "cpu":
        raise NotImplementedError("the stand-in reproduces mmcv's float32 CPU kernel only")
    if rois.numel() == 0:
        return
    if aligned:
        scale = torch.tensor(spatial_scale, dtype=torch.float32)
        half = torch.tensor(0.5, dtype=torch.float32)
        widths = (rois[:, 3] * scale - half) - (rois[:, 1] * scale - half)
        heights = (rois[:, 4] * scale - half) - (rois[:, 2] * scale - half)
        if bool(((widths < 0) | (heights < 0)).any()):
            raise RuntimeError("ROIs in ROIAlign cannot have non-negative size!")  # mmcv's message
    result = _tv_roi_align(input, rois, (int(aligned_height), int(aligned_width)), float(spatial_scale),
                           int(sampling_ratio), bool(aligned))
    output.copy_(result)


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"mmcv._ext.{name} is not supplied by tests/reference/mmcv_ext_standin.py "
                                  f"(only {', '.join(PROVIDED)}); install a compiled mmcv 2.1.0 for it")
    op.__name__ = name
    return op


def _module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)


def install() -> types.ModuleType:
    """Register this module as ``mmcv._ext``; refuses to shadow a compiled mmcv."""
    try:
        import mmcv  # noqa: F401  (the Python package, from mmcv-lite)
    except ImportError as exc:
        raise RuntimeError("mmcv-lite 2.1.0 is not importable; see tests/reference/reference_env.py") from exc
    existing = sys.modules.get("mmcv._ext")
    if existing is not None and existing is not sys.modules[__name__]:
        raise RuntimeError("a compiled mmcv._ext is already loaded; the stand-in would shadow it")
    module = sys.modules[__name__]
    module.__getattr__ = _module_getattr  # type: ignore[attr-defined]  (module-level __getattr__)
    sys.modules["mmcv._ext"] = module
    return module
