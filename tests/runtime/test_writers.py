"""COCO panoptic writer (read back by the project's PQ evaluation), overlay pictures, and the
torch-free imports of runtime/fusion.py and runtime/writers.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpn.runtime.files import atomic_write_json
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.panoptic_io import read_panoptic_png, write_panoptic_png
from pfpn.runtime.result import PanopticResult, panoptic_result_from_label_map
from pfpn.runtime.writers import overlay, save_overlay, segment_colors, write_coco_panoptic
from pfpn.training.evaluation.pq import pq_compute

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
              {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
              {"id": 100, "name": "road", "isthing": 0, "supercategory": "ground"},
              {"id": 101, "name": "sky", "isthing": 0, "supercategory": "sky"}]
CATS = CategoryTable(CATEGORIES)  # labels: person 0, car 1, road 2, sky 3; VOID 4


def label_maps() -> list[np.ndarray]:
    """Two model-level maps (label + k * 1000 for instances, stuff labels, VOID 4)."""
    a = np.full((60, 80), 3, dtype=np.int64)  # sky
    a[35:] = 2  # road
    a[20:50, 10:30] = 0 + 1000  # person, instance 1
    a[30:55, 40:75] = 1 + 2000  # car, instance 2
    a[25:35, 45:55] = 0 + 3000  # person, instance 3
    a[:5, :5] = 4  # VOID
    b = np.full((50, 70), 2, dtype=np.int64)
    b[:10] = 3
    b[15:40, 20:50] = 1 + 1000
    return [a, b]


def results() -> list[PanopticResult]:
    return [panoptic_result_from_label_map(m, CATS, instance_scores=[0.9, 0.8, 0.7][: int(m.max() // 1000)])
            for m in label_maps()]


def write_ground_truth(root: Path, preds: list[PanopticResult]) -> tuple[Path, Path]:
    folder = root / "gt"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i, res in enumerate(preds):
        write_panoptic_png(folder / f"{i}.png", res.id_map)
        segs = [{"id": s["id"], "category_id": s["category_id"], "area": s["area"], "bbox": s["bbox"], "iscrowd": 0}
                for s in res.segments_info]
        annotations.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
        images.append({"id": i, "file_name": f"{i}.jpg", "height": res.id_map.shape[0], "width": res.id_map.shape[1]})
    path = root / "gt.json"
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": CATEGORIES})
    return path, folder


def infos(n: int) -> list[dict]:
    return [{"image_id": i, "file_name": f"{i}.jpg", "png_name": f"{i}.png"} for i in range(n)]


def test_coco_files_score_pq_one_against_identical_ground_truth(tmp_path):
    preds = results()
    gt_json, gt_folder = write_ground_truth(tmp_path, preds)
    json_path, folder = write_coco_panoptic(list(zip(infos(2), preds)), CATEGORIES, tmp_path / "out")
    assert json_path == tmp_path / "out" / "panoptic_pred.json" and folder == tmp_path / "out" / "panoptic_pred"
    data = json.loads(json_path.read_text())
    assert data["categories"] == CATEGORIES
    assert [im["id"] for im in data["images"]] == [0, 1] and data["images"][0]["height"] == 60
    assert [a["file_name"] for a in data["annotations"]] == ["0.png", "1.png"]
    seg = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    assert seg[1000]["score"] == pytest.approx(0.9) and "score" not in seg[3]  # things keep their score
    assert np.array_equal(read_panoptic_png(folder / "0.png"), preds[0].id_map)
    pq = pq_compute(gt_json, json_path, gt_folder, folder)
    assert pq.all["pq"] == pytest.approx(1.0) and pq.things["n"] == 2 and pq.stuff["n"] == 2


def test_a_different_prediction_scores_below_one(tmp_path):
    preds = results()
    gt_json, gt_folder = write_ground_truth(tmp_path, preds)
    worse = label_maps()
    worse[0][20:50, 10:30] = 3  # the person is missed (sky instead)
    wrong = [panoptic_result_from_label_map(worse[0], CATS, instance_scores=[0.9, 0.8, 0.7]), preds[1]]
    json_path, folder = write_coco_panoptic(list(zip(infos(2), wrong)), CATS, tmp_path / "out", name="p")
    pq = pq_compute(gt_json, json_path, gt_folder, folder)
    assert pq.things["pq"] < 0.9 and pq.all["pq"] < 1.0


def test_evaluation_uses_the_runtime_writer(tmp_path):
    from pfpn.training.evaluation.evaluate_dataset import write_predictions

    json_path, folder = write_predictions(list(zip(infos(2), results())), CATEGORIES, tmp_path)
    data = json.loads(json_path.read_text())
    assert any("score" in s for a in data["annotations"] for s in a["segments_info"])
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png"]


def test_overlay_tints_segments_and_leaves_void(tmp_path):
    res = results()[0]
    image = np.full((60, 80, 3), 120, dtype=np.uint8)
    image[:, :40, 0] = 30
    out = overlay(image, res, CATS, draw_labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    void = res.id_map == 0
    assert np.array_equal(out[void], image[void])  # VOID untouched
    assert np.all(np.any(out[~void] != image[~void], axis=1))  # every segment pixel tinted
    labelled = overlay(image, res, CATS)
    assert np.count_nonzero(np.any(labelled != out, axis=2)) > 50  # class names drawn
    path = save_overlay(tmp_path / "sub" / "o.png", image, res, CATS)
    assert np.array_equal(cv2.imread(str(path)), labelled)


def test_overlay_outlines_segment_borders():
    res = results()[1]
    image = np.full((50, 70, 3), 128, dtype=np.uint8)
    out = overlay(image, res, CATS, alpha=0.5, draw_labels=False).astype(int)
    colors = segment_colors(res)
    car, road = np.array(colors[1001]), np.array(colors[2])
    assert np.allclose(out[27, 35], 0.5 * 128 + 0.5 * car, atol=1)  # inside the car: tinted
    # the 1-px line runs on the upper / left side of a border, in that segment's colour, darker
    assert np.allclose(out[14, 35], 0.55 * road, atol=1)  # road above the car's top row
    assert np.allclose(out[27, 19], 0.55 * road, atol=1)  # left of the car
    assert np.allclose(out[39, 35], 0.55 * car, atol=1)  # the car's last row, above road
    assert np.allclose(out[16, 35], 0.5 * 128 + 0.5 * car, atol=1)


def test_colors_are_deterministic_and_distinct_per_instance():
    res = results()[0]
    colors = segment_colors(res)
    assert colors == segment_colors(results()[0])
    thing_colors = [colors[s["id"]] for s in res.segments_info if s["isthing"]]
    assert len(set(thing_colors)) == len(thing_colors) == 3  # two persons differ too
    # stuff: one colour per category, whatever the image
    other = results()[1]
    assert segment_colors(other)[2] == colors[2] and segment_colors(other)[3] == colors[3]
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    assert np.array_equal(overlay(image, res, CATS), overlay(image, res, CATS))


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        overlay(np.zeros((10, 10, 3), np.uint8), results()[0], CATS)


def test_postprocess_and_writers_import_without_torch(tmp_path):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
sys.modules["torchvision"] = None
import numpy as np
import pfpn.runtime.fusion as pp, pfpn.runtime.writers as wr
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.result import to_panoptic_result
cats = CategoryTable([{{"id": 1, "name": "a", "isthing": 1}}, {{"id": 2, "name": "s", "isthing": 0}}])
logits = np.zeros((2, 8, 8), np.float32); logits[0] = 1.0
out = pp.postprocess_single_image(np.array([[4, 4, 20, 20]], np.float32), np.array([0.9], np.float32),
                                  np.array([0]), np.ones((1, 28, 28), np.float32), logits, resized_size=(32, 32),
                                  original_size=(32, 32), scale_factor=(1.0, 1.0), num_thing_classes=1,
                                  fusion=FusionConfig(stuff_area_limit=1))
res = to_panoptic_result(out, cats)
wr.write_coco_panoptic([({{"image_id": 1, "file_name": "x.jpg", "png_name": "x.png"}}, res)], cats, {str(tmp_path)!r})
wr.overlay(np.zeros((32, 32, 3), np.uint8), res, cats)
assert not [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None]
print(sorted(s["id"] for s in res.segments_info))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[1, 1000]"
