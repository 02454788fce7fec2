"""Reading and checking input images (torch-free). Every problem is a ``ValueError`` (or
``FileNotFoundError``) whose message names it and says what to do."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

# Larger images are refused: the full-resolution panoptic map alone would need > 1 GB.
MAX_SIDE = 16384
MAX_PIXELS = 1 << 27  # 134 M pixels

ImageLike = "np.ndarray | str | os.PathLike"


class ImageError(ValueError):
    """An input image the predictor cannot use."""


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an (H, W, 3) uint8 BGR array; explain anything else."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array or a path, got {type(image).__name__}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ImageError(f"{name}: grey image of shape {image.shape}; convert it to BGR first "
                         "(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))")
    if image.ndim == 3 and image.shape[2] == 4:
        raise ImageError(f"{name}: 4-channel (BGRA) image; drop the alpha channel first "
                         "(cv2.cvtColor(img, cv2.COLOR_BGRA2BGR))")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{name}: expected an (H, W, 3) BGR image, got shape {image.shape}")
    if image.dtype != np.uint8:
        hint = " scaled 0..1? multiply by 255 and" if np.issubdtype(image.dtype, np.floating) else ""
        raise ImageError(f"{name}: expected uint8 pixels 0..255, got {image.dtype};{hint} convert with "
                         "img.astype(np.uint8)")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"{name}: empty image ({h}x{w})")
    if max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        raise ImageError(f"{name}: {h}x{w} is too large (at most {MAX_SIDE} px per side and {MAX_PIXELS} pixels); "
                         "downscale it first")
    return image


def _truncated(data: bytes) -> str | None:
    """A reason if the bytes are a visibly truncated JPEG or PNG, else None."""
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-1024:]:
        return "JPEG data ends without its end-of-image marker"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        return "PNG data ends without its IEND chunk"
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR (cv2.IMREAD_COLOR), refusing corrupt or
    truncated files instead of returning half-decoded pixels."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file; pass the image files in it "
                         "(runtime/predict.py takes folders and lists their images itself)")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ImageError(f"{path}: empty file")
    reason = _truncated(data)
    if reason:
        raise ImageError(f"{path}: truncated image file ({reason})")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{path}: cannot decode the file as an image (corrupt or unsupported format)")
    return check_image(image, str(path))


def load_image(image: np.ndarray | str | os.PathLike, name: str = "image") -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    return check_image(image, name)
