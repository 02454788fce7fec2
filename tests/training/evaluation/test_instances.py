"""Box / mask AP (training/evaluation/instances.py): the panoptic-to-instance conversion on
hand-built cases, RLE round trips, and AP on cases whose value is known by hand."""
from __future__ import annotations

import numpy as np
import pytest

from pfpn.runtime.panoptic_io import write_panoptic_png
from pfpn.runtime.result import PanopticMap
from pfpn.training.evaluation.instances import (decode_mask, detections_from_map, encode_mask, instance_ap,
                                                instances_from_panoptic, rle_area_and_box)

PERSON, CAR, SKY = 1, 3, 119
CATEGORIES = [{"id": PERSON, "name": "person", "isthing": 1}, {"id": CAR, "name": "car", "isthing": 1},
              {"id": SKY, "name": "sky", "isthing": 0}]


def panoptic_gt(tmp_path, ids: np.ndarray, segments: list[dict], image_id: int = 7) -> dict:
    write_panoptic_png(tmp_path / "gt" / f"{image_id}.png", ids)
    h, w = ids.shape
    return {"images": [{"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w}],
            "categories": CATEGORIES,
            "annotations": [{"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}]}


def test_conversion_keeps_thing_segments_with_their_crowd_flag(tmp_path):
    ids = np.zeros((6, 10), np.int64)  # 0 = void
    ids[:2] = 30  # sky (stuff): no instance
    ids[2:5, 1:4] = 11  # a person, 3x3
    ids[3:6, 6:10] = 12  # a crowd of cars, 3x4
    segments = [{"id": 30, "category_id": SKY, "iscrowd": 0}, {"id": 11, "category_id": PERSON, "iscrowd": 0},
                {"id": 12, "category_id": CAR, "iscrowd": 1},
                {"id": 13, "category_id": PERSON, "iscrowd": 0}]  # listed, but no pixel in the PNG
    inst = instances_from_panoptic(panoptic_gt(tmp_path, ids, segments), tmp_path / "gt")
    assert [c["id"] for c in inst["categories"]] == [PERSON, CAR]
    anns = inst["annotations"]
    assert [(a["category_id"], a["iscrowd"], a["area"], a["bbox"]) for a in anns] == [
        (PERSON, 0, 9, [1.0, 2.0, 3.0, 3.0]), (CAR, 1, 12, [6.0, 3.0, 4.0, 3.0])]
    assert all(a["image_id"] == 7 for a in anns) and [a["id"] for a in anns] == [1, 2]
    np.testing.assert_array_equal(decode_mask(anns[0]["segmentation"]), ids == 11)
    np.testing.assert_array_equal(decode_mask(anns[1]["segmentation"]), ids == 12)


def test_rle_round_trips():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (40, 33)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            rle = encode_mask(mask)
            assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
            np.testing.assert_array_equal(decode_mask(rle), mask)
            area, box = rle_area_and_box(rle)
            assert area == int(mask.sum())
            if area:
                ys, xs = np.nonzero(mask)
                assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _square_gt(tmp_path, squares: list[tuple[int, int, int]]) -> dict:
    """Instances of PERSON: (y, x, side) squares on a 40x40 image."""
    ids = np.zeros((40, 40), np.int64)
    for k, (y, x, s) in enumerate(squares, start=1):
        ids[y:y + s, x:x + s] = k
    segments = [{"id": k, "category_id": PERSON, "iscrowd": 0} for k in range(1, len(squares) + 1)]
    return instances_from_panoptic(panoptic_gt(tmp_path, ids, segments), tmp_path / "gt")


def _detection(y: int, x: int, s: int, score: float) -> dict:
    mask = np.zeros((40, 40), bool)
    mask[y:y + s, x:x + s] = True
    return {"image_id": 7, "category_id": PERSON, "bbox": [float(x), float(y), float(s), float(s)], "score": score,
            "segmentation": encode_mask(mask)}


def test_ground_truth_fed_back_scores_ap_one(tmp_path):
    gt = _square_gt(tmp_path, [(2, 2, 10), (20, 5, 12), (8, 25, 9)])
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                   "segmentation": a["segmentation"]} for a in gt["annotations"]]
    ap = instance_ap(gt, detections)
    assert (ap.box_ap, ap.mask_ap, ap.box_ap50, ap.mask_ap75) == (1.0, 1.0, 1.0, 1.0)
    assert (ap.num_detections, ap.num_instances) == (3, 3)


def test_hand_computed_ap(tmp_path):
    """Two instances, three detections by descending score: a false positive far from both, then
    the two instances exactly. Precision after each: 0, 1/2, 2/3 at recall 0, 1/2, 1; COCO's
    interpolated precision is 2/3 at every recall threshold and every IoU threshold: AP = 2/3."""
    gt = _square_gt(tmp_path, [(2, 2, 10), (20, 20, 12)])
    detections = [_detection(30, 0, 6, 0.9), _detection(2, 2, 10, 0.8), _detection(20, 20, 12, 0.7)]
    ap = instance_ap(gt, detections)
    for value in (ap.box_ap, ap.box_ap50, ap.box_ap75, ap.mask_ap, ap.mask_ap50, ap.mask_ap75):
        assert value == pytest.approx(2 / 3, abs=1e-12)
    # with the false positive ranked last instead, every instance is found before it: AP 1
    detections[0]["score"] = 0.1
    assert instance_ap(gt, detections).mask_ap == pytest.approx(1.0)
    # a detection on a crowd region is ignored, not a false positive
    crowd = _square_gt(tmp_path, [(2, 2, 10), (20, 20, 12)])
    crowd["annotations"][1]["iscrowd"] = 1
    ap = instance_ap(crowd, [_detection(2, 2, 10, 0.5), _detection(20, 20, 12, 0.9)])
    assert (ap.mask_ap, ap.num_instances) == (pytest.approx(1.0), 1)
    # nothing detected: AP 0
    assert instance_ap(gt, []).mask_ap == 0.0


def test_detections_from_map_paste_each_detections_own_mask():
    """Two overlapping detections: the fusion gives the overlap to one, AP sees both full masks.
    A constant-1 28x28 mask pasted into an integer box [x1, x2) covers exactly those pixels."""
    boxes = np.array([[2, 3, 12, 9], [8, 5, 16, 15]], np.float32)
    probs = np.ones((2, 28, 28), np.float32)
    panoptic = PanopticMap(label_map=np.zeros((20, 20), np.int64), kept=[0], boxes=boxes,
                           scores=np.array([0.9, 0.6], np.float32), labels=np.array([1, 0]), instance_offset=1000,
                           mask_probs=probs, mask_threshold=0.5)
    dets = detections_from_map(panoptic, image_id=3, image_size=(20, 20), category_ids=[PERSON, CAR])
    assert [(d["category_id"], d["score"], d["bbox"]) for d in dets] == [
        (CAR, pytest.approx(0.9), [2.0, 3.0, 10.0, 6.0]), (PERSON, pytest.approx(0.6), [8.0, 5.0, 8.0, 10.0])]
    for det, (x1, y1, x2, y2) in zip(dets, boxes.astype(int)):
        expected = np.zeros((20, 20), bool)
        expected[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(decode_mask(det["segmentation"]), expected)
    with pytest.raises(ValueError, match="mask probabilities"):
        detections_from_map(PanopticMap(label_map=np.zeros((2, 2), np.int64), kept=[], boxes=boxes, scores=np.ones(2),
                                        labels=np.zeros(2, np.int64), instance_offset=1000),
                            image_id=1, image_size=(20, 20), category_ids=[1])
