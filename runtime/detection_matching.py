"""Matching two sets of detections (torch-free): the one IoU matcher of the project, used wherever
two predictors' detections are compared (export verification, the GPU check). Detections are
compared after matching, never by index: NMS tie order is not stable across backends."""
from __future__ import annotations

import numpy as np


def box_iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """(N, 4), (M, 4) x1 y1 x2 y2 (arrays or CPU tensors) -> (N, M) IoU in float64; widths and
    heights below 0 count as 0, and a pair whose union is empty has IoU 0."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(boxes_a, labels_a, boxes_b, labels_b, *, iou_threshold: float = 0.0
                     ) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching among same-label pairs, best IoU first (ties in index order)
    -> [(index in a, index in b, IoU)] for the pairs with IoU > ``iou_threshold``."""
    iou = box_iou_matrix(boxes_a, boxes_b)
    if iou.size == 0:
        return []
    iou[np.asarray(labels_a).reshape(-1)[:, None] != np.asarray(labels_b).reshape(-1)[None, :]] = 0.0
    pairs: list[tuple[int, int, float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] <= iou_threshold:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j, float(iou[i, j])))
    return pairs
