"""One evaluation for every predictor (PyTorch, ONNX Runtime, TensorRT): run it over a COCO
panoptic split, write COCO panoptic predictions (PNGs + JSON), and compute PQ against the
ground truth with :func:`training.evaluation.pq.pq_compute`. Torch-free."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from tqdm import tqdm

from pfpn.runtime.files import atomic_write_json
from pfpn.runtime.result import PanopticResult
from pfpn.training.evaluation.pq import PQResult, pq_compute


class SupportsPredict(Protocol):
    """What :func:`evaluate` needs of a predictor (``training.predictor.PanopticPredictor``,
    ``runtime.Predictor``, a Triton client...)."""

    def predict(self, image: Any) -> PanopticResult:
        """image: (H, W, 3) uint8 BGR array or a path."""


@dataclass
class Evaluation:
    pq: PQResult
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
    predictions under ``out_dir`` and return PQ against the ground truth."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    gt = json.loads(Path(dataset.json_path).read_text())
    results = []
    elapsed = 0.0
    for i in tqdm(range(n), desc=desc, disable=not progress, dynamic_ncols=True):
        info = dataset.image_info(i)
        t0 = time.perf_counter()
        res = predictor.predict(info["image_path"])
        elapsed += time.perf_counter() - t0
        results.append((info, res))
    pred_json, pred_folder = write_predictions(results, gt["categories"], out_dir)
    # the ground truth restricted to the evaluated images (pq_compute wants a prediction for each)
    ids = {info["image_id"] for info, _ in results}
    gt_subset = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
                 "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    gt_json = out_dir / "panoptic_gt.json"
    atomic_write_json(gt_json, gt_subset)
    pq = pq_compute(gt_json, pred_json, dataset.png_dir, pred_folder)
    atomic_write_json(out_dir / "pq.json", pq.to_dict())
    return Evaluation(pq=pq, num_images=n, seconds_per_image=elapsed / max(n, 1), pred_json=pred_json,
                      pred_folder=pred_folder, gt_json=gt_json)
