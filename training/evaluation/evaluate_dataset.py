"""One evaluation for every predictor (PyTorch, ONNX Runtime, TensorRT): run it over a COCO
panoptic split, write COCO panoptic predictions (PNGs + JSON), and compute PQ against the
ground truth with :func:`training.evaluation.pq.pq_compute`, and box / mask AP of the
predictor's detections before fusion (:mod:`training.evaluation.instances`, pycocotools) where
the predictor shows them (``predict_detailed``). Torch-free."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from tqdm import tqdm

from pfpn.runtime.files import atomic_write_json
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.result import PanopticResult
from pfpn.training.evaluation.instances import InstanceAP, detections_from_map, instance_ap, instances_from_panoptic
from pfpn.training.evaluation.pq import PQResult, pq_compute


class SupportsPredict(Protocol):
    """What :func:`evaluate` needs of a predictor (``training.predictor.PanopticPredictor``,
    ``runtime.Predictor``, a Triton client...). Predictors that also have
    ``predict_detailed(images) -> [(PanopticResult, PanopticMap, Timings)]`` (the PyTorch and
    runtime predictors) get box and mask AP too."""

    def predict(self, image: Any) -> PanopticResult:
        """image: (H, W, 3) uint8 BGR array or a path."""


@dataclass
class Evaluation:
    pq: PQResult
    ap: InstanceAP | None  # None for a predictor without predict_detailed (no detections to see)
    num_images: int
    seconds_per_image: float
    pred_json: Path
    pred_folder: Path
    gt_json: Path


def write_predictions(results: Sequence[tuple[dict, PanopticResult]], categories: list[dict], out_dir: Path,
                      name: str = "panoptic_pred") -> tuple[Path, Path]:
    """results: (image info with image_id / file_name / png_name, prediction) -> (json, folder).
    The runtime's COCO writer (:func:`runtime.writers.write_coco_panoptic`)."""
    from pfpn.runtime.writers import write_coco_panoptic

    return write_coco_panoptic(results, categories, out_dir, name)


def evaluate(predictor: SupportsPredict, dataset: Any, out_dir: str | os.PathLike, *, max_images: int | None = None,
             progress: bool = True, desc: str = "evaluate") -> Evaluation:
    """Predict every image of ``dataset`` (a :class:`training.data.coco_panoptic.CocoPanopticDataset`,
    or anything with ``__len__``, ``image_info(i)``, ``json_path`` and ``png_dir``), write the
    predictions under ``out_dir`` and return PQ against the ground truth, with box / mask AP
    (also written: ``instances_gt.json``, ``instances_pred.json``, ``ap.json``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    gt = json.loads(Path(dataset.json_path).read_text())
    detailed = getattr(predictor, "predict_detailed", None)
    category_ids = [c.id for c in getattr(predictor, "categories", CategoryTable(gt["categories"])).by_label]
    results, detections = [], []
    elapsed = 0.0
    for i in tqdm(range(n), desc=desc, disable=not progress, dynamic_ncols=True):
        info = dataset.image_info(i)
        t0 = time.perf_counter()
        if detailed is not None:
            res, panoptic, _ = detailed([info["image_path"]])[0]
        else:
            res = predictor.predict(info["image_path"])
        elapsed += time.perf_counter() - t0
        results.append((info, res))
        if detailed is not None:
            detections.extend(detections_from_map(panoptic, image_id=info["image_id"], image_size=res.id_map.shape,
                                                  category_ids=category_ids))
    pred_json, pred_folder = write_predictions(results, gt["categories"], out_dir)
    # the ground truth restricted to the evaluated images (pq_compute wants a prediction for each)
    ids = {info["image_id"] for info, _ in results}
    gt_subset = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
                 "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    gt_json = out_dir / "panoptic_gt.json"
    atomic_write_json(gt_json, gt_subset)
    pq = pq_compute(gt_json, pred_json, dataset.png_dir, pred_folder)
    atomic_write_json(out_dir / "pq.json", pq.to_dict())
    ap = None
    if detailed is not None:
        instances = instances_from_panoptic(gt_subset, dataset.png_dir)
        atomic_write_json(out_dir / "instances_gt.json", instances)
        atomic_write_json(out_dir / "instances_pred.json", detections)
        ap = instance_ap(instances, detections)
        atomic_write_json(out_dir / "ap.json", ap.to_dict())
    return Evaluation(pq=pq, ap=ap, num_images=n, seconds_per_image=elapsed / max(n, 1), pred_json=pred_json,
                      pred_folder=pred_folder, gt_json=gt_json)
