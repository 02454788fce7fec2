"""The PyTorch predictor: BGR image -> panoptic result, exactly as SPEC (and the reference).

Pre-processing: BGR -> RGB, keep-ratio resize (OpenCV bilinear), (x - mean) / std, zero padding
to a multiple of 32. Post-processing: boxes back to the original image (divided by the per-axis
factors new_w / w, new_h / h), masks pasted at original resolution, semantic logits upsampled,
heuristic fusion (``training/model/postprocess.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pfpn.runtime.images import load_image
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.preprocess import resize_image
from pfpn.runtime.result import PanopticResult, panoptic_result_from_label_map
from pfpn.training.config import ModelConfig
from pfpn.training.model.panoptic_fpn import Detections, PanopticFPN
from pfpn.training.model.postprocess import heuristic_fusion, paste_masks, upsample_semantic_logits
from pfpn.training.preprocess import normalize_and_pad


@dataclass
class LabelMapPrediction:
    label_map: Tensor  # (H, W) int64: label + k * offset for instance k, stuff labels, VOID
    detections: Detections  # boxes in original-image pixels
    masks: Tensor  # (N, H, W) bool pasted masks
    kept: list[int]  # kept[k - 1]: the detection that became instance k


@dataclass
class PreparedBatch:
    images: Tensor  # (B, 3, H_pad, W_pad)
    image_sizes: list[tuple[int, int]]  # resized (h, w)
    original_sizes: list[tuple[int, int]]  # (H, W)
    scale_factors: list[tuple[float, float]]  # (new_w / W, new_h / H)


def load_bgr(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    """An image path or (H, W, 3) uint8 BGR array -> the array, checked; the runtime's own reader
    (``runtime.images.load_image``), so both predictors accept and refuse the same inputs."""
    return load_image(image)


class PanopticPredictor:
    """Runs a :class:`PanopticFPN` on images and returns :class:`runtime.result.PanopticResult`."""

    def __init__(self, model: PanopticFPN, config: ModelConfig, categories: CategoryTable,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.categories = categories
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, categories: CategoryTable | None = None,
                        device: str | torch.device = "cpu") -> "PanopticPredictor":
        from pfpn.training.checkpoint import load_model

        model, ckpt = load_model(path, categories=categories, device=device)
        return cls(model, ckpt.config.model, ckpt.categories, device)

    # ------------------------------------------------------------------------------------------
    def prepare(self, images_bgr: list[np.ndarray]) -> PreparedBatch:
        inp = self.config.input
        tensors, sizes, originals, factors = [], [], [], []
        for img in images_bgr:
            resized, factor = resize_image(img, inp.max_long_side, inp.max_short_side)
            tensors.append(torch.from_numpy(np.ascontiguousarray(resized[..., ::-1])).permute(2, 0, 1))
            sizes.append(resized.shape[:2])
            originals.append(img.shape[:2])
            factors.append(factor)
        batch = normalize_and_pad(tensors, inp.mean, inp.std, inp.size_divisor)
        return PreparedBatch(batch.to(self.device), sizes, originals, factors)

    @torch.no_grad()
    def predict_label_maps(self, images: list[np.ndarray | str | os.PathLike]) -> list[LabelMapPrediction]:
        """Model-level maps (SPEC fusion steps 1-4) with the detections behind them."""
        bgr = [load_bgr(im) for im in images]
        batch = self.prepare(bgr)
        raw = self.model(batch.images, batch.image_sizes)
        padded = tuple(batch.images.shape[-2:])
        return [label_map_single_image(det, raw.semantic_logits[i], self.config, padded_size=padded,
                                       resized_size=batch.image_sizes[i], original_size=batch.original_sizes[i],
                                       scale_factor=batch.scale_factors[i])
                for i, det in enumerate(raw.detections)]

    def predict_batch(self, images: list[np.ndarray | str | os.PathLike]) -> list[PanopticResult]:
        results = []
        for p in self.predict_label_maps(images):
            scores = p.detections.scores[p.kept].tolist()
            results.append(panoptic_result_from_label_map(p.label_map.cpu().numpy(), self.categories,
                                                          instance_scores=scores,
                                                          instance_offset=self.config.fusion.instance_offset))
        return results

    def predict(self, image: np.ndarray | str | os.PathLike) -> PanopticResult:
        """image: (H, W, 3) uint8 BGR array or an image path."""
        return self.predict_batch([image])[0]


def label_map_single_image(det: Detections, semantic_logits: Tensor, config: ModelConfig, *,
                           padded_size: tuple[int, int], resized_size: tuple[int, int],
                           original_size: tuple[int, int], scale_factor: tuple[float, float]) -> LabelMapPrediction:
    """Raw outputs of one image (boxes in resized pixels, 28x28 probabilities, stride-4 logits
    (K, H_pad / 4, W_pad / 4)) -> the model-level panoptic map: boxes back to the original image,
    masks pasted, logits upsampled, heuristic fusion (SPEC)."""
    sx, sy = scale_factor
    # Reference: boxes /= float32 tensor of (w_scale, h_scale, w_scale, h_scale).
    boxes = det.boxes / det.boxes.new_tensor([sx, sy, sx, sy])
    masks = paste_masks(det.mask_probs, boxes, original_size, config.mask_head.mask_threshold)
    logits = upsample_semantic_logits(semantic_logits, padded_size=padded_size, resized_size=resized_size,
                                      original_size=original_size)
    fusion = config.fusion
    pan, kept = heuristic_fusion(masks, det.labels, det.scores, logits, num_thing_classes=config.num_thing_classes,
                                 mask_overlap_threshold=fusion.mask_overlap_threshold,
                                 stuff_area_limit=fusion.stuff_area_limit, instance_offset=fusion.instance_offset)
    return LabelMapPrediction(pan, Detections(boxes, det.scores, det.labels, det.mask_probs), masks, kept)
