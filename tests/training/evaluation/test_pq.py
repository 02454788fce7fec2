"""Hand-computed PQ cases (the arithmetic is in the comments).

Most images are 1-pixel-high strips built from runs, so every area is a run length:
``strip((1, 8), (0, 2))`` is ``[1 1 1 1 1 1 1 1 0 0]`` (ids), pixel ranges are written [a, b).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pfpn.runtime.categories import Category, CategoryTable
from pfpn.runtime.panoptic_io import write_panoptic_png
from pfpn.training.evaluation.pq import OFFSET, PQStat, normalize_categories, pq_compute, pq_stat_single

PERSON, CAR, SKY, GRASS = 1, 3, 17, 20  # non-contiguous COCO-style ids
CATS = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": SKY, "name": "sky", "isthing": 0},
    {"id": GRASS, "name": "grass", "isthing": 0},
]


def strip(*runs: tuple[int, int]) -> np.ndarray:
    """(1, N) id map from (id, length) runs."""
    return np.concatenate([np.full(n, i, dtype=np.int64) for i, n in runs])[None, :]


def gseg(seg_id, cat, ids, iscrowd=0, area=None):
    """GT segment; area defaults to the pixel count in ``ids`` (as in a consistent COCO file)."""
    a = int((ids == seg_id).sum()) if area is None else area
    return {"id": seg_id, "category_id": cat, "iscrowd": iscrowd, "area": a}


def pseg(seg_id, cat):
    return {"id": seg_id, "category_id": cat}


def evaluate(gt, gt_segs, pred, pred_segs, cats=CATS):
    return pq_stat_single(gt, gt_segs, pred, pred_segs, cats, image_id=42).result(cats)


def assert_row(row, pq, sq, rq, n=None):
    assert row["pq"] == pytest.approx(pq, abs=1e-12)
    assert row["sq"] == pytest.approx(sq, abs=1e-12)
    assert row["rq"] == pytest.approx(rq, abs=1e-12)
    if n is not None:
        assert row["n"] == n


def test_perfect_prediction_2d():
    # 10x10: person rows 0-4 x cols 0-4 (25 px), car rows 5-9 x cols 5-9 (25 px), sky the rest
    # (50 px). The prediction is identical with other ids -> every IoU is 1.
    gt = np.full((10, 10), 3)
    gt[:5, :5] = 1
    gt[5:, 5:] = 2
    pred = np.full((10, 10), 900)
    pred[:5, :5] = 70000
    pred[5:, 5:] = 5
    r = evaluate(gt, [gseg(1, PERSON, gt), gseg(2, CAR, gt), gseg(3, SKY, gt)],
                 pred, [pseg(70000, PERSON), pseg(5, CAR), pseg(900, SKY)])
    assert_row(r.all, 1, 1, 1, n=3)  # grass has no TP/FP/FN -> not counted
    assert_row(r.things, 1, 1, 1, n=2)
    assert_row(r.stuff, 1, 1, 1, n=1)
    assert r.per_class[GRASS] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
    assert r["All"] is r.all and r["per_class"] is r.per_class


def test_one_tp_iou_0_6_and_one_fn():
    # GT:   person #1 [0,10) (10 px), person #2 [10,14) (4 px)
    # pred: person #5 [0,6)  (6 px), void elsewhere
    # #5 vs #1: inter 6, union 6 + 10 - 6 - 0 = 10 -> IoU 0.6 > 0.5 -> TP; #2 unmatched -> FN.
    # person: PQ = 0.6 / (1 + 0.5*0 + 0.5*1) = 0.4, SQ = 0.6 / 1 = 0.6, RQ = 1 / 1.5 = 2/3
    gt = strip((1, 10), (2, 4))
    pred = strip((5, 6), (0, 8))
    r = evaluate(gt, [gseg(1, PERSON, gt), gseg(2, PERSON, gt)], pred, [pseg(5, PERSON)])
    s = r.per_class[PERSON]
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    assert_row(r.all, 0.4, 0.6, 2 / 3, n=1)
    assert_row(r.things, 0.4, 0.6, 2 / 3, n=1)
    assert r.stuff == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}  # no stuff category counted


@pytest.mark.parametrize("pred_len, matched", [(5, False), (6, True)])
def test_iou_exactly_half_is_not_a_match(pred_len, matched):
    # GT person [0,10); pred person [0,pred_len), void after.
    # pred_len 5: IoU = 5 / (5 + 10 - 5) = 0.5, not > 0.5 -> no match: FN 1, and the pred is
    #   an FP (0 px on void or crowd: 0/5 <= 0.5): PQ = SQ = RQ = 0.
    # pred_len 6: IoU = 6 / 10 = 0.6 -> TP: PQ = SQ = 0.6, RQ = 1.
    gt = strip((1, 10))
    pred = strip((7, pred_len), (0, 10 - pred_len))
    r = evaluate(gt, [gseg(1, PERSON, gt)], pred, [pseg(7, PERSON)])
    s = r.per_class[PERSON]
    if matched:
        assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0)
        assert_row(r.all, 0.6, 0.6, 1.0, n=1)
    else:
        assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 1)
        assert_row(r.all, 0.0, 0.0, 0.0, n=1)


def test_union_leaves_out_pred_pixels_on_gt_void():
    # GT:   person #1 [0,5) (5 px), sky #2 [5,7) (2 px), void [7,12)
    # pred: void [0,1), person #9 [1,12) (11 px)
    # #9 vs #1: inter [1,5) = 4; pred on GT void [7,12) = 5
    #   union = 11 + 5 - 4 - 5 = 7 -> IoU 4/7 = 0.571 -> TP
    #   (a plain union 11 + 5 - 4 = 12 would give 0.333 and no match; the 2 px on sky stay in)
    # sky #2: no sky prediction -> FN.
    # person: PQ = SQ = 4/7, RQ = 1; sky: PQ = SQ = RQ = 0
    # All (n=2): PQ = SQ = (4/7 + 0)/2 = 2/7, RQ = (1 + 0)/2 = 0.5
    gt = strip((1, 5), (2, 2), (0, 5))
    pred = strip((0, 1), (9, 11))
    r = evaluate(gt, [gseg(1, PERSON, gt), gseg(2, SKY, gt)], pred, [pseg(9, PERSON)])
    assert r.per_class[PERSON]["iou"] == pytest.approx(4 / 7, abs=1e-15)
    assert_row(r.all, 2 / 7, 2 / 7, 0.5, n=2)
    assert_row(r.things, 4 / 7, 4 / 7, 1.0, n=1)
    assert_row(r.stuff, 0, 0, 0, n=1)


@pytest.mark.parametrize("void_len, is_fp", [(6, False), (5, True)])
def test_unmatched_pred_mostly_on_void_is_not_fp(void_len, is_fp):
    # GT:   sky #1 [0, 20 - v), void [20 - v, 20)            (v = void_len)
    # pred: sky #4 [0,10), car #5 [10,20) (10 px, v of them on GT void)
    # sky: inter 10, union 10 + (20 - v) - 10 - 0 = 20 - v -> IoU 10/14 (v=6) or 10/15 (v=5): TP
    # car #5 unmatched: v=6 -> 6/10 = 0.6 > 0.5 -> ignored (car not counted, All n = 1)
    #                   v=5 -> 5/10 = 0.5, not > 0.5 -> FP (car counted with PQ 0, All n = 2)
    gt = strip((1, 20 - void_len), (0, void_len))
    pred = strip((4, 10), (5, 10))
    r = evaluate(gt, [gseg(1, SKY, gt)], pred, [pseg(4, SKY), pseg(5, CAR)])
    assert r.per_class[SKY]["tp"] == 1
    assert r.per_class[SKY]["iou"] == pytest.approx(10 / (20 - void_len), abs=1e-15)
    assert r.per_class[CAR]["fp"] == (1 if is_fp else 0)
    assert r.all["n"] == (2 if is_fp else 1)


def test_pred_on_crowd_of_same_category_is_not_fp():
    # GT:   person crowd #1 [0,10), person #2 [10,14)
    # pred: person #5 [0,8) (all on the crowd), void [8,10), person #6 [10,14)
    # #5: crowd is never matched; (0 void + 8 crowd px) / 8 = 1 > 0.5 -> not FP.
    # #6 vs #2: IoU 1 -> TP. The crowd is not an FN.
    # person: tp 1, fp 0, fn 0 -> PQ = SQ = RQ = 1
    gt = strip((1, 10), (2, 4))
    pred = strip((5, 8), (0, 2), (6, 4))
    r = evaluate(gt, [gseg(1, PERSON, gt, iscrowd=1), gseg(2, PERSON, gt)],
                 pred, [pseg(5, PERSON), pseg(6, PERSON)])
    assert (r.per_class[PERSON]["tp"], r.per_class[PERSON]["fp"], r.per_class[PERSON]["fn"]) == (1, 0, 0)
    assert_row(r.all, 1, 1, 1, n=1)


def test_pred_on_crowd_of_other_category_is_fp():
    # As above but the crowd is a car crowd: #5 (person) gets no crowd credit:
    # 0 / 8 <= 0.5 -> FP. person: tp 1 (IoU 1), fp 1 -> PQ = 1 / (1 + 0.5) = 2/3, SQ = 1,
    # RQ = 2/3. car: only a crowd -> no TP/FP/FN -> not counted (n = 1).
    gt = strip((1, 10), (2, 4))
    pred = strip((5, 8), (0, 2), (6, 4))
    r = evaluate(gt, [gseg(1, CAR, gt, iscrowd=1), gseg(2, PERSON, gt)],
                 pred, [pseg(5, PERSON), pseg(6, PERSON)])
    assert r.per_class[PERSON]["fp"] == 1
    assert r.per_class[CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
    assert_row(r.all, 2 / 3, 1, 2 / 3, n=1)


@pytest.mark.parametrize("crowd_order, pred_fp", [((1, 2), 1), ((2, 1), 0)])
def test_two_crowds_of_one_category_only_the_last_listed_counts(crowd_order, pred_fp):
    # GT:   person crowd #1 [0,6), person crowd #2 [6,8), person #3 [8,12)
    # pred: person #5 [0,6) (all on crowd #1), void [6,8), person #6 [8,12) (TP, IoU 1)
    # Only the LAST crowd of a category in segments_info order is used for the FP rule:
    #   order (#1, #2): crowd = #2 -> #5 has (0 + 0)/6 on void+crowd -> FP
    #     person: tp 1, fp 1 -> PQ = 1 / 1.5 = 2/3, SQ = 1, RQ = 2/3
    #   order (#2, #1): crowd = #1 -> (0 + 6)/6 = 1 > 0.5 -> not FP -> PQ = SQ = RQ = 1
    gt = strip((1, 6), (2, 2), (3, 4))
    pred = strip((5, 6), (0, 2), (6, 4))
    crowds = {1: gseg(1, PERSON, gt, iscrowd=1), 2: gseg(2, PERSON, gt, iscrowd=1)}
    gt_segs = [crowds[crowd_order[0]], crowds[crowd_order[1]], gseg(3, PERSON, gt)]
    r = evaluate(gt, gt_segs, pred, [pseg(5, PERSON), pseg(6, PERSON)])
    assert r.per_class[PERSON]["fp"] == pred_fp
    expected = 2 / 3 if pred_fp else 1.0
    assert_row(r.all, expected, 1.0, expected, n=1)


def test_pred_straddling_two_crowds_counts_only_the_last():
    # GT: person crowd #1 [0,3), person crowd #2 [3,5); pred person #5 [0,5).
    # Last crowd = #2: (0 + 2)/5 = 0.4 <= 0.5 -> FP, although all 5 px lie on person crowds.
    gt = strip((1, 3), (2, 2))
    pred = strip((5, 5))
    r = evaluate(gt, [gseg(1, PERSON, gt, iscrowd=1), gseg(2, PERSON, gt, iscrowd=1)], pred, [pseg(5, PERSON)])
    assert r.per_class[PERSON]["fp"] == 1
    assert_row(r.all, 0, 0, 0, n=1)


def test_things_and_stuff_split():
    # GT:   person #1 [0,10), sky #2 [10,20), grass #3 [20,30)
    # pred: person #7 [0,10), sky #8 [10,16), grass #9 [16,30)
    # person: IoU 10/10 = 1 -> PQ = SQ = RQ = 1
    # sky:    inter 6, union 6 + 10 - 6 = 10 -> IoU 0.6 -> PQ = SQ = 0.6, RQ = 1
    # grass:  inter 10, union 14 + 10 - 10 = 14 -> IoU 10/14 = 5/7 -> PQ = SQ = 5/7, RQ = 1
    # car: nothing -> not counted.
    # Things (n=1): 1, 1, 1.  Stuff (n=2): PQ = SQ = (0.6 + 5/7)/2, RQ = 1.
    # All (n=3): PQ = SQ = (1 + 0.6 + 5/7)/3, RQ = 1.
    gt = strip((1, 10), (2, 10), (3, 10))
    pred = strip((7, 10), (8, 6), (9, 14))
    r = evaluate(gt, [gseg(1, PERSON, gt), gseg(2, SKY, gt), gseg(3, GRASS, gt)],
                 pred, [pseg(7, PERSON), pseg(8, SKY), pseg(9, GRASS)])
    assert_row(r.things, 1, 1, 1, n=1)
    assert_row(r.stuff, (0.6 + 5 / 7) / 2, (0.6 + 5 / 7) / 2, 1, n=2)
    assert_row(r.all, (1 + 0.6 + 5 / 7) / 3, (1 + 0.6 + 5 / 7) / 3, 1, n=3)


def test_wrong_category_is_fp_and_fn():
    # GT person #1 [0,10); pred car #2 [0,10): categories differ -> no match.
    # person: FN 1 -> PQ 0; car: FP 1 -> PQ 0. All: n = 2, PQ = 0.
    gt = strip((1, 10))
    pred = strip((2, 10))
    r = evaluate(gt, [gseg(1, PERSON, gt)], pred, [pseg(2, CAR)])
    assert (r.per_class[PERSON]["fn"], r.per_class[CAR]["fp"]) == (1, 1)
    assert_row(r.all, 0, 0, 0, n=2)


def test_gt_area_comes_from_the_json_pred_area_from_the_png():
    # Reference quirk: the GT union term uses the GT JSON "area"; the predicted areas are
    # recounted from the PNG (a wrong pred "area" in the JSON changes nothing).
    # GT person #1 [0,10); pred person #5 [0,6).
    #   JSON area 10: union 6 + 10 - 6 = 10 -> IoU 0.6 -> TP
    #   JSON area 14: union 6 + 14 - 6 = 14 -> IoU 6/14 = 0.43 -> no match (FN + FP)
    gt = strip((1, 10))
    pred = strip((5, 6), (0, 4))
    wrong_pred_area = [{"id": 5, "category_id": PERSON, "area": 1000}]
    r = evaluate(gt, [gseg(1, PERSON, gt, area=10)], pred, wrong_pred_area)
    assert r.per_class[PERSON]["tp"] == 1
    r = evaluate(gt, [gseg(1, PERSON, gt, area=14)], pred, wrong_pred_area)
    assert (r.per_class[PERSON]["tp"], r.per_class[PERSON]["fp"], r.per_class[PERSON]["fn"]) == (0, 1, 1)
    # Without an "area" (in-memory use) the PNG count is used: IoU 0.6 -> TP.
    r = evaluate(gt, [{"id": 1, "category_id": PERSON, "iscrowd": 0}], pred, [pseg(5, PERSON)])
    assert r.per_class[PERSON]["tp"] == 1


def test_large_ids_do_not_overflow():
    # Largest legal ids (256**3 - 1) on both sides: the pair key is < 2**48 in uint64.
    big = OFFSET - 1
    gt = strip((big, 3), (0, 1))
    pred = strip((big, 4))
    # IoU: inter 3, union 4 + 3 - 3 - 1 (pred px on void) = 3 -> 1.0
    r = evaluate(gt, [gseg(big, PERSON, gt)], pred, [pseg(big, PERSON)])
    assert_row(r.all, 1, 1, 1, n=1)
    with pytest.raises(ValueError, match="256"):
        evaluate(strip((OFFSET, 1)), [gseg(OFFSET, PERSON, strip((OFFSET, 1)))], strip((1, 1)), [pseg(1, PERSON)])


def test_categories_as_table_and_stats_accumulate():
    table = CategoryTable([Category(c["id"], c["name"], bool(c["isthing"])) for c in CATS])
    gt = strip((1, 10))
    # image A: TP with IoU 1; image B: GT person not predicted -> FN.
    a = pq_stat_single(gt, [gseg(1, PERSON, gt)], strip((4, 10)), [pseg(4, PERSON)], table)
    b = pq_stat_single(gt, [gseg(1, PERSON, gt)], strip((0, 10)), [], table)
    total = PQStat()
    total += a
    total += b
    # person over both images: iou 1, tp 1, fn 1 -> PQ = 1 / 1.5 = 2/3 (not the mean of the
    # per-image PQs, (1 + 0)/2 = 0.5), SQ = 1, RQ = 2/3
    assert_row(total.result(table).all, 2 / 3, 1, 2 / 3, n=1)
    assert_row((a + b).result(CATS).all, 2 / 3, 1, 2 / 3, n=1)
    assert list(normalize_categories(table)) == [PERSON, CAR, SKY, GRASS]


# --- errors -------------------------------------------------------------------------------

def test_pred_segment_in_json_missing_from_png():
    gt = strip((1, 4))
    with pytest.raises(ValueError, match=r"image 42.*\[8\]"):
        evaluate(gt, [gseg(1, PERSON, gt)], strip((5, 4)), [pseg(5, PERSON), pseg(8, CAR)])


def test_pred_png_id_missing_from_json():
    gt = strip((1, 4))
    with pytest.raises(ValueError, match=r"image 42: segment id 6 "):
        evaluate(gt, [gseg(1, PERSON, gt)], strip((5, 2), (6, 2)), [pseg(5, PERSON)])


def test_pred_unknown_category():
    gt = strip((1, 4))
    with pytest.raises(ValueError, match=r"image 42.*id 5.*unknown category_id 99"):
        evaluate(gt, [gseg(1, PERSON, gt)], strip((5, 4)), [pseg(5, 99)])


def test_shape_mismatch():
    with pytest.raises(ValueError, match="image 42"):
        evaluate(strip((1, 4)), [], strip((0, 5)), [])


def test_gt_inconsistencies_are_tolerated_like_the_reference():
    # GT id 2 in the PNG but not in the JSON: its pixels are neither void nor a segment; a GT
    # JSON segment #3 absent from the PNG is an unmatched GT -> FN.
    # pred #5 [0,4) on GT #1 [0,2) + GT id 2 [2,4): union 4 + 2 - 2 = 4 -> IoU 0.5 -> no match.
    # person: FN #1, FN #3, FP #5 (0/4 on void) -> tp 0, fp 1, fn 2.
    gt = strip((1, 2), (2, 2))
    r = evaluate(gt, [gseg(1, PERSON, gt), gseg(3, PERSON, gt, area=7)], strip((5, 4)), [pseg(5, PERSON)])
    assert (r.per_class[PERSON]["tp"], r.per_class[PERSON]["fp"], r.per_class[PERSON]["fn"]) == (0, 1, 2)


# --- files ----------------------------------------------------------------------------------

def _write_dataset(root, images):
    """images: list of (image_id, gt_ids, gt_segs, pred_ids, pred_segs)."""
    gt_json = {"categories": CATS, "annotations": [], "images": []}
    pred_json = {"annotations": []}
    for image_id, gt, gt_segs, pred, pred_segs in images:
        name = f"{image_id:06d}.png"
        write_panoptic_png(root / "gt" / name, gt)
        write_panoptic_png(root / "pred" / name, pred)
        gt_json["images"].append({"id": image_id, "file_name": name.replace(".png", ".jpg"),
                                  "height": gt.shape[0], "width": gt.shape[1]})
        gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": gt_segs})
        pred_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": pred_segs})
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))


def test_pq_compute_on_files(tmp_path, capsys):
    # image 1: as test_one_tp_iou_0_6_and_one_fn -> person TP (IoU 0.6) + person FN.
    # image 2 (2x10): GT all sky (20 px, id using all three RGB bytes);
    #   pred row 0 + row 1 [0,6) sky #9 (16 px), row 1 [6,10) person #4 (4 px).
    #   sky: inter 16, union 16 + 20 - 16 = 20 -> IoU 0.8 -> TP; person #4: 0/4 on void -> FP.
    # person over both: iou 0.6, tp 1, fp 1, fn 1 -> PQ = 0.6 / (1 + 0.5 + 0.5) = 0.3,
    #   SQ = 0.6, RQ = 1/2 = 0.5.  sky: PQ = SQ = 0.8, RQ = 1.
    # All (n=2): PQ = (0.3 + 0.8)/2 = 0.55, SQ = (0.6 + 0.8)/2 = 0.7, RQ = (0.5 + 1)/2 = 0.75
    gt1 = strip((1, 10), (2, 4))
    pred1 = strip((5, 6), (0, 8))
    sky_id = 3 * 65536 + 2 * 256 + 1
    gt2 = np.full((2, 10), sky_id)
    pred2 = np.concatenate([strip((9, 10)), strip((9, 6), (4, 4))])
    _write_dataset(tmp_path, [
        (1, gt1, [gseg(1, PERSON, gt1), gseg(2, PERSON, gt1)], pred1, [pseg(5, PERSON)]),
        (2, gt2, [gseg(sky_id, SKY, gt2)], pred2, [pseg(9, SKY), pseg(4, PERSON)]),
    ])
    r = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred",
                   progress=True)
    assert_row(r["All"], 0.55, 0.7, 0.75, n=2)
    assert_row(r["Things"], 0.3, 0.6, 0.5, n=1)
    assert_row(r["Stuff"], 0.8, 0.8, 1.0, n=1)
    assert "2/2 images" in capsys.readouterr().err
    # threads give the same numbers; folders default to the JSON path without ".json"
    r2 = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=2)
    assert r2.to_dict() == r.to_dict()
    assert r.to_dict()["per_class"][str(SKY)]["name"] == "sky"


def test_pq_compute_missing_prediction_and_png_errors(tmp_path):
    gt = strip((1, 4))
    _write_dataset(tmp_path, [(7, gt, [gseg(1, PERSON, gt)], strip((5, 4)), [pseg(5, PERSON)])])
    pred_json = json.loads((tmp_path / "pred.json").read_text())
    pred_json["annotations"][0]["image_id"] = 8
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    with pytest.raises(ValueError, match="no prediction for the image with id 7"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json")
    # an id that is in the PNG but not in the prediction JSON names the image
    pred_json["annotations"][0]["image_id"] = 7
    pred_json["annotations"][0]["segments_info"] = []
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    with pytest.raises(ValueError, match="image 7: segment id 5"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json")
    with pytest.raises(FileNotFoundError):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", pred_folder=tmp_path / "nope")


def test_agreement_with_reference_hand_computed():
    from pfpn.training.evaluation.pq import agreement_with_reference

    # image 1: reference person [0, 6) + sky [6, 10); the other output grows the person to [0, 8):
    # person IoU 6/8 (TP), sky IoU 2/4 = 0.5 is not a match (FN + FP). Person PQ 0.75, sky 0.
    # image 2: identical sky. Sky then has TP 1 (IoU 1), FP 1, FN 1 -> PQ 1 / 2 = 0.5.
    # PQ = (0.75 + 0.5) / 2 = 62.5; pixels with the same id: 8 of 10 and 4 of 4 -> 12 / 14.
    ref1 = strip((1, 6), (2, 4))
    out1 = strip((1, 8), (2, 2))
    ref2 = out2 = strip((3, 4))
    reference = [(ref1, [{"id": 1, "category_id": PERSON, "area": 6}, {"id": 2, "category_id": SKY, "area": 4}]),
                 (ref2, [{"id": 3, "category_id": SKY, "area": 4}])]
    others = [(out1, [{"id": 1, "category_id": PERSON, "area": 8}, {"id": 2, "category_id": SKY, "area": 2}]),
              (out2, [{"id": 3, "category_id": SKY, "area": 4}])]
    got = agreement_with_reference(reference, others, CATS)
    assert got["pq"] == pytest.approx(62.5, abs=1e-9)
    assert got["pixels"] == pytest.approx(12 / 14)
    same = agreement_with_reference(reference, reference, CATS)
    assert same == {"pq": 100.0, "pixels": 1.0}
    with pytest.raises(ValueError, match="2 reference images but 1"):
        agreement_with_reference(reference, others[:1], CATS)
