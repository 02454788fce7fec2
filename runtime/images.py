"""Finding, reading and checking input images (torch-free), for every part of the project:
the predictors, the CLIs, calibration, export verification, the datasets and the benchmarks.
Every problem is a ``ValueError`` (or ``FileNotFoundError``) whose message names it and says
what to do."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

# Larger images are refused: the full-resolution panoptic map alone would need > 1 GB.
MAX_SIDE = 16384
MAX_PIXELS = 1 << 27  # 134 M pixels

ImageLike = "np.ndarray | str | os.PathLike"

# What list_images takes from a folder: the formats OpenCV decodes in every build.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG IHDR or a JPEG SOF header, read before decoding; None if the
    format is another or the header is not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            i += 2 + length
    return None


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ... as OpenCV reads them) -> (H, W, 3) uint8 BGR, refusing
    empty, truncated, undecodable or oversized data (checked from the header, before decoding)."""
    if not data:
        raise ImageError(f"{name}: empty data, not an image")
    reason = _truncated(data)
    if reason:
        raise ImageError(f"{name}: truncated image data ({reason})")
    size = _header_size(data)
    if size is not None and (max(size) > MAX_SIDE or size[0] * size[1] > MAX_PIXELS):
        raise ImageError(f"{name}: the header says {size[0]}x{size[1]}, too large (at most {MAX_SIDE} px per side "
                         f"and {MAX_PIXELS} pixels); downscale it first")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{name}: cannot decode the data as an image (corrupt or unsupported format)")
    return check_image(image, name)


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
    return decode_image(data, str(path))


def list_images(inputs: str | os.PathLike | Sequence[str | os.PathLike], *, count: int | None = None,
                what: str = "images") -> list[Path]:
    """Image files from ``inputs`` (a folder, a file, or a sequence of both): a folder gives its
    files with an :data:`IMAGE_SUFFIXES` suffix, sorted by name; a file is taken as it is. Keeps
    the first ``count``. Raises ``FileNotFoundError`` for a missing folder and :class:`ImageError`
    when nothing is found (``what`` names the inputs in the message, e.g. "--calib-images")."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if count is not None and count < 1:
        raise ImageError(f"{what}: the image count must be >= 1, got {count}")
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()))
        elif p.exists() or p.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(p)  # a missing image file is reported by read_image, image by image
        else:
            raise FileNotFoundError(f"{what}: {p} does not exist")
    if not paths:
        raise ImageError(f"{what}: no {'/'.join(IMAGE_SUFFIXES)} images in {', '.join(str(i) for i in items) or '[]'}")
    return paths[:count] if count is not None else paths


def load_image(image: np.ndarray | str | os.PathLike, name: str = "image") -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    return check_image(image, name)
