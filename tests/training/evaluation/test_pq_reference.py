"""Cross-check of training.evaluation.pq against the reference COCO panoptic evaluation.

The reference is panopticapi's ``pq_compute``, from the PyPI package ``panopticapi-lite``,
which pins numpy < 2. It therefore runs in an isolated virtual environment, in a subprocess;
``make test`` prepares that environment before the suite starts (``tests/prepared_envs.py
panopticapi``); without it these tests skip, naming the command.

The data are random but realistic COCO panoptic files written to tmp_path: stuff regions,
overlapping thing instances, crowd regions (several per category in some images), void,
shifted / grown / shrunk / relabelled / dropped / spurious predictions, plus constructs that
sit on the rules' edges (IoU exactly 0.5, predictions straddling two crowds of a category,
predictions exactly half on void).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import prepared_envs

from pfpn.runtime.panoptic_io import write_panoptic_png
from pfpn.training.evaluation.pq import OFFSET, pq_compute

TOL = 1e-9
THING_IDS = [1, 2, 3, 5, 7, 9]
STUFF_IDS = [100, 101, 120, 130]
CATEGORIES = ([{"id": c, "name": f"thing{c}", "isthing": 1} for c in THING_IDS]
              + [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF_IDS])
# interleave things and stuff in the JSON order, as COCO does not (order must not matter)
CATEGORIES = CATEGORIES[:3] + CATEGORIES[6:8] + CATEGORIES[3:6] + CATEGORIES[8:]

_REFERENCE_SCRIPT = r"""
import contextlib, json, sys
from panopticapi.evaluation import pq_compute
gt_json, pred_json, gt_folder, pred_folder, out = sys.argv[1:]
with contextlib.redirect_stdout(sys.stderr):  # panopticapi prints progress and its table
    res = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
with open(out, "w") as f:
    json.dump(res, f, default=float)
