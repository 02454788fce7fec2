"""Box AP and mask AP next to PQ: the thing detections of a predictor, before panoptic fusion,
evaluated with pycocotools' ``COCOeval`` against instances derived from the COCO panoptic
ground truth, so that our fp32 / int8 / fp16 numbers can be put next to the deployers that report
COCO mask AP.

* Ground truth (:func:`instances_from_panoptic`), as COCO's own panoptic-to-detection conversion
  does it: every thing segment of a panoptic PNG is an instance (``iscrowd`` kept, so crowd
  segments become crowd regions that COCOeval ignores detections on); stuff segments and void
  pixels are not instances; a segment listed in the JSON but absent from the PNG (no pixel) is
  left out, as there is nothing to detect. Masks are RLE-encoded with ``pycocotools.mask``; area
  and box are those of the mask.
* Detections (:func:`detections_from_map`): all N detections of the network for the image (at
  most 100), each with its own pasted mask (``runtime.mask_paste.pasted_masks``, the pasting the
  fusion uses), its box in original-image pixels and its score.
* :func:`instance_ap`: ``COCOeval`` twice, ``bbox`` and ``segm``; as detectron2's evaluator does,
  the box evaluation reads only the boxes and the mask evaluation only the masks (so a detection's
  area is its mask's there). Results are fractions (AP 0.368 is COCO's "36.8").
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pfpn.runtime.mask_paste import pasted_masks
from pfpn.runtime.panoptic_io import read_panoptic_png
from pfpn.runtime.result import PanopticMap


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_mask(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes) -> (H, W) bool."""
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    return mask_util.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str)
                             else counts}).astype(bool)


def rle_area_and_box(rle: dict) -> tuple[int, list[float]]:
    """COCO's area (pixels) and [x, y, w, h] box of an RLE mask."""
    from pycocotools import mask as mask_util

    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str)
             else rle["counts"]}
    return int(mask_util.area(coded)), [float(v) for v in mask_util.toBbox(coded)]


def instances_from_panoptic(gt: dict, png_dir: str | os.PathLike) -> dict:
    """A COCO panoptic ground truth (the JSON as a dict, the folder of its PNGs) -> the COCO
    instance ground truth of its thing segments: ``{"images", "categories" (things only),
    "annotations"}`` with RLE masks (module docstring for the rules)."""
    things = {c["id"] for c in gt["categories"] if c.get("isthing")}
    annotations = []
    for record in gt["annotations"]:
        ids = read_panoptic_png(Path(png_dir) / record["file_name"])
        for segment in record["segments_info"]:
            if segment["category_id"] not in things:
                continue
            mask = ids == segment["id"]
            if not mask.any():  # listed but not in the PNG: nothing to detect
                continue
            rle = encode_mask(mask)
            area, box = rle_area_and_box(rle)
            annotations.append({"id": len(annotations) + 1, "image_id": record["image_id"],
                                "category_id": segment["category_id"], "iscrowd": int(segment.get("iscrowd", 0)),
                                "area": area, "bbox": box, "segmentation": rle})
    return {"images": [dict(im) for im in gt["images"]],
            "categories": [dict(c) for c in gt["categories"] if c["id"] in things],
            "annotations": annotations}


def detections_from_map(panoptic: PanopticMap, *, image_id: Any, image_size: tuple[int, int],
                        category_ids: Sequence[int]) -> list[dict]:
    """The detections behind one image's model-level map as COCO results: box [x, y, w, h] in
    original-image pixels, score, ``category_ids[label]``, and the detection's own pasted mask as
    RLE. ``image_size``: (H, W) of the original image."""
    if panoptic.mask_probs is None:
        raise ValueError("the predictor's PanopticMap carries no mask probabilities: mask AP needs them")
    boxes = np.asarray(panoptic.boxes, dtype=np.float32).reshape(-1, 4)
    results = []
    masks = pasted_masks(boxes, panoptic.mask_probs, image_size, panoptic.mask_threshold)
    for box, score, label, mask in zip(boxes, panoptic.scores, panoptic.labels, masks):
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append({"image_id": image_id, "category_id": int(category_ids[int(label)]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score), "segmentation": encode_mask(mask)})
    return results


@dataclass(frozen=True)
class InstanceAP:
    """COCO AP of the boxes and of the masks (fractions; -1 where COCOeval has no ground truth)."""

    box_ap: float
    box_ap50: float
    box_ap75: float
    mask_ap: float
    mask_ap50: float
    mask_ap75: float
    num_detections: int
    num_instances: int

    def to_dict(self) -> dict:
        return asdict(self)


def _coco_eval(gt: dict, detections: list[dict], iou_type: str) -> np.ndarray:
    """COCOeval's 12 summary numbers for ``iou_type`` ("bbox" or "segm"); its printing is silenced."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    drop = "segmentation" if iou_type == "bbox" else "bbox"
    results = [{k: v for k, v in d.items() if k != drop} for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def instance_ap(gt: dict, detections: Iterable[dict]) -> InstanceAP:
    """Box and mask AP of ``detections`` (COCO results with ``bbox`` and ``segmentation``) against
    the COCO instance ground truth ``gt`` (:func:`instances_from_panoptic`)."""
    detections = list(detections)
    num_instances = sum(1 for a in gt["annotations"] if not a.get("iscrowd"))
    if not detections:  # loadRes refuses an empty list; nothing detected is AP 0 (undefined without GT)
        none = 0.0 if num_instances else -1.0
        return InstanceAP(none, none, none, none, none, none, 0, num_instances)
    box = _coco_eval(gt, detections, "bbox")
    segm = _coco_eval(gt, detections, "segm")
    return InstanceAP(box_ap=float(box[0]), box_ap50=float(box[1]), box_ap75=float(box[2]), mask_ap=float(segm[0]),
                      mask_ap50=float(segm[1]), mask_ap75=float(segm[2]), num_detections=len(detections),
                      num_instances=num_instances)
