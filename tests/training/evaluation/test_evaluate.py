"""evaluate(predictor, dataset): a perfect predictor scores PQ 1, a constant one scores what
the hand count says; predictions are valid COCO panoptic files; box / mask AP of the detections
on hand-computed cases."""
import json

import numpy as np
import pytest

from pfpn.runtime.panoptic_io import read_panoptic_png
from pfpn.runtime.result import PanopticResult
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.evaluation.evaluate_dataset import evaluate


class OraclePredictor:
    """Returns the ground truth itself (non-crowd segments) as the prediction."""

    def __init__(self, dataset):
        self.gt = {str(dataset.image_info(i)["image_path"]): dataset.image_info(i) for i in range(len(dataset))}
        self.anns = {a["image_id"]: a for a in json.loads(dataset.json_path.read_text())["annotations"]}

    def predict(self, image):
        info = self.gt[str(image)]
        ids = read_panoptic_png(info["png_path"])
        segs = [s for s in self.anns[info["image_id"]]["segments_info"] if not s["iscrowd"]]
        keep = np.isin(ids, [s["id"] for s in segs])
        return PanopticResult(np.where(keep, ids, 0), [dict(s) for s in segs])


def test_oracle_scores_one(synthetic_root, tmp_path):
    ds = CocoPanopticDataset(synthetic_root, "val")
    result = evaluate(OraclePredictor(ds), ds, tmp_path, progress=False)
    assert result.num_images == len(ds)
    assert result.pq.all["pq"] == pytest.approx(1.0) and result.pq.all["n"] > 0
    pred = json.loads(result.pred_json.read_text())
    assert len(pred["annotations"]) == len(ds) and (tmp_path / "pq.json").is_file()


class StuffOnlyPredictor:
    """Predicts one segment of the first stuff category over the whole image."""

    def __init__(self, cat_id):
        self.cat_id = cat_id

    def predict(self, image):
        import cv2

        h, w = cv2.imread(str(image)).shape[:2]
        return PanopticResult(np.ones((h, w), np.int64), [{"id": 1, "category_id": self.cat_id, "area": h * w,
                                                             "bbox": [0, 0, w, h]}])


def test_subset_and_constant_prediction(synthetic_root, tmp_path):
    ds = CocoPanopticDataset(synthetic_root, "val")
    result = evaluate(StuffOnlyPredictor(ds.categories.stuff[0].id), ds, tmp_path, max_images=2, progress=False)
    assert result.num_images == 2
    gt = json.loads(result.gt_json.read_text())
    assert len(gt["annotations"]) == 2
    # every thing GT is missed: things have TP = 0 wherever they occur
    assert result.pq.things["pq"] == 0.0
    assert result.pq.all["pq"] < 0.5


class RectangleDataset:
    """One 30x40 image whose things are rectangles: a person, a car and a crowd of cars, on sky."""

    def __init__(self, root):
        import cv2

        from pfpn.runtime.panoptic_io import write_panoptic_png

        self.png_dir = root / "png"
        ids = np.full((30, 40), 9, np.int64)  # sky
        self.boxes = {1: (2, 3, 12, 15), 2: (20, 5, 36, 14)}  # id -> x1, y1, x2, y2 (things, non-crowd)
        for k, (x1, y1, x2, y2) in self.boxes.items():
            ids[y1:y2, x1:x2] = k
        ids[20:28, 22:38] = 3  # crowd
        write_panoptic_png(self.png_dir / "5.png", ids)
        cv2.imwrite(str(root / "5.jpg"), np.zeros((30, 40, 3), np.uint8))
        self.categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
                           {"id": 119, "name": "sky", "isthing": 0}]
        segments = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 3, "iscrowd": 0},
                    {"id": 3, "category_id": 3, "iscrowd": 1}, {"id": 9, "category_id": 119, "iscrowd": 0}]
        self.json_path = root / "gt.json"
        self.json_path.write_text(json.dumps({
            "images": [{"id": 5, "file_name": "5.jpg", "height": 30, "width": 40}], "categories": self.categories,
            "annotations": [{"image_id": 5, "file_name": "5.png", "segments_info": segments}]}))
        self.root = root

    def __len__(self):
        return 1

    def image_info(self, i):
        return {"image_id": 5, "file_name": "5.jpg", "png_name": "5.png", "image_path": self.root / "5.jpg",
                "png_path": self.png_dir / "5.png"}


class RectanglePredictor:
    """Detects the rectangles (constant masks pasted into integer boxes cover exactly them), with
    an optional false positive ranked first; contiguous labels: person 0, car 1."""

    def __init__(self, dataset, false_positive: bool):
        from pfpn.runtime.categories import CategoryTable

        self.categories = CategoryTable(dataset.categories)
        boxes = [dataset.boxes[1], dataset.boxes[2]] + ([(0, 26, 6, 30)] if false_positive else [])
        self.boxes = np.array(boxes, np.float32)
        self.scores = np.array([0.8, 0.7, 0.9][:len(boxes)], np.float32)
        self.labels = np.array([0, 1, 0][:len(boxes)], np.int64)

    def predict_detailed(self, images):
        from pfpn.runtime.result import PanopticMap

        n = len(self.boxes)
        panoptic = PanopticMap(label_map=np.zeros((30, 40), np.int64), kept=[], boxes=self.boxes, scores=self.scores,
                               labels=self.labels, instance_offset=1000, mask_probs=np.ones((n, 28, 28), np.float32))
        return [(PanopticResult(np.zeros((30, 40), np.int64), []), panoptic, None)]

    def predict(self, image):
        return self.predict_detailed([image])[0][0]


@pytest.mark.parametrize("false_positive,expected", [(False, 1.0), (True, 0.75)])
def test_evaluate_reports_box_and_mask_ap(tmp_path, false_positive, expected):
    """AP per category, averaged: the car is found exactly (AP 1; the detection-free crowd is
    ignored); the person is found exactly, but with the false positive person ranked above it
    AP(person) = 1/2 (precision 1/2 at recall 1) -> mean (1/2 + 1) / 2 = 0.75; without it 1."""
    ds = RectangleDataset(tmp_path)
    result = evaluate(RectanglePredictor(ds, false_positive), ds, tmp_path / "out", progress=False)
    assert result.ap is not None
    for value in (result.ap.box_ap, result.ap.mask_ap, result.ap.mask_ap50):
        assert value == pytest.approx(expected)
    assert (result.ap.num_instances, result.ap.num_detections) == (2, 3 if false_positive else 2)
    gt = json.loads((tmp_path / "out" / "instances_gt.json").read_text())
    assert sorted((a["category_id"], a["iscrowd"]) for a in gt["annotations"]) == [(1, 0), (3, 0), (3, 1)]
    # a predictor without predict_detailed gets PQ only
    assert evaluate(StuffOnlyPredictor(119), ds, tmp_path / "out2", progress=False).ap is None
