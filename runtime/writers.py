"""Writing panoptic results (torch-free): COCO panoptic files and overlay pictures.

* :func:`write_coco_panoptic`: one PNG per image (segment id = R + 256 G + 256^2 B, 0 = VOID)
  and one JSON with ``images``, ``annotations`` (``segments_info`` per image) and
  ``categories``, readable by ``training.evaluation.pq.pq_compute`` and panopticapi.
* :func:`overlay` / :func:`save_overlay`: the image with a translucent colour per segment,
  1-pixel outlines and class names (with the score for things).
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pfpn.runtime.files import atomic_write_bytes, atomic_write_json
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.panoptic_io import write_panoptic_png
from pfpn.runtime.result import PanopticResult

__all__ = ["write_coco_panoptic", "overlay", "save_overlay", "segment_colors"]


def write_coco_panoptic(results: Sequence[tuple[dict, PanopticResult]], categories: list[dict] | CategoryTable,
                        out_dir: str | os.PathLike, name: str = "panoptic_pred") -> tuple[Path, Path]:
    """COCO panoptic predictions: ``out_dir/name/<png_name>`` and ``out_dir/name.json``.

    results: (image info with ``image_id``, ``file_name`` (the image's) and ``png_name`` (the PNG
    to write), prediction) per image; categories: the COCO category dicts (``id``, ``name``,
    ``isthing``, ...) written as the JSON's ``categories``, or a :class:`CategoryTable`.
    Segments keep their ``score`` (things) next to COCO's fields. Files are written atomically.
    -> (json path, PNG folder).
    """
    out_dir = Path(out_dir)
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(categories, CategoryTable):
        categories = categories.to_json()
    images, annotations = [], []
    for info, res in results:
        write_panoptic_png(folder / info["png_name"], res.id_map)
        annotations.append(res.to_coco_annotation(info["image_id"], info["png_name"]))
        images.append({"id": info["image_id"], "file_name": info["file_name"], "height": int(res.id_map.shape[0]),
                       "width": int(res.id_map.shape[1])})
    path = out_dir / f"{name}.json"
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": list(categories)})
    return path, folder


# ----------------------------------------------------------------------------------------------
# overlay
_GOLDEN = 0.618033988749895


def _hsv_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def segment_colors(result: PanopticResult) -> dict[int, tuple[int, int, int]]:
    """Deterministic BGR colour per segment id: things a distinct, saturated colour per instance
    (hues spaced by the golden ratio in segment order), stuff one softer colour per category."""
    colors: dict[int, tuple[int, int, int]] = {}
    k = 0
    for seg in sorted(result.segments_info, key=lambda s: s["id"]):
        if seg["isthing"]:
            colors[seg["id"]] = _hsv_bgr(0.05 + k * _GOLDEN, 0.85, 0.95)
            k += 1
        else:
            c = int(seg["category_id"])
            colors[seg["id"]] = _hsv_bgr((c * 0.2897) % 1.0, 0.35 + 0.15 * ((c * 7) % 3), 0.55 + 0.1 * (c % 3))
    return colors


def _label_anchor(mask: np.ndarray, step: int) -> tuple[int, int] | None:
    """A point well inside a segment, near its centre, given its mask subsampled by ``step``:
    among the points at least 0.7 x the largest distance from the border, the one closest to
    the centroid -> (x, y) in full-resolution pixels of the mask's frame (None: no point)."""
    if not mask.any():
        return None
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= 0.7 * dist.max())
    cy, cx = np.argwhere(mask).mean(axis=0)
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i] * step + step // 2), int(ys[i] * step + step // 2)


