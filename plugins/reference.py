"""Slow, plain numpy reference implementations of the custom operators (torch-free).

They follow the specs in ``plugins/*.md`` literally; every other implementation (the PyTorch
op used while tracing, the ONNX Runtime lowering, the TensorRT plugins, the CUDA kernels) is
tested against them.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np



# ----------------------------------------------------------------------------------------------
# MultiLevelRoIAlign

def roi_levels(rois: np.ndarray, num_levels: int, finest_scale: float = 56.0) -> np.ndarray:
    """(K, 5) float32 rois -> (K,) int64 level: clamp(floor(log2(sqrt(w h) / s + 1e-6)), 0, L - 1)."""
    rois = np.asarray(rois, dtype=np.float32)
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.floor(np.log2(np.sqrt(area) / np.float32(finest_scale) + np.float32(1e-6)))
    level = np.nan_to_num(level, nan=0.0, neginf=0.0)
    return np.clip(level, 0, num_levels - 1).astype(np.int64)


def _axis_weights(start: np.float32, size: np.float32, bins: int, grid: int, length: int) -> np.ndarray:
    """Bilinear sampling weights of one axis: (bins, length), summed over the grid samples.

    Sample i of bin b sits at ``start + b * bin_size + (i + 0.5) * bin_size / grid`` with
    ``bin_size = size / bins``, evaluated in float32 in that order.
    """
    f32 = np.float32
    w = np.zeros((bins, length), dtype=np.float64)
    bin_size = f32(size) / f32(bins)
    for b in range(bins):
        for i in range(grid):
            c = f32(f32(start) + f32(b) * bin_size) + f32(f32(i + 0.5) * bin_size) / f32(grid)
            if c < -1.0 or c > length:
                continue  # outside: contributes zero
            c = max(float(c), 0.0)
            lo = int(math.floor(c))
            if lo >= length - 1:
                lo = hi = length - 1
                c = float(lo)
            else:
                hi = lo + 1
            frac = c - lo
            w[b, lo] += 1.0 - frac
            w[b, hi] += frac
    return w


def roi_align_single(feat: np.ndarray, box: Sequence[float], *, scale: float, output_size: tuple[int, int],
                     sampling_ratio: int) -> np.ndarray:
    """Half-pixel RoIAlign of one box. feat: (C, H, W) -> (C, oh, ow) float32.

    Bilinear weights factorise into a row part and a column part (w = w_y * w_x, and a sample
    is dropped when either coordinate is out of range), so the bin average is
    ``Wy @ feat @ Wx.T / count`` with per-axis weight matrices.
    """
    f32 = np.float32
    c, h, w = feat.shape
    oh, ow = output_size
    x1, y1, x2, y2 = (f32(v) * f32(scale) - f32(0.5) for v in box)
    roi_w, roi_h = f32(x2 - x1), f32(y2 - y1)
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(f32(roi_h / f32(oh))))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(f32(roi_w / f32(ow))))
    count = max(grid_h * grid_w, 1)
    wy = _axis_weights(y1, roi_h, oh, grid_h, h)
    wx = _axis_weights(x1, roi_w, ow, grid_w, w)
    rows = np.nonzero(wy.any(0))[0]
    cols = np.nonzero(wx.any(0))[0]
    if rows.size == 0 or cols.size == 0:
        return np.zeros((c, oh, ow), dtype=np.float32)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # only the rows/columns sampled
    window = feat[:, r0:r1, c0:c1].astype(np.float64)
    out = np.einsum("ph,chw,qw->cpq", wy[:, r0:r1], window, wx[:, c0:c1]) / count
    return out.astype(np.float32)


def multilevel_roi_align(rois: np.ndarray, feats: Sequence[np.ndarray], *, output_size: tuple[int, int] = (7, 7),
                         sampling_ratio: int = 0, base_stride: int = 4, finest_scale: float = 56.0) -> np.ndarray:
    """rois: (K, 5) [batch, x1, y1, x2, y2]; feats: L maps (B, C, H_l, W_l), level l at stride
    base_stride * 2**l -> (K, C, oh, ow)."""
    rois = np.asarray(rois, dtype=np.float32).reshape(-1, 5)
    channels = feats[0].shape[1]
    out = np.zeros((rois.shape[0], channels, *output_size), dtype=np.float32)
    levels = roi_levels(rois, len(feats), finest_scale)
    for k, (roi, level) in enumerate(zip(rois, levels)):
        feat = feats[level][int(roi[0])]
        out[k] = roi_align_single(feat, roi[1:], scale=1.0 / (base_stride * 2**int(level)), output_size=output_size,
                                  sampling_ratio=sampling_ratio)
    return out


# ----------------------------------------------------------------------------------------------
# BatchedNMS

def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """float32 IoU of one box against (M, 4); 0 where the union is empty."""
    box = box.astype(np.float32)
    boxes = boxes.astype(np.float32)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = np.maximum(np.float32(0), np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(np.float32(0), np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, np.float32(0))
    return iou.astype(np.float32)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None, *, iou_threshold: float,
                score_threshold: float, max_output_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """boxes (B, N, 4), scores (B, N), groups (B, N) or None ->
    (selected (B, K) int64 with -1 padding, num_selected (B,) int64). See batched_nms.md."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    b, n = scores.shape
    if boxes.shape != (b, n, 4):
        raise ValueError(f"boxes {boxes.shape} do not match scores {scores.shape}")
    groups = np.zeros((b, n), np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    selected = np.full((b, max_output_boxes), -1, dtype=np.int64)
    counts = np.zeros(b, dtype=np.int64)
    for i in range(b):
        cand = np.nonzero(scores[i] > np.float32(score_threshold))[0]
        order = cand[np.argsort(-scores[i, cand], kind="stable")]
        alive = np.ones(order.size, dtype=bool)
        kept = 0
        for j in range(order.size):
            if kept == max_output_boxes:
                break
            if not alive[j]:
                continue
            idx = order[j]
            selected[i, kept] = idx
            kept += 1
            rest = order[j + 1:]
            suppress = (groups[i, rest] == groups[i, idx]) & \
                (iou_one_to_many(boxes[i, idx], boxes[i, rest]) > np.float32(iou_threshold))
            alive[j + 1:] &= ~suppress
        counts[i] = kept
    return selected, counts
