"""Parity of an exported ONNX file against the PyTorch predictor on real images.

Per image: detections matched one-to-one by IoU (same label; NMS tie order may differ, so
never by index), their IoU and score difference, the mean absolute difference of the matched
28x28 mask probabilities, the relative error of the stride-4 semantic logits, and the fraction
of identical pixels of the final panoptic maps (ONNX outputs post-processed exactly like the
PyTorch predictor's raw outputs).
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pfpn.runtime.contract import OUTPUT_NAMES
from pfpn.runtime.detection_matching import match_detections
from pfpn.runtime.images import load_image
from pfpn.runtime.preprocess import prepare_batch
from pfpn.training.model.panoptic_fpn import Detections
from pfpn.training.predictor import PanopticPredictor, label_map_single_image

# the acceptance thresholds of the export
MIN_IOU = 0.99
MAX_SCORE_DIFF = 1e-4
MAX_MASK_MAD = 1e-4
MAX_SEMANTIC_REL_ERR = 1e-4
MIN_PANOPTIC_AGREEMENT = 0.999


@dataclass
class ImageParity:
    name: str
    size: tuple[int, int]  # original (h, w)
    num_torch: int
    num_onnx: int
    num_matched: int
    min_iou: float
    max_score_diff: float
    mask_mad: float
    semantic_rel_err: float
    panoptic_agreement: float
    borderline: str = ""  # why a failing row is an edge case: the float64 reference agrees with the export

    @property
    def ok(self) -> bool:
        return (self.num_torch == self.num_onnx == self.num_matched and self.min_iou >= MIN_IOU
                and self.max_score_diff <= MAX_SCORE_DIFF and self.mask_mad <= MAX_MASK_MAD
                and self.semantic_rel_err <= MAX_SEMANTIC_REL_ERR
                and self.panoptic_agreement >= MIN_PANOPTIC_AGREEMENT)


def onnx_detections(outputs: Sequence[np.ndarray], index: int) -> tuple[Detections, torch.Tensor]:
    """Contract outputs of one batch element -> (Detections in resized pixels, stride-4 logits)."""
    boxes, scores, labels, masks, num, semantic = outputs
    n = int(num[index])
    det = Detections(torch.from_numpy(boxes[index, :n].copy()), torch.from_numpy(scores[index, :n].copy()),
                     torch.from_numpy(labels[index, :n].astype(np.int64)), torch.from_numpy(masks[index, :n].copy()))
    return det, torch.from_numpy(semantic[index].copy())


def compare(predictor: PanopticPredictor, backend, images: Sequence[np.ndarray | str | os.PathLike],
            names: Sequence[str] | None = None, batch_size: int = 1) -> list[ImageParity]:
    """Run both on ``images``; ``backend`` runs the exported file (a ``runtime.backends`` backend:
    ONNX Runtime, OpenVINO, ...)."""
    config = predictor.config
    bgr = [load_image(im) for im in images]
    names = list(names) if names is not None else [str(Path(im).name) if isinstance(im, (str, os.PathLike))
                                                   else f"image{i}" for i, im in enumerate(images)]
    results = []
    for start in range(0, len(bgr), batch_size):
        chunk = bgr[start:start + batch_size]
        batch, sizes, factors = prepare_batch(chunk, config.input.max_long_side, config.input.max_short_side,
                                              config.input.size_divisor)
        by_name = backend.run(batch, sizes)
        outputs = [by_name[name] for name in OUTPUT_NAMES]
        for j, image in enumerate(chunk):
            results.append(_compare_one(predictor, image, outputs, j, batch.shape[1:3], tuple(sizes[j]), factors[j],
                                        names[start + j]))
    return results


# A failing image is re-checked against the PyTorch model run in float64. When the float64 run
# agrees with the exported file, the float32 reference itself sits on a decision edge (two
# proposals whose scores differ by 1e-7 and overlap, an IoU at its threshold): float32 rounding
# decides the outcome, and backends legitimately land on either side ("edge" rows).
@torch.no_grad()
def _torch_reference(predictor: PanopticPredictor, image: np.ndarray, dtype: torch.dtype = torch.float32):
    config = predictor.config
    prep = predictor.prepare([image])
    model = predictor.model if dtype == torch.float32 else copy.deepcopy(predictor.model).to(dtype)
    raw = model(prep.images.to(dtype), prep.image_sizes)
    det, sem = raw.detections[0], raw.semantic_logits[0]
    det = Detections(det.boxes.float(), det.scores.float(), det.labels, det.mask_probs.float())
    sem = sem.float()
    ref = label_map_single_image(det, sem, config, padded_size=tuple(prep.images.shape[-2:]),
                                 resized_size=prep.image_sizes[0], original_size=prep.original_sizes[0],
                                 scale_factor=prep.scale_factors[0])
    return det, sem, ref.label_map


def _measure(reference, det: Detections, sem: torch.Tensor, got_map: torch.Tensor, resized: tuple[int, int],
             name: str, size: tuple[int, int]) -> ImageParity:
    ref_det, ref_sem, ref_map = reference
    pairs = match_detections(ref_det.boxes, ref_det.labels, det.boxes, det.labels)
    ious = [p[2] for p in pairs]
    score_diff = [abs(float(ref_det.scores[i]) - float(det.scores[k])) for i, k, _ in pairs]
    mask_mad = [float((ref_det.mask_probs[i] - det.mask_probs[k]).abs().mean()) for i, k, _ in pairs]
    h4, w4 = -(-resized[0] // 4), -(-resized[1] // 4)
    a, b = ref_sem[:, :h4, :w4], sem[:, :h4, :w4]
    rel = float((a - b).abs().max() / a.abs().max().clamp(min=1e-6))
    agreement = float(np.mean(np.asarray(ref_map) == np.asarray(got_map)))
    return ImageParity(name=name, size=size, num_torch=int(ref_det.boxes.shape[0]), num_onnx=int(det.boxes.shape[0]),
                       num_matched=len(pairs), min_iou=min(ious, default=1.0),
                       max_score_diff=max(score_diff, default=0.0), mask_mad=max(mask_mad, default=0.0),
                       semantic_rel_err=rel, panoptic_agreement=agreement)


@torch.no_grad()
def _compare_one(predictor: PanopticPredictor, image: np.ndarray, outputs, j: int, padded: tuple[int, int],
                 resized: tuple[int, int], factor: tuple[float, float], name: str) -> ImageParity:
    det, sem = onnx_detections(outputs, j)
    got = label_map_single_image(det, sem, predictor.config, padded_size=tuple(padded), resized_size=tuple(resized),
                                 original_size=image.shape[:2], scale_factor=factor)
    size = tuple(image.shape[:2])
    row = _measure(_torch_reference(predictor, image), det, sem, got.label_map, resized, name, size)
    if not row.ok:
        in_double = _measure(_torch_reference(predictor, image, torch.float64), det, sem, got.label_map, resized,
                             name, size)
        if in_double.ok:
            row.borderline = "float64 PyTorch agrees"
    return row


def format_parity(rows: Sequence[ImageParity]) -> str:
    head = (f"{'image':28s} {'size':>9s} {'det t/o/m':>10s} {'min IoU':>8s} {'d score':>9s} {'mask MAD':>9s} "
            f"{'sem rel':>9s} {'pan agree':>9s}  ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name[:28]:28s} {r.size[0]:4d}x{r.size[1]:<4d} {r.num_torch:3d}/{r.num_onnx:3d}/{r.num_matched:<3d}"
                     f" {r.min_iou:8.5f} {r.max_score_diff:9.2e} {r.mask_mad:9.2e} {r.semantic_rel_err:9.2e} "
                     f"{r.panoptic_agreement:9.5f}  {'yes' if r.ok else ('edge: ' + r.borderline) if r.borderline else 'NO'}")
    if rows:
        lines.append(f"{sum(r.ok for r in rows)}/{len(rows)} images within thresholds (IoU >= {MIN_IOU}, "
                     f"score diff <= {MAX_SCORE_DIFF}, mask MAD <= {MAX_MASK_MAD}, semantic rel. err <= "
                     f"{MAX_SEMANTIC_REL_ERR}, panoptic agreement >= {MIN_PANOPTIC_AGREEMENT})")
        edge = [r for r in rows if not r.ok and r.borderline]
        if edge:
            lines.append(f"{len(edge)} more ('edge') match the PyTorch model run in float64: there the float32 "
                         "reference sits on a decision edge (near-equal scores, an IoU at its threshold)")
        lines.append(f"panoptic pixels identical over all images: {_overall_agreement(rows):.5f}")
    return "\n".join(lines)


def _overall_agreement(rows: Sequence[ImageParity]) -> float:
    pixels = sum(r.size[0] * r.size[1] for r in rows)
    return sum(r.panoptic_agreement * r.size[0] * r.size[1] for r in rows) / max(pixels, 1)


def passed(rows: Sequence[ImageParity]) -> bool:
    """Every image within thresholds, or explained by a decision on its threshold."""
    return all(r.ok or r.borderline for r in rows)


def parity_dicts(rows: Sequence[ImageParity]) -> list[dict]:
    return [{**asdict(r), "ok": r.ok} for r in rows]
