"""The panoptic result returned by every predictor (PyTorch, ONNX Runtime, TensorRT).

The model-level map (SPEC fusion steps 1-4) holds ``label + k * instance_offset`` for the k-th
kept instance, stuff labels ``T..T+S-1`` and ``VOID = T + S``. The COCO form maps VOID to 0 and
keeps every other value as the segment id (as the reference's COCO writer does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.panoptic_io import VOID_ID


@dataclass
class PanopticResult:
    id_map: np.ndarray  # (H, W) int64 COCO segment ids, 0 = VOID
    segments_info: list[dict] = field(default_factory=list)  # id, category_id, isthing, area, bbox, score

    def to_coco_annotation(self, image_id: int | str, file_name: str) -> dict:
        """COCO's annotation record; things keep their ``score`` next to COCO's fields."""
        segs = []
        for s in self.segments_info:
            seg = {"id": s["id"], "category_id": s["category_id"], "area": s["area"], "bbox": s["bbox"], "iscrowd": 0}
            if s.get("score") is not None:
                seg["score"] = float(s["score"])
            segs.append(seg)
        return {"image_id": image_id, "file_name": file_name, "segments_info": segs}


def segment_bboxes(inverse: np.ndarray, num_segments: int) -> np.ndarray:
    """Tight [x, y, w, h] boxes of every segment. inverse: (H, W) segment index 0..n-1 -> (n, 4) int64."""
    h, w = inverse.shape
    cols = np.zeros((num_segments, w), dtype=bool)
    rows = np.zeros((num_segments, h), dtype=bool)
    cols[inverse, np.arange(w)[None, :]] = True
    rows[inverse, np.arange(h)[:, None]] = True
    x0 = cols.argmax(1)
    x1 = w - 1 - cols[:, ::-1].argmax(1)
    y0 = rows.argmax(1)
    y1 = h - 1 - rows[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1).astype(np.int64)


def panoptic_result_from_label_map(label_map: np.ndarray, categories: CategoryTable, *,
                                   instance_scores: Sequence[float] = (), instance_offset: int = 1000
                                   ) -> PanopticResult:
    """Model-level map -> COCO ids + segments_info.

    label_map: (H, W) int; instance_scores[k - 1] is the score of kept instance k.
    """
    void = categories.void_label
    ids = np.asarray(label_map, dtype=np.int64)
    labels = ids % instance_offset
    id_map = np.where(labels == void, VOID_ID, ids)
    seg_ids, inverse, areas = np.unique(id_map, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(id_map.shape)
    boxes = segment_bboxes(inverse, len(seg_ids))
    return PanopticResult(id_map=id_map, segments_info=segments_info(seg_ids, areas, boxes, categories,
                                                                     instance_scores, instance_offset))


def segments_info(seg_ids: Sequence[int] | np.ndarray, areas: Sequence[int] | np.ndarray,
                  bboxes: Sequence[Sequence[int]] | np.ndarray, categories: CategoryTable,
                  instance_scores: Sequence[float] | np.ndarray, instance_offset: int) -> list[dict]:
    """COCO segments_info of segments (ids ``label + k * instance_offset``, areas, [x, y, w, h]
    boxes); VOID is skipped; instance_scores[k - 1] is the score of kept instance k."""
    segments = []
    for seg_id, area, bbox in zip(np.asarray(seg_ids).tolist(), np.asarray(areas).tolist(),
                                  np.asarray(bboxes).tolist()):
        if seg_id == VOID_ID:
            continue
        cat = categories.by_label[seg_id % instance_offset]
        k = seg_id // instance_offset
        score = float(instance_scores[k - 1]) if cat.isthing and 0 < k <= len(instance_scores) else None
        segments.append({"id": int(seg_id), "category_id": cat.id, "isthing": cat.isthing, "area": int(area),
                         "bbox": [int(v) for v in bbox], "score": score})
    return segments