def overlay(image_bgr: np.ndarray, result: PanopticResult, categories: CategoryTable, *, alpha: float = 0.5,
            draw_labels: bool = True, min_label_area: int = 64) -> np.ndarray:
    """The image with each segment tinted in its colour (``alpha``), 1-pixel outlines between
    segments, and (``draw_labels``) the class name (things: with the score) on a dark box at a
    point inside each segment of at least ``min_label_area`` pixels (larger segments first; a
    name that would cover an earlier one moves up or down a line, or is left out). VOID stays
    untinted.

    image_bgr: (H, W, 3) uint8 of the result's size -> a new (H, W, 3) uint8 BGR image."""
    image = np.asarray(image_bgr)
    ids = np.asarray(result.id_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image.dtype} {image.shape}")
    if image.shape[:2] != ids.shape:
        raise ValueError(f"image {image.shape[:2]} and id map {ids.shape} differ in size")
    colors = segment_colors(result)
    seg_ids = np.array(sorted(colors), dtype=np.int64)
    palette = np.zeros((len(seg_ids) + 1, 3), dtype=np.uint8)  # row 0: VOID / unlisted ids
    for i, sid in enumerate(seg_ids.tolist()):
        palette[i + 1] = colors[sid]
    index = _segment_index(ids, seg_ids)
    tinted = index > 0
    color_img = np.take(palette, index, axis=0)
    blended = cv2.addWeighted(image, 1.0 - alpha, color_img, alpha, 0.0)
    out = np.where(tinted[..., None], blended, image)
    # outlines: pixels whose right or lower neighbour belongs to another segment (VOID included)
    edge = np.zeros(ids.shape, dtype=bool)
    diff_x = index[:, 1:] != index[:, :-1]
    diff_y = index[1:, :] != index[:-1, :]
    edge[:, :-1] |= diff_x
    edge[:, 1:] |= diff_x & tinted[:, 1:] & ~tinted[:, :-1]  # the segment's side next to VOID
    edge[:-1, :] |= diff_y
    edge[1:, :] |= diff_y & tinted[1:, :] & ~tinted[:-1, :]
    edge &= tinted
    dark = np.clip(palette.astype(np.float32) * 0.55 + 0.5, 0, 255).astype(np.uint8)
    out[edge] = dark[index[edge]]
    if draw_labels:
        _draw_labels(out, ids, result, categories, colors, min_label_area)
    return out


def _segment_index(ids: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """(H, W) position + 1 of each pixel's id in the sorted ``seg_ids`` (0: not listed)."""
    if len(seg_ids) == 0:
        return np.zeros(ids.shape, dtype=np.int32)
    top = int(max(seg_ids[-1], ids.max()))
    if top < 1 << 22 and ids.min() >= 0:  # a direct lookup table
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[seg_ids] = np.arange(1, len(seg_ids) + 1, dtype=np.int32)
        return np.take(lut, ids)
    pos = np.clip(np.searchsorted(seg_ids, ids), 0, len(seg_ids) - 1)
    return np.where(seg_ids[pos] == ids, pos + 1, 0).astype(np.int32)


def _draw_labels(out: np.ndarray, ids: np.ndarray, result: PanopticResult, categories: CategoryTable,
                 colors: dict[int, tuple[int, int, int]], min_area: int) -> None:
    height, width = ids.shape
    scale = float(np.clip(min(height, width) / 1400.0, 0.35, 0.9))
    thickness = 1 if scale < 0.75 else 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    pad = max(2, int(round(4 * scale)))
    placed: list[tuple[int, int, int, int]] = []
    for seg in sorted(result.segments_info, key=lambda s: -s["area"]):
        if seg["area"] < min_area:
            continue
        label = categories.label_of_id.get(seg["category_id"])
        name = categories.by_label[label].name if label is not None else str(seg["category_id"])
        if seg.get("score") is not None:
            name = f"{name} {seg['score']:.2f}"
        x, y, w, h = seg["bbox"]
        step = max(1, max(w, h) // 96)
        anchor = _label_anchor(ids[y:y + h:step, x:x + w:step] == seg["id"], step)
        if anchor is None:
            continue
        cx, cy = anchor[0] + x, anchor[1] + y
        (tw, th), base = cv2.getTextSize(name, font, scale, thickness)
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        for shift in (0, -1, 1, -2, 2):
            x0 = int(np.clip(cx - bw // 2, 0, max(width - bw, 0)))
            y0 = int(np.clip(cy - bh // 2 + shift * (bh + 2), 0, max(height - bh, 0)))
            rect = (x0, y0, min(x0 + bw, width), min(y0 + bh, height))
            if not any(rect[0] < q[2] and q[0] < rect[2] and rect[1] < q[3] and q[1] < rect[3] for q in placed):
                break
        else:
            continue  # no free place near the segment: leave the name out
        placed.append(rect)
        x0, y0, x1, y1 = rect
        box = out[y0:y1, x0:x1].astype(np.float32)
        shade = np.array(colors[seg["id"]], dtype=np.float32) * 0.35
        out[y0:y1, x0:x1] = np.clip(box * 0.25 + shade * 0.75, 0, 255).astype(np.uint8)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colors[seg["id"]], 1, cv2.LINE_AA)
        cv2.putText(out, name, (x0 + pad, y0 + pad + th), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def save_overlay(path: str | os.PathLike, image_bgr: np.ndarray, result: PanopticResult, categories: CategoryTable,
                 **kwargs) -> Path:
    """:func:`overlay` written to ``path`` (format by suffix, PNG recommended; parent folders
    created, written atomically) -> the path."""
    path = Path(path)
    picture = overlay(image_bgr, result, categories, **kwargs)
    ok, buf = cv2.imencode(path.suffix or ".png", picture)
    if not ok:
        raise OSError(f"cannot encode an overlay as {path.suffix or '.png'} for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return path


