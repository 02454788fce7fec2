"""The custom operators as PyTorch ops (what export traces) and their ONNX emission.

``torch.ops.pfpn.multilevel_roi_align`` and ``torch.ops.pfpn.batched_nms`` run eagerly with
torchvision kernels (specs: ``plugins/*.md``). During ``torch.onnx.export`` (TorchScript
exporter) their symbolic functions emit, depending on :func:`export_flavor`:

* ``"ort"``: standard ONNX only (``RoiAlign`` opset 16 half_pixel, ``NonMaxSuppression``);
* ``"trt"``: one custom node each, domain ``ai.onnx.contrib``, with ``plugin_namespace="pfpn"``
  and ``plugin_version="1"`` attributes for TensorRT's plugin lookup.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms, nms as _tv_nms

from pfpn.plugins.names import CUSTOM_DOMAIN, NMS_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, ROI_ALIGN_NAME
from pfpn.training.model.roi_align import multilevel_roi_align as _multilevel_roi_align

ROI_STRIDES = (4, 8, 16, 32)
FLAVORS = ("ort", "trt")

_flavor = "ort"


@contextlib.contextmanager
def export_flavor(flavor: str) -> Iterator[None]:
    """Choose how the custom ops are written to ONNX inside this context."""
    global _flavor
    if flavor not in FLAVORS:
        raise ValueError(f"unknown export flavor {flavor!r}; choose one of {FLAVORS}")
    previous, _flavor = _flavor, flavor
    try:
        yield
    finally:
        _flavor = previous


# ----------------------------------------------------------------------------------------------
# eager implementations

@torch.library.custom_op("pfpn::multilevel_roi_align", mutates_args=())
def multilevel_roi_align(rois: Tensor, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, output_size: int,
                         sampling_ratio: int, finest_scale: float) -> Tensor:
    """rois (K, 5) [batch, x1, y1, x2, y2]; P2..P5 (B, C, H_l, W_l) -> (K, C, S, S). See multilevel_roi_align.md."""
    if sampling_ratio != 0:
        raise NotImplementedError("only adaptive sampling (sampling_ratio=0) is implemented")
    return _multilevel_roi_align([p2, p3, p4, p5], rois, output_size=output_size, strides=list(ROI_STRIDES),
                                 finest_scale=finest_scale).clone()


@multilevel_roi_align.register_fake
def _(rois, p2, p3, p4, p5, output_size, sampling_ratio, finest_scale):
    return p2.new_empty((rois.shape[0], p2.shape[1], output_size, output_size))


@torch.library.custom_op("pfpn::batched_nms", mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, groups: Optional[Tensor], iou_threshold: float,
                score_threshold: float, max_output_boxes: int) -> tuple[Tensor, Tensor]:
    """boxes (B, N, 4), scores (B, N), groups (B, N) or None -> (selected (B, K) int64 with -1
    padding, num_selected (B,) int64). See batched_nms.md."""
    b = scores.shape[0]
    selected = torch.full((b, max_output_boxes), -1, dtype=torch.int64, device=scores.device)
    counts = torch.zeros(b, dtype=torch.int64, device=scores.device)
    for i in range(b):
        cand = torch.nonzero(scores[i] > score_threshold).flatten()
        if cand.numel() == 0:
            continue
        if groups is None:
            keep = _tv_nms(boxes[i, cand], scores[i, cand], iou_threshold)
        else:
            keep = _tv_batched_nms(boxes[i, cand], scores[i, cand], groups[i, cand], iou_threshold)
        keep = cand[keep[:max_output_boxes]]
        selected[i, : keep.numel()] = keep
        counts[i] = keep.numel()
    return selected, counts


@batched_nms.register_fake
def _(boxes, scores, groups, iou_threshold, score_threshold, max_output_boxes):
    b = scores.shape[0]
    return (scores.new_empty((b, max_output_boxes), dtype=torch.int64), scores.new_empty((b,), dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# ONNX emission

def _const(g, value, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _roi_align_symbolic(g, rois, p2, p3, p4, p5, output_size, sampling_ratio, finest_scale):
    from torch.onnx import symbolic_helper as sh

    size = sh._get_const(output_size, "i", "output_size")
    ratio = sh._get_const(sampling_ratio, "i", "sampling_ratio")
    finest = sh._get_const(finest_scale, "f", "finest_scale")
    feats = [p2, p3, p4, p5]
    scales = [1.0 / s for s in ROI_STRIDES]
    if _flavor == "trt":
        out = g.op(f"{CUSTOM_DOMAIN}::{ROI_ALIGN_NAME}", rois, *feats, output_height_i=size, output_width_i=size,
                   sampling_ratio_i=ratio, base_stride_i=ROI_STRIDES[0], finest_scale_f=finest,
                   plugin_namespace_s=PLUGIN_NAMESPACE, plugin_version_s=PLUGIN_VERSION)
        out.setType(p2.type().with_sizes([None, None, size, size]))
        return out
    # ort: per level NonZero -> GatherND -> RoiAlign (half_pixel); the levels' rows concatenated
    # and put back in RoI order by one Gather (a ScatterND per level into a zero tensor copied the
    # whole (N, C, size, size) output once per level)
    col = lambda i: g.op("Squeeze", g.op("Slice", rois, _const(g, [i]), _const(g, [i + 1]), _const(g, [1])),
                         _const(g, [1]))
    x1, y1, x2, y2 = col(1), col(2), col(3), col(4)
    area = g.op("Mul", g.op("Sub", x2, x1), g.op("Sub", y2, y1))
    # level = floor(log2(sqrt(area) / finest + 1e-6)) clamped to 0..3, written as comparisons
    # against powers of two (exactly equal to the floor of an exact log2, no Log rounding)
    t = g.op("Add", g.op("Div", g.op("Sqrt", area), _const(g, finest, torch.float32)), _const(g, 1e-6, torch.float32))
    level = None
    for k in range(1, len(feats)):
        ge = g.op("Cast", g.op("GreaterOrEqual", t, _const(g, float(2**k), torch.float32)), to_i=7)  # int64
        level = ge if level is None else g.op("Add", level, ge)
    boxes = g.op("Slice", rois, _const(g, [1]), _const(g, [5]), _const(g, [1]))
    batch = g.op("Cast", col(0), to_i=7)
    pooled, roi_index = [], []
    for k, (feat, scale) in enumerate(zip(feats, scales)):
        # NonZero on a float 0/1 mask: TensorRT's NonZero takes FP32/FP16 only (onnx-tensorrt
        # docs/operators.md, 10.1 to 11.1), not the BOOL that Equal gives
        hit = g.op("Cast", g.op("Equal", level, _const(g, k)), to_i=1)
        idx = g.op("Transpose", g.op("NonZero", hit), perm_i=[1, 0])  # (n, 1)
        pooled.append(g.op("RoiAlign", feat, g.op("GatherND", boxes, idx), g.op("GatherND", batch, idx),
                           coordinate_transformation_mode_s="half_pixel", mode_s="avg", output_height_i=size,
                           output_width_i=size, sampling_ratio_i=ratio, spatial_scale_f=scale))
        roi_index.append(idx)
    order = g.op("Concat", *roi_index, axis_i=0)  # (N, 1): the RoI of each concatenated row
    count = g.op("Slice", g.op("Shape", order), _const(g, [0]), _const(g, [1]), _const(g, [0]))  # [N]
    # row of each RoI: positions scattered in float (exact below 2**24 RoIs), then int64
    rows = g.op("Range", _const(g, 0.0, torch.float32), g.op("Cast", g.op("Squeeze", count, _const(g, [0])), to_i=1),
                _const(g, 1.0, torch.float32))
    zeros = g.op("ConstantOfShape", count, value_t=torch.tensor([0.0], dtype=torch.float32))
    row_of = g.op("Cast", g.op("ScatterND", zeros, order, rows), to_i=7)
    out = g.op("Gather", g.op("Concat", *pooled, axis_i=0), row_of, axis_i=0)
    out.setType(p2.type().with_sizes([None, None, size, size]))
    return out


def _nms_symbolic(g, boxes, scores, groups, iou_threshold, score_threshold, max_output_boxes):
    from torch.onnx import symbolic_helper as sh

    iou = sh._get_const(iou_threshold, "f", "iou_threshold")
    thr = sh._get_const(score_threshold, "f", "score_threshold")
    k = sh._get_const(max_output_boxes, "i", "max_output_boxes")
    has_groups = not sh._is_none(groups)
    if _flavor == "trt":
        if not has_groups:  # class-agnostic: one group
            groups = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0], dtype=torch.int64))
        inputs = [boxes, scores, groups]
        selected, count = g.op(f"{CUSTOM_DOMAIN}::{NMS_NAME}", *inputs, iou_threshold_f=iou, score_threshold_f=thr,
                               max_output_boxes_i=k, plugin_namespace_s=PLUGIN_NAMESPACE,
                               plugin_version_s=PLUGIN_VERSION, outputs=2)
    else:
        selected, count = _nms_ort(g, boxes, scores, groups if has_groups else None, iou, thr, k)
    selected.setType(scores.type().with_dtype(torch.int64).with_sizes([None, k]))
    count.setType(scores.type().with_dtype(torch.int64).with_sizes([None]))
    return selected, count


def _nms_ort(g, boxes, scores, groups, iou, thr, k):
    """Standard ONNX: NonMaxSuppression (one class) on boxes offset per group, then its
    (M, 3) [batch, class, box] rows scattered into a (B, K) table, -1 elsewhere."""
    if groups is not None:  # offset each group by (max coordinate + 1): groups never overlap
        if g.opset >= 18:  # axes moved from attribute to input in opset 18
            max_coord = g.op("ReduceMax", boxes, _const(g, [1, 2]), keepdims_i=1)  # (B, 1, 1)
        else:
            max_coord = g.op("ReduceMax", boxes, axes_i=[1, 2], keepdims_i=1)
        offset = g.op("Mul", g.op("Cast", g.op("Unsqueeze", groups, _const(g, [2])), to_i=1),
                      g.op("Add", max_coord, _const(g, 1.0, torch.float32)))
        boxes = g.op("Add", boxes, offset)
    rows = g.op("NonMaxSuppression", boxes, g.op("Unsqueeze", scores, _const(g, [1])), _const(g, [k]),
                _const(g, [iou], torch.float32), _const(g, [thr], torch.float32))
    take = lambda i: g.op("Squeeze", g.op("Slice", rows, _const(g, [i]), _const(g, [i + 1]), _const(g, [1])),
                          _const(g, [1]))
    batch_of_row, box_of_row = take(0), take(2)
    num_batches = g.op("Slice", g.op("Shape", scores), _const(g, [0]), _const(g, [1]))
    batch_ids = g.op("Range", _const(g, 0), g.op("Squeeze", num_batches, _const(g, [0])), _const(g, 1))
    onehot = g.op("Cast", g.op("Equal", g.op("Unsqueeze", batch_of_row, _const(g, [1])), batch_ids), to_i=7)
    counts = g.op("ReduceSum", onehot, _const(g, [0]), keepdims_i=0)  # (B,)
    # starts[b] = rows of batches before b (an exclusive cumulative sum of counts), as a ReduceSum
    # of a comparison: TensorRT's CumSum takes FP32/FP16/BF16 only (onnx-tensorrt operators.md)
    before = g.op("Cast", g.op("Less", g.op("Unsqueeze", batch_of_row, _const(g, [1])), batch_ids), to_i=7)
    starts = g.op("ReduceSum", before, _const(g, [0]), keepdims_i=0)  # (B,)
    num_rows = g.op("Squeeze", g.op("Slice", g.op("Shape", rows), _const(g, [0]), _const(g, [1])), _const(g, [0]))
    rank = g.op("Sub", g.op("Range", _const(g, 0), num_rows, _const(g, 1)), g.op("Gather", starts, batch_of_row))
    index = g.op("Concat", g.op("Unsqueeze", batch_of_row, _const(g, [1])), g.op("Unsqueeze", rank, _const(g, [1])),
                 axis_i=1)
    table = g.op("ConstantOfShape", g.op("Concat", num_batches, _const(g, [k]), axis_i=0),
                 value_t=torch.tensor([-1], dtype=torch.int64))
    return g.op("ScatterND", table, index, box_of_row), counts


OPSET = 17
torch.onnx.register_custom_op_symbolic("pfpn::multilevel_roi_align", _roi_align_symbolic, OPSET)
torch.onnx.register_custom_op_symbolic("pfpn::batched_nms", _nms_symbolic, OPSET)
