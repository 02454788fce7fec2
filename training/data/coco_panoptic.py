"""COCO panoptic dataset reader (layout-driven: real COCO and the synthetic set alike).

Layout (REFERENCE §7)::

    root/annotations/panoptic_<split>2017.json
    root/annotations/panoptic_<split>2017/<annotation file_name>.png   (segment-id PNGs)
    root/<split>2017/<image file_name>                                  (images)

Contiguous labels come from :class:`runtime.panoptic_io.CategoryTable`: things 0..T-1, then
stuff T..T+S-1, each group in the JSON's order. VOID in the semantic map is 255.

Sample dict returned by ``dataset[i]`` (before any transform; N = non-crowd thing segments that
appear in the PNG):

=====================  =========================  ==============================================
key                    type / shape               meaning
=====================  =========================  ==============================================
``image``              uint8 (H, W, 3)            BGR, as ``cv2.imread(path, IMREAD_COLOR)``
``image_id``           int                        the JSON image id
``file_name``          str                        the image's file name (relative to <split>2017)
``ori_shape``          (H, W) tuple of int        size of the image as read
``img_shape``          (H, W) tuple of int        current size (= ori_shape until resized)
``scale_factor``       (sx, sy) tuple of float    current / original size per axis (1.0, 1.0)
``flip``               bool                       horizontally flipped (False)
``gt_boxes``           float32 (N, 4)             xyxy: JSON bbox [x, y, w, h] -> [x, y, x+w, y+h]
``gt_labels``          int64 (N,)                 contiguous thing labels 0..T-1
``gt_masks``           uint8 (N, H, W)            binary masks (0/1) of those segments
``gt_semantic_seg``    uint8 (H, W)               thing label (crowd included) / stuff label /
                                                  255 for VOID (id 0 or ids not in the JSON)
=====================  =========================  ==============================================

Crowd thing segments (``iscrowd = 1``) are left out of gt_boxes / gt_labels / gt_masks but are in
the semantic map. A segment listed in the JSON whose id is absent from the PNG is skipped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.images import read_image
from pfpn.runtime.panoptic_io import read_panoptic_png

IGNORE_LABEL = 255  # VOID in gt_semantic_seg


class CocoPanopticDataset:
    """COCO panoptic ``split`` ("train" or "val") under ``root``; see the module docstring.

    ``transform``, if given, is called as ``transform(sample)`` and its result returned.
    Attributes: ``categories`` (CategoryTable), ``json_path``, ``png_dir``, ``image_dir``.
    """

    def __init__(self, root: str | os.PathLike, split: str, *,
                 transform: Callable[[dict], dict] | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.json_path = self.root / "annotations" / f"panoptic_{split}2017.json"
        self.png_dir = self.root / "annotations" / f"panoptic_{split}2017"
        self.image_dir = self.root / f"{split}2017"
        if not self.json_path.is_file():
            raise FileNotFoundError(f"panoptic annotation file not found: {self.json_path}")
        try:
            with open(self.json_path, "rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.json_path}: not valid JSON ({e})") from e
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.json_path}: missing key {key!r}")
        try:
            self.categories = CategoryTable(data["categories"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.json_path}: bad 'categories' ({e!r})") from e
        if len(self.categories) >= IGNORE_LABEL:
            raise ValueError(f"{self.json_path}: {len(self.categories)} categories do not fit uint8 labels")
        thing_ids = {c.id for c in self.categories.things}

        anns = {a["image_id"]: a for a in data["annotations"]}
        self._records: list[dict[str, Any]] = []
        for img in data["images"]:
            ann = anns.get(img["id"])
            if ann is None:
                raise ValueError(f"{self.json_path}: image id {img['id']} ({img.get('file_name')}) has no annotation")
            segs = []
            for s in ann["segments_info"]:
                cat = int(s["category_id"])
                if cat not in self.categories.label_of_id:
                    raise ValueError(f"{self.json_path}: segment {s['id']} of image {img['id']} "
                                     f"({ann['file_name']}) has category_id {cat}, not in 'categories'")
                segs.append((int(s["id"]), self.categories.label_of_id[cat], cat in thing_ids,
                             bool(s.get("iscrowd", 0)), [float(v) for v in s["bbox"]]))
            self._records.append({"image_id": img["id"], "file_name": img["file_name"],
                                  "png_name": ann["file_name"], "segments": segs})

    def __len__(self) -> int:
        return len(self._records)

    def image_info(self, index: int) -> dict[str, Any]:
        """Without reading any file: ``image_id``, ``file_name``, ``png_name``, ``image_path``,
        ``png_path``."""
        rec = self._records[index]
        return {"image_id": rec["image_id"], "file_name": rec["file_name"], "png_name": rec["png_name"],
                "image_path": self.image_dir / rec["file_name"], "png_path": self.png_dir / rec["png_name"]}

    def __getitem__(self, index: int) -> dict:
        n = len(self._records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        rec = self._records[index]
        img_path = self.image_dir / rec["file_name"]
        png_path = self.png_dir / rec["png_name"]
        image = read_image(img_path)  # FileNotFoundError / ImageError (a ValueError) naming the file
        if not png_path.is_file():
            raise FileNotFoundError(f"panoptic PNG not found: {png_path}")
        ids = read_panoptic_png(png_path)
        h, w = image.shape[:2]
        if ids.shape != (h, w):
            raise ValueError(f"panoptic PNG {png_path} is {ids.shape[1]}x{ids.shape[0]} but image "
                             f"{img_path} is {w}x{h}")

        uniq, inv = np.unique(ids, return_inverse=True)
        inv = inv.reshape(h, w)
        lut = np.full(uniq.size, IGNORE_LABEL, dtype=np.uint8)
        boxes, labels, masks = [], [], []
        for seg_id, label, isthing, iscrowd, bbox in rec["segments"]:
            if seg_id == 0:
                continue  # id 0 is VOID by definition
            k = int(np.searchsorted(uniq, seg_id))
            if k >= uniq.size or uniq[k] != seg_id:
                continue  # listed in the JSON but not in the PNG
            lut[k] = label
            if isthing and not iscrowd:
                x, y, bw, bh = bbox
                boxes.append((x, y, x + bw, y + bh))
                labels.append(label)
                masks.append(inv == k)
        sample = {
            "image": image,
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
            "ori_shape": (h, w),
            "img_shape": (h, w),
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "gt_boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "gt_labels": np.asarray(labels, dtype=np.int64),
            "gt_masks": (np.stack(masks).astype(np.uint8) if masks
                         else np.zeros((0, h, w), dtype=np.uint8)),
            "gt_semantic_seg": lut[inv],
        }
        return self.transform(sample) if self.transform is not None else sample
