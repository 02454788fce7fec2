"""Image pre-processing shared by every predictor (torch-free): REFERENCE §2's keep-ratio resize."""
from __future__ import annotations

import cv2
import numpy as np


def rescale_size(width: int, height: int, max_long_side: int, max_short_side: int) -> tuple[int, int, float]:
    """REFERENCE §2: scale = min(max_long / long side, max_short / short side);
    new size = (int(w * scale + 0.5), int(h * scale + 0.5)), but at least 1 pixel per side.
    -> (new_w, new_h, scale).

    Departure from the reference, for extreme aspect ratios only: for a 1x5000 image the reference's rule
    gives 1333x0 and mmdetection (mmcv.imrescale) fails inside cv2.resize; we keep one row
    (1333x1) so that such images run. Every size the reference can process is unchanged.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = min(max_long_side / max(height, width), max_short_side / min(height, width))
    return max(1, int(width * float(scale) + 0.5)), max(1, int(height * float(scale) + 0.5)), scale


def resize_image(image: np.ndarray, max_long_side: int, max_short_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Keep-ratio bilinear resize (OpenCV INTER_LINEAR).

    image: (H, W, C) uint8 -> (resized (h, w, C), scale_factor (new_w / W, new_h / H)).
    """
    h, w = image.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, max_long_side, max_short_side)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, (new_w / w, new_h / h)


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    """The padded canvas of an image: (height, width) rounded up to multiples of ``size_divisor``."""
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def pad_batch(images: list[np.ndarray], size_divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (h_i, w_i, 3) uint8 images at the bottom/right to one (B, H, W, 3) batch with H, W
    multiples of ``size_divisor`` -> (batch, image_sizes (B, 2) int64 (h_i, w_i))."""
    if not images:
        raise ValueError("empty batch")
    h, w = padded_size(max(im.shape[0] for im in images), max(im.shape[1] for im in images), size_divisor)
    batch = np.zeros((len(images), h, w, 3), dtype=np.uint8)
    sizes = np.zeros((len(images), 2), dtype=np.int64)
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = im
        sizes[i] = im.shape[:2]
    return batch, sizes


def prepare_batch(images_bgr: list[np.ndarray], max_long_side: int, max_short_side: int, size_divisor: int
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """REFERENCE §2 pre-processing outside the graph: resize each image, pad the batch.
    -> (images (B, H, W, 3) uint8 BGR, image_sizes (B, 2) int64, scale factors (new_w / w, new_h / h))."""
    resized, factors = [], []
    for im in images_bgr:
        r, f = resize_image(im, max_long_side, max_short_side)
        resized.append(r)
        factors.append(f)
    batch, sizes = pad_batch(resized, size_divisor)
    return batch, sizes, factors