"""


# --- reference environment (prepared by make test: tests/prepared_envs.py) ------------------

@pytest.fixture(scope="module")
def reference_python() -> Path:
    try:
        return prepared_envs.panopticapi_python()
    except prepared_envs.EnvironmentNotPrepared as e:
        pytest.skip(str(e))


def _reference_pq(python: Path, root: Path) -> dict:
    out = root / "reference.json"
    run = subprocess.run([str(python), "-c", _REFERENCE_SCRIPT, str(root / "gt.json"), str(root / "pred.json"),
                          str(root / "gt"), str(root / "pred"), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"panopticapi failed:\n{run.stderr[-3000:]}"
    return json.loads(out.read_text())


# --- random data ---------------------------------------------------------------------------

class _Ids:
    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, {0}

    def __call__(self) -> int:
        while True:  # mostly large ids that use all three RGB bytes, some small ones
            i = int(self.rng.integers(1, 256 if self.rng.random() < 0.2 else OFFSET))
            if i not in self.used:
                self.used.add(i)
                return i


def _blob(rng, h, w, *, scale=0.25) -> np.ndarray:
    """A random filled ellipse or rectangle mask."""
    m = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    ay = int(rng.integers(2, max(3, int(h * scale))))
    ax = int(rng.integers(2, max(3, int(w * scale))))
    if rng.random() < 0.6:
        cv2.ellipse(m, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        m[max(0, cy - ay):cy + ay, max(0, cx - ax):cx + ax] = 1
    return m.astype(bool)


def _transform(rng, mask: np.ndarray) -> np.ndarray:
    """Shift and/or grow / shrink a mask: IoUs spread around the 0.5 threshold."""
    out = mask
    if rng.random() < 0.7:
        dy, dx = (int(v) for v in rng.integers(-4, 5, size=2))
        out = np.roll(out, (dy, dx), axis=(0, 1))
    r = rng.random()
    k = np.ones((int(rng.integers(2, 5)),) * 2, np.uint8)
    if r < 0.25:
        out = cv2.dilate(out.astype(np.uint8), k).astype(bool)
    elif r < 0.5:
        out = cv2.erode(out.astype(np.uint8), k).astype(bool)
    return out


def _finish(ids: np.ndarray, segs: list[dict]) -> list[dict]:
    """Keep the segments still present, with their PNG areas and bboxes."""
    out = []
    for s in segs:
        ys, xs = np.nonzero(ids == s["id"])
        if len(ys):
            out.append({**s, "area": int(len(ys)),
                        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                 int(ys.max() - ys.min() + 1)]})
    return out


def _make_image(rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray, list]:
    h, w = int(rng.integers(40, 90)), int(rng.integers(50, 110))
    new_id = _Ids(rng)
    # ground truth: blocky stuff regions (one segment per stuff category, COCO style) ...
    coarse = rng.integers(0, len(STUFF_IDS) + 1, size=tuple(int(v) for v in rng.integers(2, 6, size=2)))
    sem = cv2.resize(coarse.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    gt = np.zeros((h, w), np.int64)
    gt_segs: list[dict] = []
    for k, cat in enumerate(STUFF_IDS):  # index len(STUFF_IDS) stays void
        if (sem == k).any():
            gt_segs.append({"id": new_id(), "category_id": cat, "iscrowd": 0})
            gt[sem == k] = gt_segs[-1]["id"]
    # ... overlapping thing instances, some crowd ...
    for _ in range(int(rng.integers(1, 9))):
        seg = {"id": new_id(), "category_id": int(rng.choice(THING_IDS)), "iscrowd": int(rng.random() < 0.15)}
        gt[_blob(rng, h, w)] = seg["id"]
        gt_segs.append(seg)
    for _ in range(int(rng.integers(0, 4))):  # void blobs
        gt[_blob(rng, h, w, scale=0.12)] = 0
    # ... and edge constructs in the middle rows.
    y0 = h // 2 - 4
    if rng.random() < 0.5:  # two adjacent crowds of one category (listed in a random order)
        cat = int(rng.choice(THING_IDS))
        c1 = {"id": new_id(), "category_id": cat, "iscrowd": 1}
        c2 = {"id": new_id(), "category_id": cat, "iscrowd": 1}
        gt[y0:y0 + 8, 0:10] = c1["id"]
        gt[y0:y0 + 8, 10:20] = c2["id"]
        gt_segs += [c1, c2] if rng.random() < 0.5 else [c2, c1]
    edge = {"id": new_id(), "category_id": int(rng.choice(THING_IDS)), "iscrowd": 0}
    gt[y0:y0 + 8, w - 10:] = edge["id"]  # a 10x8 instance
    gt_segs.append(edge)
    gt_segs = _finish(gt, gt_segs)

    # prediction
    pred = np.zeros((h, w), np.int64)
    pred_segs: list[dict] = []
    all_cats = THING_IDS + STUFF_IDS
    for seg in rng.permutation(np.array(gt_segs, dtype=object)):
        if rng.random() < 0.1:
            continue  # missed
        mask = _transform(rng, gt == seg["id"])
        if seg["iscrowd"] and rng.random() < 0.6:  # crowd: predicted as a few instances
            mask &= _blob(rng, h, w, scale=0.5)
        cat = seg["category_id"] if rng.random() < 0.85 else int(rng.choice(all_cats))
        pred_segs.append({"id": new_id(), "category_id": cat, "iscrowd": 0})
        pred[mask] = pred_segs[-1]["id"]
    for _ in range(int(rng.integers(0, 4))):  # spurious predictions
        pred_segs.append({"id": new_id(), "category_id": int(rng.choice(all_cats)), "iscrowd": 0})
        pred[_blob(rng, h, w, scale=0.15)] = pred_segs[-1]["id"]
    for _ in range(int(rng.integers(0, 3))):  # unlabelled (void) prediction pixels
        pred[_blob(rng, h, w, scale=0.1)] = 0
    # edge constructs: a prediction straddling the crowds (or on them), and one inside the
    # 10x8 instance, 8 high and 4, 5 or 6 wide: IoU 32/80, exactly 40/80 = 0.5 (no match) or
    # 48/80; or with its lower half on void: exactly half of it on void (an FP).
    r = rng.random()
    pcat = int(rng.choice(THING_IDS))
    straddle = {"id": new_id(), "category_id": pcat, "iscrowd": 0}
    x0 = int(rng.integers(0, 12))
    pred[y0:y0 + 8, x0:x0 + int(rng.integers(4, 12))] = straddle["id"]
    pred_segs.append(straddle)
    ep = {"id": new_id(), "category_id": edge["category_id"] if r < 0.85 else pcat, "iscrowd": 0}
    width = int(rng.choice([4, 5, 5, 6]))
    pred[y0:y0 + 8, w - 10:] = 0
    pred[y0:y0 + 8, w - 10:w - 10 + width] = ep["id"]
    if rng.random() < 0.3:
        gt[y0 + 4:y0 + 8, w - 10:w - 10 + width] = 0
    pred_segs.append(ep)
    gt_segs = _finish(gt, gt_segs)
    pred_segs = _finish(pred, pred_segs)
    rng.shuffle(pred_segs)
    return gt, gt_segs, pred, pred_segs


def _write(root: Path, images: list, *, quirks: bool, rng: np.random.Generator) -> None:
    gt_json = {"images": [], "annotations": [], "categories": CATEGORIES}
    pred_json = {"annotations": []}
    for image_id, (gt, gt_segs, pred, pred_segs) in zip(rng.permutation(1000)[:len(images)].tolist(), images):
        name = f"{image_id:012d}.png"
        if quirks:
            # things panopticapi tolerates: GT JSON areas off by a few px (it uses them as
            # given), GT PNG ids missing from the JSON, GT JSON segments missing from the PNG,
            # wrong / missing predicted JSON areas (it recounts them)
            gt_segs = [dict(s) for s in gt_segs]
            for s in gt_segs:
                if s["area"] > 20 and rng.random() < 0.3:
                    s["area"] += int(rng.integers(-3, 4))
            if len(gt_segs) > 2 and rng.random() < 0.5:
                gt_segs.pop(int(rng.integers(0, len(gt_segs))))
            if rng.random() < 0.5:
                gt_segs.append({"id": OFFSET - 1 - image_id, "category_id": int(rng.choice(THING_IDS)),
                                "iscrowd": 0, "area": 50, "bbox": [0, 0, 5, 10]})
            pred_segs = [dict(s) for s in pred_segs]
            for s in pred_segs:
                if rng.random() < 0.3:
                    s["area"] = int(rng.integers(1, 1000))
                elif rng.random() < 0.2:
                    del s["area"]
        write_panoptic_png(root / "gt" / name, gt)
        write_panoptic_png(root / "pred" / name, pred)
        gt_json["images"].append({"id": image_id, "file_name": name.replace(".png", ".jpg"),
                                  "height": gt.shape[0], "width": gt.shape[1]})
        gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": gt_segs})
        pred_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": pred_segs})
    rng.shuffle(pred_json["annotations"])
    if quirks:  # a prediction for an image that is not in the ground truth is ignored
        pred_json["annotations"].append({"image_id": 5000, "file_name": "nope.png", "segments_info": []})
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))


def _max_abs_diff(ours: dict, ref: dict) -> float:
    worst = 0.0
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for k in ("pq", "sq", "rq"):
            worst = max(worst, abs(ours[group][k] - ref[group][k]))
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, entry in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            worst = max(worst, abs(ours["per_class"][cat][k] - entry[k]))
    return worst


@pytest.mark.parametrize("quirks", [False, True], ids=["consistent", "quirks"])
def test_pq_matches_panopticapi(tmp_path, reference_python, quirks):
    rng = np.random.default_rng(20240517 + quirks)
    images = [_make_image(rng) for _ in range(16)]
    _write(tmp_path, images, quirks=quirks, rng=rng)

    ours = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred")
    ref = _reference_pq(reference_python, tmp_path)
    worst = _max_abs_diff(ours.to_dict(), ref)
    print(f"\nmax |ours - panopticapi| ({'quirks' if quirks else 'consistent'}): {worst:.3g}")
    assert worst <= TOL

    # the data exercise every kind of count, in things and in stuff, with non-trivial values
    for isthing in (True, False):
        stats = [e for c, e in ours.per_class.items() if ours.categories[c]["isthing"] == isthing]
        assert all(sum(e[k] for e in stats) > 0 for k in ("tp", "fp", "fn")), (isthing, stats)
    assert sum(0 < e["pq"] < 1 for e in ours.per_class.values()) >= 6
    assert 0.1 < ours.all["pq"] < 0.9
