"""Box coding, IoU and NMS, following the reference implementation's float operations.

Boxes are (x1, y1, x2, y2) in pixels with width ``x2 - x1`` (no +1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import nms as _tv_nms

# REFERENCE §3.5: dw/dh are clamped at log(1000 / 16).
DELTA_WH_CLAMP = abs(math.log(16 / 1000))


def encode_boxes(proposals: Tensor, gt_boxes: Tensor, stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets (dx, dy, dw, dh) / stds taking ``proposals`` onto ``gt_boxes``.

    proposals, gt_boxes: (N, 4) -> (N, 4).
    """
    px = (proposals[:, 0] + proposals[:, 2]) * 0.5
    py = (proposals[:, 1] + proposals[:, 3]) * 0.5
    pw = proposals[:, 2] - proposals[:, 0]
    ph = proposals[:, 3] - proposals[:, 1]
    gx = (gt_boxes[:, 0] + gt_boxes[:, 2]) * 0.5
    gy = (gt_boxes[:, 1] + gt_boxes[:, 3]) * 0.5
    gw = gt_boxes[:, 2] - gt_boxes[:, 0]
    gh = gt_boxes[:, 3] - gt_boxes[:, 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def apply_deltas(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Move ``boxes`` by ``deltas`` = (dx, dy, dw, dh) * stds (means 0), dw/dh clamped at
    ``DELTA_WH_CLAMP``; no clipping. Traceable (no data-dependent control flow).

    boxes: (..., 4) and deltas: (..., 4), broadcast against each other -> (..., 4).
    The operations and their order are the reference's (mmdet ``delta2bbox``), so that the
    results are bit-identical in float32.
    """
    d = deltas * deltas.new_tensor(stds) + deltas.new_zeros(4)
    pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    pwh = boxes[..., 2:] - boxes[..., :2]
    dxy_wh = pwh * d[..., :2]
    dwh = d[..., 2:].clamp(min=-DELTA_WH_CLAMP, max=DELTA_WH_CLAMP)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def clip_boxes(boxes: Tensor, image_hw: tuple[int, int] | Tensor) -> Tensor:
    """Clip x to [0, w] and y to [0, h]. Traceable.

    boxes: (..., 4); image_hw: (h, w) for all boxes, or a (B, 2) float tensor of one (h, w)
    per ``boxes[b]`` -> (..., 4).
    """
    if isinstance(image_hw, Tensor):
        upper = image_hw[:, [1, 0, 1, 0]].view(-1, *([1] * (boxes.dim() - 2)), 4)
    else:
        upper = boxes.new_tensor([image_hw[1], image_hw[0], image_hw[1], image_hw[0]])
    return torch.min(boxes.clamp(min=0), upper)


def decode_boxes(rois: Tensor, deltas: Tensor, stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
                 max_shape: tuple[int, int] | None = None) -> Tensor:
    """:func:`apply_deltas` with K boxes per roi (e.g. one per class), clipped to ``max_shape``
    = (h, w) when given.

    rois: (N, 4); deltas: (N, 4 * K) -> (N, 4 * K).
    """
    n = rois.shape[0]
    if n == 0:
        return deltas
    boxes = apply_deltas(rois[:, None], deltas.reshape(n, -1, 4), stds)
    if max_shape is not None:
        boxes = clip_boxes(boxes, max_shape)
    return boxes.reshape(n, -1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU. (N, 4), (M, 4) -> (N, M); 0 where the union is empty."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    eps = torch.finfo(union.dtype).eps
    return inter / union.clamp(min=eps)


def descending_order(scores: Tensor) -> Tensor:
    """Indices sorting ``scores`` in descending order, ties broken like the reference.

    The reference (mmcv's CPU NMS, mmdet's RPN top-k) calls the default *unstable* descending
    sort; equal scores come out in the order that sort leaves them. We call the same sort on
    the same array so that tie order, and hence which boxes survive, is identical.
    """
    return scores.sort(descending=True)[1]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS; returns kept indices, highest score first. (N, 4), (N,) -> (K,) int64.

    Suppresses a box when IoU > iou_threshold with a kept box of higher rank. The rank is
    :func:`descending_order` (reference tie order). The IoU arithmetic is torchvision's, which
    is the reference's with offset 0.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = descending_order(scores)
    # torchvision sorts stably by score; feed it strictly decreasing ranks so that it visits
    # the boxes exactly in ``order``.
    ranks = torch.arange(order.numel(), 0, -1, dtype=torch.float32, device=boxes.device)
    keep = _tv_nms(boxes[order].float(), ranks, iou_threshold)
    return order[keep]


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within groups (boxes of different groups never suppress each other).

    Same trick as the reference: offset each group's boxes by group * (max coordinate + 1),
    then one NMS. (N, 4), (N,), (N,) int -> kept indices, highest score first.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = groups.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)
