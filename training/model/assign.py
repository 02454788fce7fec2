"""Target assignment and sampling (max-IoU assigner + random sampler), plain functions."""
from __future__ import annotations

import torch
from torch import Tensor

from pfpn.training.model.box_ops import box_iou


def assign_max_iou(boxes: Tensor, gt_boxes: Tensor, *, pos_iou_threshold: float, neg_iou_threshold: float,
                   min_pos_iou: float) -> Tensor:
    """Assign each box to a ground-truth box.

    boxes: (N, 4), gt_boxes: (G, 4) -> (N,) int64: -1 ignored, 0 background, g + 1 matched to gt g.

    Negatives: max IoU < neg_iou_threshold; positives: max IoU >= pos_iou_threshold; then each gt
    also claims every box with its highest IoU when that IoU >= min_pos_iou (low-quality matches).
    """
    n, g = boxes.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=boxes.device)
    if g == 0:
        assigned[:] = 0
        return assigned
    if n == 0:
        return assigned
    overlaps = box_iou(gt_boxes, boxes)  # (G, N)
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, _ = overlaps.max(dim=1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_threshold)] = 0
    pos = max_overlaps >= pos_iou_threshold
    assigned[pos] = argmax_overlaps[pos] + 1
    for i in range(g):
        if gt_max_overlaps[i] >= min_pos_iou:
            assigned[overlaps[i] == gt_max_overlaps[i]] = i + 1
    return assigned


def sample_pos_neg(assigned: Tensor, *, num_samples: int, positive_fraction: float,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Randomly sample at most ``num_samples * positive_fraction`` positives, the rest negatives.

    assigned: (N,) from :func:`assign_max_iou` -> (pos_inds (P,), neg_inds (Q,)) with P + Q <= num_samples.
    """
    pos = torch.nonzero(assigned > 0).flatten()
    neg = torch.nonzero(assigned == 0).flatten()
    num_pos = min(int(num_samples * positive_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator, device=pos.device)[:num_pos]]
    num_neg = min(num_samples - num_pos, neg.numel())
    neg = neg[torch.randperm(neg.numel(), generator=generator, device=neg.device)[:num_neg]]
    return pos, neg
