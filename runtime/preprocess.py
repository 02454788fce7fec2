"""Image pre-processing shared by every predictor (torch-free): SPEC's keep-ratio resize."""
from __future__ import annotations

import cv2
import numpy as np


def rescale_size(width: int, height: int, max_long_side: int, max_short_side: int) -> tuple[int, int, float]:
    """SPEC: scale = min(max_long / long side, max_short / short side);
    new size = (int(w * scale + 0.5), int(h * scale + 0.5)). -> (new_w, new_h, scale)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = min(max_long_side / max(height, width), max_short_side / min(height, width))
    return int(width * float(scale) + 0.5), int(height * float(scale) + 0.5), scale


def resize_image(image: np.ndarray, max_long_side: int, max_short_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Keep-ratio bilinear resize (OpenCV INTER_LINEAR).

    image: (H, W, C) uint8 -> (resized (h, w, C), scale_factor (new_w / W, new_h / H)).
    """
    h, w = image.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, max_long_side, max_short_side)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, (new_w / w, new_h / h)
