"""The PyTorch predictor: BGR image -> panoptic result, exactly as REFERENCE §2-§5 (and the reference implementation).

Pre-processing: BGR -> RGB, keep-ratio resize (OpenCV bilinear), (x - mean) / std, zero padding
to a multiple of 32. Post-processing: boxes back to the original image (divided by the per-axis
factors new_w / w, new_h / h), masks pasted at original resolution, semantic logits upsampled,
heuristic fusion (``training/model/panoptic_fusion.py``). The results are the runtime's types
(``runtime/result.py``: PanopticMap, PanopticResult; ``runtime/predictor.py``: Timings), and the
methods those of ``runtime.Predictor``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.images import load_image
from pfpn.runtime.predictor import Timings
from pfpn.runtime.preprocess import resize_image
from pfpn.runtime.result import PanopticMap, PanopticResult, to_panoptic_result
from pfpn.training.config import ModelConfig
from pfpn.training.model.panoptic_fpn import Detections, PanopticFPN
from pfpn.training.model.panoptic_fusion import heuristic_fusion, paste_masks, upsample_semantic_logits
from pfpn.training.preprocess import normalize_and_pad

ImageInput = np.ndarray | str | os.PathLike  # (H, W, 3) uint8 BGR array or an image path


@dataclass
class PreparedBatch:
    images: Tensor  # (B, 3, H_pad, W_pad)
    image_sizes: list[tuple[int, int]]  # resized (h, w)
    original_sizes: list[tuple[int, int]]  # (H, W)
    scale_factors: list[tuple[float, float]]  # (new_w / W, new_h / H)


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

    def predict(self, image: ImageInput) -> PanopticResult:
        """image: (H, W, 3) uint8 BGR array or an image path."""
        return self.predict_detailed([image])[0][0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[PanopticResult]:
        return [result for result, _, _ in self.predict_detailed(images)]

    def predict_timed(self, image: ImageInput) -> tuple[PanopticResult, Timings]:
        """One image -> (its PanopticResult, seconds spent in pre-processing (reading, resizing,
        normalising), the network and the post-processing (pasting, fusion, COCO formatting))."""
        result, _, timings = self.predict_detailed([image])[0]
        return result, timings

    def predict_maps(self, images: Sequence[ImageInput]) -> list[PanopticMap]:
        """Model-level maps (REFERENCE §5 steps 1-4) with the detections behind them."""
        return [panoptic for _, panoptic, _ in self.predict_detailed(images)]

    @torch.no_grad()
    def predict_detailed(self, images: Sequence[ImageInput]) -> list[tuple[PanopticResult, PanopticMap, Timings]]:
        """All images in one network call -> per image (PanopticResult, PanopticMap, Timings); the
        pre-processing and network seconds are shared equally by the images."""
        t0 = time.perf_counter()
        batch = self.prepare([load_image(im) for im in images])
        t1 = time.perf_counter()
        raw = self.model(batch.images, batch.image_sizes)
        t2 = time.perf_counter()
        padded = tuple(batch.images.shape[-2:])
        out = []
        for i, det in enumerate(raw.detections):
            t_start = time.perf_counter()
            panoptic = label_map_single_image(det, raw.semantic_logits[i], self.config, padded_size=padded,
                                              resized_size=batch.image_sizes[i], original_size=batch.original_sizes[i],
                                              scale_factor=batch.scale_factors[i])
            result = to_panoptic_result(panoptic, self.categories)
            timings = Timings(preprocess=(t1 - t0) / len(images), network=(t2 - t1) / len(images),
                              postprocess=time.perf_counter() - t_start, images=1)
            out.append((result, panoptic, timings))
        return out


def label_map_single_image(det: Detections, semantic_logits: Tensor, config: ModelConfig, *,
                           padded_size: tuple[int, int], resized_size: tuple[int, int],
                           original_size: tuple[int, int], scale_factor: tuple[float, float]) -> PanopticMap:
    """Raw outputs of one image (boxes in resized pixels, 28x28 probabilities, stride-4 logits
    (K, H_pad / 4, W_pad / 4)) -> the model-level panoptic map (on the host): boxes back to the
    original image, masks pasted, logits upsampled, heuristic fusion (REFERENCE §5)."""
    sx, sy = scale_factor
    # Reference: boxes /= float32 tensor of (w_scale, h_scale, w_scale, h_scale).
    boxes = det.boxes / det.boxes.new_tensor([sx, sy, sx, sy])
    masks = paste_masks(det.mask_probs, boxes, original_size, config.mask_head.mask_threshold)
    logits = upsample_semantic_logits(semantic_logits, padded_size=padded_size, resized_size=resized_size,
                                      original_size=original_size)
    pan, kept = heuristic_fusion(masks, det.labels, det.scores, logits, num_thing_classes=config.num_thing_classes,
                                 fusion=config.fusion)
    return PanopticMap(label_map=pan.cpu().numpy(), kept=kept, boxes=boxes.cpu().numpy(),
                       scores=det.scores.cpu().numpy(), labels=det.labels.cpu().numpy(),
                       instance_offset=config.fusion.instance_offset, mask_probs=det.mask_probs.cpu().numpy(),
                       mask_threshold=config.mask_head.mask_threshold)
