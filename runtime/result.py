"""One image's result at its two levels, the same for every predictor (PyTorch, ONNX Runtime,
OpenVINO, TensorRT) and every post-processing (PyTorch, numpy, GPU kernels):

* :class:`PanopticMap`, the model level (REFERENCE §5 steps 1-4): the map holds ``label + k *
  instance_offset`` for the k-th kept instance, stuff labels ``T..T+S-1`` and ``VOID = T + S``,
  next to the detections behind it;
* :class:`PanopticResult`, the COCO form (:func:`to_panoptic_result`): VOID becomes 0 and every
  other value is kept as the segment id (as the reference's COCO writer does), with segments_info.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.panoptic_io import VOID_ID


@dataclass
class SegmentTable:
    """The COCO segments of a label map, found while fusing (the numpy post-processing) so that
    :func:`to_panoptic_result` needs no pass over the pixels: one row per non-void segment, in
    ascending id (as ``np.unique`` of the map gives them)."""

    ids: np.ndarray  # (n,) int64 segment ids
    areas: np.ndarray  # (n,) int64 pixel counts
    bboxes: np.ndarray  # (n, 4) int64 tight [x, y, w, h]
    codes: np.ndarray  # (H, W) compact per-pixel codes
    code_ids: np.ndarray  # code -> COCO id (VOID -> 0)

    def id_map(self) -> np.ndarray:
        """(H, W) int64 COCO segment ids (VOID -> 0)."""
        return np.take(self.code_ids, self.codes)


@dataclass
class PanopticMap:
    """One image's model-level output (REFERENCE §5 steps 1-4), before COCO formatting.

    ``label_map``: (H, W) int64, ``label + k * instance_offset`` for kept instance k (1-based,
    in fusion order), stuff labels T..T+S-1, VOID = T + S. ``kept[k - 1]``: the detection (row of
    ``boxes`` / ``scores`` / ``labels``, all N detections of the network) that became instance k.
    """

    label_map: np.ndarray
    kept: list[int]
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in original-image pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 thing labels 0..T-1
    instance_offset: int
    # (N, M, M) float32 mask probabilities of the N detections and the threshold the fusion pasted
    # them with: what the detections' own masks are, before fusion (instance AP:
    # runtime.mask_paste.pasted_masks)
    mask_probs: np.ndarray | None = None
    mask_threshold: float = 0.5
    segments: SegmentTable | None = None  # the numpy post-processing's segment table
    part_seconds: dict[str, float] = field(default_factory=dict, repr=False)  # numpy post-processing, by part
    boundary_pixels: int = 0  # numpy post-processing: pixels whose semantic label needed the full interpolation

    @property
    def kept_scores(self) -> np.ndarray:
        """(K,) scores of the kept instances, instance k at ``k - 1``."""
        return np.asarray(self.scores)[np.asarray(self.kept, dtype=np.int64)]

    @property
    def kept_labels(self) -> np.ndarray:
        """(K,) thing labels of the kept instances."""
        return np.asarray(self.labels)[np.asarray(self.kept, dtype=np.int64)]


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


def to_panoptic_result(panoptic: PanopticMap, categories: CategoryTable) -> PanopticResult:
    """The COCO form of a model-level output: from its segment table when it has one (the same
    as :func:`panoptic_result_from_label_map` without its ``np.unique`` over every pixel)."""
    table = panoptic.segments
    if table is None:
        return panoptic_result_from_label_map(panoptic.label_map, categories, instance_scores=panoptic.kept_scores,
                                              instance_offset=panoptic.instance_offset)
    segments = segments_info(table.ids, table.areas, table.bboxes, categories, panoptic.kept_scores,
                             panoptic.instance_offset)
    return PanopticResult(id_map=table.id_map(), segments_info=segments)


def panoptic_result_from_label_map(label_map: np.ndarray, categories: CategoryTable, *,
                                   instance_scores: Sequence[float] | np.ndarray = (),
                                   instance_offset: int = FusionConfig.instance_offset) -> PanopticResult:
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
