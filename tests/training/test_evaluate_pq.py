"""Smoke test of the training/evaluate_pq.py command line on a hand-built dataset."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pfpn.runtime.panoptic_io import write_panoptic_png

REPO = Path(__file__).resolve().parents[2]
CATS = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0},
        {"id": 3, "name": "car", "isthing": 1}]


def strip(*runs):
    return np.concatenate([np.full(n, i, dtype=np.int64) for i, n in runs])[None, :]


@pytest.fixture
def dataset(tmp_path):
    # Both images: GT person #1 [0,10), sky #2 [10,20).
    # image 1 pred: person #5 [0,10) (IoU 1, TP), sky #6 [10,16) + void (IoU 6/10 = 0.6, TP)
    # image 2 pred: sky #7 [0,20): vs sky #2 inter 10, union 20 + 10 - 10 = 20 -> 0.5, no match
    #   -> person FN, sky FN, sky FP.
    # person: iou 1, tp 1, fn 1 -> PQ = 1/1.5 = 66.67, SQ 100, RQ 66.67
    # sky: iou 0.6, tp 1, fp 1, fn 1 -> PQ = 0.6/2 = 30, SQ 60, RQ 50
    # All (N 2): PQ = 48.33, SQ = 80.00, RQ = 58.33; car not counted.
    gt = strip((1, 10), (2, 10))
    gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 10, "bbox": [0, 0, 10, 1]},
               {"id": 2, "category_id": 2, "iscrowd": 0, "area": 10, "bbox": [10, 0, 10, 1]}]
    preds = {1: (strip((5, 10), (6, 6), (0, 4)), [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}]),
             2: (strip((7, 20)), [{"id": 7, "category_id": 2}])}
    gt_json = {"categories": CATS, "images": [], "annotations": []}
    pred_json = {"annotations": []}
    for image_id, (pred, pred_segs) in preds.items():
        name = f"{image_id:012d}.png"
        write_panoptic_png(tmp_path / "panoptic_val" / name, gt)
        write_panoptic_png(tmp_path / "pred" / name, pred)
        gt_json["images"].append({"id": image_id, "file_name": name, "height": 1, "width": 20})
        gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": gt_segs})
        pred_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": pred_segs})
    (tmp_path / "panoptic_val.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    return tmp_path


def run(*args, as_module=True):
    cmd = [sys.executable, "-m", "pfpn.training.evaluate_pq"] if as_module else [sys.executable, str(REPO / "training" / "evaluate_pq.py")]
    return subprocess.run(cmd + [str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_table_and_json_output(dataset):
    out = dataset / "results.json"
    # --gt-folder left out: defaults to the JSON path without ".json"
    r = run("--gt-json", dataset / "panoptic_val.json", "--pred-json", dataset / "pred.json",
            "--pred-folder", dataset / "pred", "--out", out, "--per-category")
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in r.stdout.splitlines() if "|" in line}
    assert rows["All"] == ["48.33", "80.00", "58.33", "2"]
    assert rows["Things"] == ["66.67", "100.00", "66.67", "1"]
    assert rows["Stuff"] == ["30.00", "60.00", "50.00", "1"]
    person = next(line for line in r.stdout.splitlines() if line.startswith("person"))
    assert person.split()[-6:] == ["66.67", "100.00", "66.67", "1", "0", "1"]
    assert "(not counted)" in next(line for line in r.stdout.splitlines() if line.startswith("car"))

    res = json.loads(out.read_text())
    assert res["All"]["pq"] == pytest.approx((2 / 3 + 0.3) / 2, abs=1e-12)  # fractions, not x100
    assert res["All"]["n"] == 2
    assert res["per_class"]["2"]["sq"] == pytest.approx(0.6, abs=1e-12)
    assert res["per_class"]["3"]["pq"] == 0.0


def test_runs_as_a_file_path_and_has_help(dataset):
    r = run("--gt-json", dataset / "panoptic_val.json", "--pred-json", dataset / "pred.json",
            "--gt-folder", dataset / "panoptic_val", "--pred-folder", dataset / "pred", as_module=False)
    assert r.returncode == 0, r.stderr
    assert "48.33" in r.stdout
    h = run("--help")
    assert h.returncode == 0
    for opt in ("--gt-json", "--gt-folder", "--pred-json", "--pred-folder", "--out", "--per-category", "--workers"):
        assert opt in h.stdout


def test_error_exit(dataset):
    pred = json.loads((dataset / "pred.json").read_text())
    pred["annotations"] = pred["annotations"][:1]
    (dataset / "pred.json").write_text(json.dumps(pred))
    r = run("--gt-json", dataset / "panoptic_val.json", "--pred-json", dataset / "pred.json",
            "--pred-folder", dataset / "pred")
    assert r.returncode == 1
    assert "no prediction for the image with id 2" in r.stderr
