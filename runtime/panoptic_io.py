"""COCO panoptic file format: segment ids <-> RGB PNGs.

Torch-free: used by the runtime, the dataset reader, the evaluation and the writers.

A COCO panoptic PNG stores a segment id per pixel as ``id = R + 256 * G + 256**2 * B``;
id 0 is VOID (no segment).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pfpn.runtime.files import atomic_write_bytes

VOID_ID = 0


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 segment ids."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8 RGB."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"expected an (H, W) id map, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("segment ids must lie in [0, 256**3)")
    ids = ids.astype(np.int64)
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // (256 * 256)
    return rgb


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a COCO panoptic PNG into an (H, W) int64 id map."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read panoptic PNG {path}")
    return rgb2id(bgr[..., ::-1])


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """An (H, W) id map as the bytes of a COCO panoptic PNG (RGB = id % 256, id // 256 % 256, ...)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(id2rgb(ids)[..., ::-1]))
    if not ok:
        raise OSError(f"PNG encoding failed for an id map of shape {np.shape(ids)}")
    return buf.tobytes()


def decode_panoptic_png(data: bytes) -> np.ndarray:
    """The bytes of a COCO panoptic PNG -> (H, W) int64 id map."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a PNG image")
    return rgb2id(bgr[..., ::-1])


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write an (H, W) id map as a COCO panoptic PNG (atomically: no half-written file)."""
    atomic_write_bytes(path, encode_panoptic_png(ids))
