"""Training / test transforms on the sample dict of :mod:`training.data.coco_panoptic`.

Plain numpy functions (cv2 for resizing). Each returns a NEW dict (shallow copy) with new arrays
and leaves its input untouched. Keys other than ``image`` are optional: a transform handles the
``gt_*`` keys that are present.

Resizing follows REFERENCE §2: scale = min(max_long / long side,
max_short / short side), new size = (int(w * scale + 0.5), int(h * scale + 0.5)), image
INTER_LINEAR; masks and the semantic map INTER_NEAREST; boxes times the per-axis factors
(new_w / w, new_h / h). Published settings: 1x = (1333, 800) and flip 0.5; ms-3x = short side
drawn from 640..800 with long side 1333, flip 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pfpn.runtime.preprocess import rescale_size  # the one resize rule (REFERENCE §2), shared with the runtime


def _resize_stack(masks: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """(N, H, W) -> (N, new_h, new_w) with INTER_NEAREST."""
    out = np.empty((masks.shape[0], new_h, new_w), dtype=masks.dtype)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return out


def resize_sample(sample: dict, max_long: float, max_short: float) -> dict:
    """Resize keeping the aspect ratio (see module docstring).

    image (H, W, 3) -> (new_h, new_w, 3); gt_masks (N, H, W) -> (N, new_h, new_w);
    gt_semantic_seg (H, W) -> (new_h, new_w); gt_boxes (N, 4) xyxy scaled and clipped to
    [0, new_w] x [0, new_h]. Sets ``img_shape`` = (new_h, new_w) and ``scale_factor`` =
    (new_w / w, new_h / h) relative to the input, composed with any earlier scale_factor
    (so it stays relative to ``ori_shape``).
    """
    img = sample["image"]
    h, w = img.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, max_long, max_short)
    sx, sy = new_w / w, new_h / h
    out = dict(sample)
    out["image"] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if "gt_masks" in sample:
        out["gt_masks"] = _resize_stack(sample["gt_masks"], new_w, new_h)
    if "gt_semantic_seg" in sample:
        out["gt_semantic_seg"] = cv2.resize(sample["gt_semantic_seg"], (new_w, new_h),
                                            interpolation=cv2.INTER_NEAREST)
    if "gt_boxes" in sample:
        b = np.asarray(sample["gt_boxes"], dtype=np.float32).reshape(-1, 4)
        b = b * np.array([sx, sy, sx, sy], dtype=np.float32)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, new_w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, new_h)
        out["gt_boxes"] = b.astype(np.float32)
    prev = sample.get("scale_factor", (1.0, 1.0))
    out["img_shape"] = (new_h, new_w)
    out["scale_factor"] = (float(prev[0] * sx), float(prev[1] * sy))
    return out


def random_multiscale_resize(sample: dict, max_long: float, short_side_range: tuple[int, int],
                             rng: np.random.Generator) -> dict:
    """Draw the short-side limit uniformly from the integers lo..hi (inclusive), then resize."""
    lo, hi = int(short_side_range[0]), int(short_side_range[1])
    if lo > hi:
        raise ValueError(f"short_side_range must be (lo, hi) with lo <= hi, got {short_side_range}")
    short = int(rng.integers(lo, hi + 1))
    return resize_sample(sample, max_long, short)


def hflip_sample(sample: dict) -> dict:
    """Horizontal flip of image, gt_masks, gt_semantic_seg and gt_boxes (x1' = W - x2,
    x2' = W - x1). Toggles ``flip`` (so it says whether the sample is flipped w.r.t. the file)."""
    img = sample["image"]
    w = img.shape[1]
    out = dict(sample)
    out["image"] = np.ascontiguousarray(img[:, ::-1])
    if "gt_masks" in sample:
        out["gt_masks"] = np.ascontiguousarray(sample["gt_masks"][:, :, ::-1])
    if "gt_semantic_seg" in sample:
        out["gt_semantic_seg"] = np.ascontiguousarray(sample["gt_semantic_seg"][:, ::-1])
    if "gt_boxes" in sample:
        b = np.asarray(sample["gt_boxes"], dtype=np.float32).reshape(-1, 4)
        fb = b.copy()
        fb[:, 0] = w - b[:, 2]
        fb[:, 2] = w - b[:, 0]
        out["gt_boxes"] = fb
    out["flip"] = not bool(sample.get("flip", False))
    return out


def random_flip(sample: dict, prob: float, rng: np.random.Generator) -> dict:
    """With probability ``prob`` flip horizontally (:func:`hflip_sample`). ``flip`` is always set
    (False if the sample was never flipped). One ``rng.random()`` draw per call."""
    if rng.random() < prob:
        return hflip_sample(sample)
    out = dict(sample)
    out["flip"] = bool(sample.get("flip", False))
    return out


@dataclass
class TrainTransform:
    """Multi-scale resize + random horizontal flip.

    1x: ``TrainTransform(1333, (800, 800), 0.5)``; ms-3x: ``TrainTransform(1333, (640, 800), 0.5)``.
    Call as ``t(sample, rng)`` with a ``numpy.random.Generator``. Without ``rng`` an internal
    generator seeded with ``seed`` is used (note: with multi-process data loading each worker
    holds a copy of it, so pass a per-worker ``rng`` there).
    """

    max_long: int = 1333
    short_side_range: tuple[int, int] = (800, 800)
    flip_prob: float = 0.5
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = self._rng if rng is None else rng
        sample = random_multiscale_resize(sample, self.max_long, self.short_side_range, rng)
        return random_flip(sample, self.flip_prob, rng)


@dataclass
class TestTransform:
    """Deterministic resize only (REFERENCE §2 test pipeline: fit 1333x800). Call as ``t(sample)``."""

    __test__ = False  # not a pytest test class

    max_long: int = 1333
    max_short: int = 800

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return resize_sample(sample, self.max_long, self.max_short)
