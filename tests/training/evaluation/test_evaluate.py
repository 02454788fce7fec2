"""evaluate(predictor, dataset): a perfect predictor scores PQ 1, a constant one scores what
the hand count says; predictions are valid COCO panoptic files."""
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
