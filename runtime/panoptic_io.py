"""COCO panoptic file format: segment ids <-> RGB PNGs, and the category table.

Torch-free: used by the runtime, the dataset reader, the evaluation and the writers.

A COCO panoptic PNG stores a segment id per pixel as ``id = R + 256 * G + 256**2 * B``;
id 0 is VOID (no segment).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

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


def temporary_sibling(path: str | os.PathLike) -> str:
    """A new empty file beside ``path`` (same folder, so a rename is atomic), readable by all
    like an ordinary new file (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    return tmp


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to write; renamed to ``path`` when the
    block succeeds, deleted when it raises, so nothing half-written is ever left at ``path``."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


@dataclass(frozen=True)
class Category:
    id: int  # the COCO category id (as in the JSON)
    name: str
    isthing: bool


class CategoryTable:
    """Contiguous labels <-> COCO category ids.

    SPEC: contiguous labels put things first (0..T-1) then stuff (T..T+S-1), each group in the
    JSON's order. The model's VOID label is T+S (133 for COCO).
    """

    def __init__(self, categories: Sequence[Category | dict]):
        cats = [c if isinstance(c, Category) else Category(int(c["id"]), str(c["name"]), bool(c["isthing"]))
                for c in categories]
        if len({c.id for c in cats}) != len(cats):
            raise ValueError("category ids must be unique")
        self.things = [c for c in cats if c.isthing]
        self.stuff = [c for c in cats if not c.isthing]
        self.by_label: list[Category] = self.things + self.stuff
        self.label_of_id = {c.id: i for i, c in enumerate(self.by_label)}

    @property
    def num_things(self) -> int:
        return len(self.things)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff)

    @property
    def void_label(self) -> int:
        return len(self.by_label)

    def __len__(self) -> int:
        return len(self.by_label)

    def to_json(self) -> list[dict]:
        """The categories in contiguous-label order, as COCO-style dicts."""
        return [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in self.by_label]
