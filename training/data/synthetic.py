"""A small synthetic COCO-panoptic dataset: coloured shapes (things) on textured regions (stuff).

It is written in the genuine COCO panoptic layout (REFERENCE §7) so that the same reader, training and evaluation code runs on it and on real COCO::

    root/annotations/panoptic_train2017.json      root/annotations/panoptic_val2017.json
    root/annotations/panoptic_train2017/<name>.png root/annotations/panoptic_val2017/<name>.png
    root/train2017/<name>.jpg                      root/val2017/<name>.jpg

Content (designed to be learnable by a small network trained from scratch on a CPU):

* 4 thing classes, each a shape with its own colour family: ``circle`` (red), ``rectangle``
  (blue, slightly rotated), ``triangle`` (orange/yellow) and ``ellipse`` (magenta/purple, rotated).
  Each instance varies in hue/saturation/value within its family, has a linear shading gradient
  and pixel noise. 1..6 instances per image, extents of about 18..90 px at 256x192 (scaled with
  the short side for other sizes). Instances overlap and touch; later ones occlude earlier ones,
  and a segment is only an instance's visible pixels. Instances (and stuff regions) with fewer
  than ``MIN_SEGMENT_AREA`` visible pixels are removed before the image is rendered, so the image
  never shows an unannotated shape.
* 3 stuff classes, textured regions: ``sky`` (pale blue smooth gradient), ``grass`` (green noise
  texture) and ``wall`` (grey bricks). 2 or 3 large regions split by wavy boundaries, horizontal
  or vertical bands.
* About 1 image in 6 has a crowd: a cluster of 5..10 small shapes of one thing class, annotated as
  ONE segment with ``iscrowd = 1``.
* VOID (id 0) pixels: in about 1 image in 3 a thin band along one stuff boundary, and in about
  1 image in 4 a small noisy "clutter" blob (both only where no thing is on top).

Category ids are deliberately non-contiguous and things/stuff are interleaved in the JSON order
(``SYNTHETIC_CATEGORIES``), which exercises the "things first, then stuff, in JSON order"
contiguous mapping of :class:`runtime.panoptic_io.CategoryTable`: contiguous labels are
circle 0, rectangle 1, triangle 2, ellipse 3, sky 4, grass 5, wall 6.

Everything is deterministic in ``seed``: image ``i`` of a split uses its own generator
``np.random.default_rng([seed, split_index, i])``, so the same seed gives byte-identical JSON,
PNGs and JPEGs, and the val split does not depend on ``num_train``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
import cv2
import numpy as np

from pfpn.runtime.files import atomic_write_bytes, atomic_write_json
from pfpn.runtime.panoptic_io import write_panoptic_png

# JSON order: things and stuff interleaved, ids non-contiguous (on purpose, see module docstring).
SYNTHETIC_CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape", "isthing": 1, "color": [220, 20, 60]},
    {"id": 10, "name": "sky", "supercategory": "background", "isthing": 0, "color": [135, 206, 235]},
    {"id": 2, "name": "rectangle", "supercategory": "shape", "isthing": 1, "color": [0, 0, 230]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "isthing": 1, "color": [250, 170, 30]},
    {"id": 11, "name": "grass", "supercategory": "background", "isthing": 0, "color": [60, 160, 60]},
    {"id": 5, "name": "ellipse", "supercategory": "shape", "isthing": 1, "color": [180, 40, 200]},
    {"id": 12, "name": "wall", "supercategory": "background", "isthing": 0, "color": [128, 128, 128]},
]
THING_NAMES = ("circle", "rectangle", "triangle", "ellipse")
STUFF_NAMES = ("sky", "grass", "wall")
_CAT_ID = {c["name"]: c["id"] for c in SYNTHETIC_CATEGORIES}

MIN_SEGMENT_AREA = 40  # visible pixels; smaller instances / crowds / stuff regions are dropped
JPEG_QUALITY = 95
_SPLITS = ("train", "val")
_IMAGE_ID_BASE = {"train": 1, "val": 1_000_001}

# Colour families in OpenCV HSV (H 0..179, S and V 0..255): (h_lo, h_hi, s_lo, s_hi, v_lo, v_hi).
_THING_HSV = {
    "circle": (-6, 6, 170, 255, 160, 245),       # red (hue wraps around 0)
    "rectangle": (108, 122, 170, 255, 140, 235),  # blue
    "triangle": (17, 29, 170, 255, 190, 255),     # orange / yellow
    "ellipse": (140, 160, 150, 255, 150, 240),    # magenta / purple
}


@dataclass(frozen=True)
class SyntheticSplit:
    """Where one split was written and what it holds."""

    name: str  # "train" or "val"
    json_path: Path  # annotations/panoptic_<name>2017.json
    png_dir: Path  # annotations/panoptic_<name>2017/
    image_dir: Path  # <name>2017/
    num_images: int
    num_segments: int  # all segments (things, crowds and stuff) over the split


@dataclass(frozen=True)
class SyntheticDataset:
    """Return value of :func:`generate_synthetic_panoptic`."""

    root: Path
    splits: dict[str, SyntheticSplit]


# ----------------------------------------------------------------------------- small helpers


def _hsv2bgr(h: float, s: float, v: float) -> np.ndarray:
    """One OpenCV-HSV colour -> (3,) float32 BGR."""
    hsv = np.array([[[int(round(h)) % 180, int(np.clip(round(s), 0, 255)), int(np.clip(round(v), 0, 255))]]],
                   dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 smooth noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = max(2, int(math.ceil(h / cell)) + 1), max(2, int(math.ceil(w / cell)) + 1)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def _thing_colour(rng: np.random.Generator, cls: str) -> np.ndarray:
    h_lo, h_hi, s_lo, s_hi, v_lo, v_hi = _THING_HSV[cls]
    return _hsv2bgr(rng.uniform(h_lo, h_hi), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi))


# ----------------------------------------------------------------------------- stuff textures


def _texture_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue = rng.uniform(96, 108)
    top = _hsv2bgr(hue + rng.uniform(-3, 3), rng.uniform(55, 95), rng.uniform(205, 240))
    bottom = _hsv2bgr(hue + rng.uniform(-3, 3), rng.uniform(15, 45), rng.uniform(235, 255))
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = top * (1.0 - t) + bottom * t
    img = img + 4.0 * _smooth_noise(rng, h, w, 48.0)[..., None]
    return np.broadcast_to(img, (h, w, 3)).astype(np.float32)


def _texture_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _hsv2bgr(rng.uniform(45, 65), rng.uniform(140, 200), rng.uniform(105, 150))
    coarse = 1.0 + 0.18 * _smooth_noise(rng, h, w, 10.0)
    fine = 1.0 + 0.16 * rng.standard_normal((h, w), dtype=np.float32)
    return base * (coarse * fine)[..., None]


def _texture_wall(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    v = rng.uniform(115, 165)
    base = _hsv2bgr(rng.uniform(0, 179), rng.uniform(0, 25), v)
    bh = max(4, int(round(rng.uniform(9, 14) * s)))
    bw = max(8, int(round(bh * rng.uniform(1.8, 2.6))))
    t = max(1, int(round(1.5 * s)))
    yy, xx = np.mgrid[0:h, 0:w]
    row = yy // bh
    xs = xx + (row % 2) * (bw // 2)
    col = xs // bw
    jitter = rng.uniform(-16, 16, size=(row.max() + 1, col.max() + 1)).astype(np.float32)
    img = base + jitter[row, col][..., None]
    mortar = ((yy % bh) < t) | ((xs % bw) < t)
    img[mortar] = base + rng.choice([-55.0, 55.0])
    return img


def _stuff_texture(name: str, rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    if name == "sky":
        return _texture_sky(rng, h, w)
    if name == "grass":
        return _texture_grass(rng, h, w)
    return _texture_wall(rng, h, w, s)


# ----------------------------------------------------------------------------- shapes


def _draw_shape(cls: str, mask: np.ndarray, rng: np.random.Generator, cx: float, cy: float,
                size: float) -> None:
    """Rasterise one shape of class ``cls`` (extent about ``size`` px) into ``mask`` (value 1)."""
    r = size / 2.0
    if cls == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), max(1, int(round(r))), 1, -1)
    elif cls == "rectangle":
        long_side, short_side = size, size * rng.uniform(0.5, 1.0)
        wh = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        pts = cv2.boxPoints(((cx, cy), wh, rng.uniform(-20, 20)))
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == "triangle":
        a0 = rng.uniform(0, 360)
        angles = np.deg2rad(a0 + np.array([0.0, 120.0, 240.0]) + rng.uniform(-15, 15, size=3))
        radii = r * rng.uniform(0.9, 1.1, size=3)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == "ellipse":
        axes = (max(1, int(round(r))), max(1, int(round(r * rng.uniform(0.4, 0.7)))))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:  # pragma: no cover - internal
        raise ValueError(cls)


@dataclass
class _Part:
    """One painted shape: its full-image mask and its colour parameters."""

    mask: np.ndarray  # (H, W) bool
    colour: np.ndarray  # (3,) float32 BGR
    centre: tuple[float, float]
    radius: float
    shade_dir: tuple[float, float]
    shade_gain: float


@dataclass
class _Layer:
    """A thing segment to be: one instance (one part) or a crowd (several parts)."""

    cls: str
    iscrowd: bool
    parts: list[_Part]

    @property
    def mask(self) -> np.ndarray:
        m = self.parts[0].mask.copy()
        for p in self.parts[1:]:
            m |= p.mask
        return m


def _make_part(rng: np.random.Generator, cls: str, h: int, w: int, cx: float, cy: float,
               size: float) -> _Part:
    m = np.zeros((h, w), dtype=np.uint8)
    _draw_shape(cls, m, rng, cx, cy, size)
    a = rng.uniform(0, 2 * math.pi)
    return _Part(m.astype(bool), _thing_colour(rng, cls), (cx, cy), max(size / 2.0, 1.0),
                 (math.cos(a), math.sin(a)), rng.uniform(0.08, 0.25))


def _paint_part(img: np.ndarray, part: _Part, where: np.ndarray, rng: np.random.Generator) -> None:
    """Paint ``part`` (shaded colour + noise) into ``img`` (H, W, 3) float32 on ``where`` pixels."""
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        return
    t = ((xs - part.centre[0]) * part.shade_dir[0] + (ys - part.centre[1]) * part.shade_dir[1]) / part.radius
    shade = 1.0 + part.shade_gain * np.clip(t, -1.0, 1.0)
    noise = rng.normal(0.0, 5.0, size=(ys.size, 3))
    img[ys, xs] = (part.colour[None, :] * shade[:, None] + noise).astype(np.float32)


# ----------------------------------------------------------------------------- one image


def make_synthetic_sample(rng: np.random.Generator, height: int, width: int
                          ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one synthetic image and its panoptic annotation.

    Returns ``(image, ids, segments_info)``: image (H, W, 3) uint8 BGR, ids (H, W) int64 segment
    ids (0 = VOID), segments_info a list of COCO dicts ``{id, category_id, area, bbox, iscrowd}``
    (bbox ``[x, y, w, h]``, the tight box of the segment's pixels).
    """
    h, w = int(height), int(width)
    if h < 8 or w < 8:
        raise ValueError(f"image size must be at least 8x8, got {w}x{h}")
    s = min(h, w) / 192.0  # shape-size scale (1.0 at 256x192)

    # --- stuff regions: 2 or 3 bands split by wavy boundaries
    n_regions = int(rng.integers(2, 4))
    stuff_order = [STUFF_NAMES[k] for k in rng.permutation(len(STUFF_NAMES))[:n_regions]]
    horizontal = rng.random() < 0.7  # boundaries run left-right (bands stacked vertically)
    along_len, across_len = (w, h) if horizontal else (h, w)
    along = np.arange(along_len, dtype=np.float32)
    fracs = [rng.uniform(0.3, 0.7)] if n_regions == 2 else [rng.uniform(0.22, 0.4), rng.uniform(0.6, 0.78)]
    boundaries = []
    for f in fracs:
        amp = rng.uniform(0.0, 0.07) * across_len
        wavelength = rng.uniform(0.4, 1.5) * along_len
        tilt = rng.uniform(-0.08, 0.08) * across_len
        b = (f * across_len + amp * np.sin(2 * math.pi * along / wavelength + rng.uniform(0, 2 * math.pi))
             + tilt * (along / max(along_len - 1, 1) - 0.5))
        boundaries.append(b.astype(np.float32))
    across = np.arange(across_len, dtype=np.float32)
    if horizontal:
        acr = across[:, None]  # across = y (rows), along = x (cols)
        bmaps = [b[None, :] for b in boundaries]
    else:
        acr = across[None, :]
        bmaps = [b[:, None] for b in boundaries]
    region = np.zeros((h, w), dtype=np.int64)
    for bm in bmaps:
        region += (acr > bm)

    img = np.zeros((h, w, 3), dtype=np.float32)
    for k, name in enumerate(stuff_order):
        sel = region == k
        if sel.any():
            img[sel] = _stuff_texture(name, rng, h, w, s)[sel]

    void = np.zeros((h, w), dtype=bool)
    if rng.random() < 1.0 / 3.0:  # thin VOID band along one boundary
        k = int(rng.integers(len(bmaps)))
        void |= np.abs(acr - bmaps[k]) <= rng.uniform(1.0, 2.5)
    if rng.random() < 0.25:  # small VOID "clutter" blob
        blob = np.zeros((h, w), dtype=np.uint8)
        bx, by = rng.uniform(0, w), rng.uniform(0, h)
        for _ in range(int(rng.integers(1, 4))):
            rr = max(2, int(round(rng.uniform(5, 12) * s)))
            cv2.circle(blob, (int(round(bx + rng.uniform(-8, 8) * s)), int(round(by + rng.uniform(-8, 8) * s))),
                       rr, 1, -1)
        blob_b = blob.astype(bool)
        col = rng.uniform(50, 200, size=3).astype(np.float32)
        n = int(blob_b.sum())
        img[blob_b] = col + rng.normal(0.0, 28.0, size=(n, 3)).astype(np.float32)
        void |= blob_b

    # --- things: instances (and maybe one crowd), in drawing order
    layers: list[_Layer] = []
    n_inst = int(rng.integers(1, 7))
    for _ in range(n_inst):
        cls = THING_NAMES[int(rng.integers(len(THING_NAMES)))]
        size = rng.uniform(18, 90) * s
        if layers and rng.random() < 0.4:  # touch / overlap the previous instance
            prev = layers[-1].parts[0]
            a = rng.uniform(0, 2 * math.pi)
            d = (prev.radius + size / 2.0) * rng.uniform(0.55, 1.0)
            cx = float(np.clip(prev.centre[0] + d * math.cos(a), 0, w - 1))
            cy = float(np.clip(prev.centre[1] + d * math.sin(a), 0, h - 1))
        else:
            cx, cy = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
        layers.append(_Layer(cls, False, [_make_part(rng, cls, h, w, cx, cy, size)]))
    if rng.random() < 1.0 / 6.0:  # a crowd: several small shapes of one class, one segment
        cls = THING_NAMES[int(rng.integers(len(THING_NAMES)))]
        ccx, ccy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
        spread = rng.uniform(15, 30) * s
        parts = []
        for _ in range(int(rng.integers(5, 11))):
            a, d = rng.uniform(0, 2 * math.pi), spread * math.sqrt(rng.random())
            parts.append(_make_part(rng, cls, h, w, ccx + d * math.cos(a), ccy + d * math.sin(a),
                                    rng.uniform(8, 16) * s))
        layers.insert(int(rng.integers(len(layers) + 1)), _Layer(cls, True, parts))

    # Visibility: later layers occlude earlier ones. Drop layers whose visible area is too small
    # and recompute (dropping only uncovers pixels of earlier layers), until all are kept.
    masks = [ly.mask for ly in layers]
    keep = list(range(len(layers)))
    while True:
        owner = np.full((h, w), -1, dtype=np.int64)
        for j, li in enumerate(keep):
            owner[masks[li]] = j
        areas = np.bincount(owner[owner >= 0], minlength=len(keep))
        small = [j for j in range(len(keep)) if areas[j] < MIN_SEGMENT_AREA]
        if not small:
            break
        keep = [li for j, li in enumerate(keep) if j not in small]

    for j, li in enumerate(keep):
        vis = owner == j
        for p in layers[li].parts:
            _paint_part(img, p, vis & p.mask, rng)

    img += rng.normal(0.0, 2.5, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    # --- segments and ids
    thing_any = owner >= 0
    void &= ~thing_any
    segs: list[tuple[np.ndarray, int, int]] = []  # (mask, category_id, iscrowd)
    for j, li in enumerate(keep):
        segs.append((owner == j, _CAT_ID[layers[li].cls], int(layers[li].iscrowd)))
    for k, name in enumerate(stuff_order):
        m = (region == k) & ~thing_any & ~void
        if m.sum() >= MIN_SEGMENT_AREA:
            segs.append((m, _CAT_ID[name], 0))
        else:
            void |= m  # a sliver of stuff too small to annotate becomes VOID

    seg_ids: list[int] = []
    used = set()
    while len(seg_ids) < len(segs):
        sid = int(rng.integers(1, 256**3))
        if sid not in used:
            used.add(sid)
            seg_ids.append(sid)
    ids = np.zeros((h, w), dtype=np.int64)
    segments_info = []
    for sid, (m, cat, crowd) in zip(seg_ids, segs):
        ids[m] = sid
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        segments_info.append({
            "id": sid, "category_id": cat, "area": int(ys.size),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "iscrowd": crowd,
        })
    return image, ids, segments_info


# ----------------------------------------------------------------------------- the dataset


def generate_synthetic_panoptic(root: str | os.PathLike, *, num_train: int, num_val: int,
                                height: int = 192, width: int = 256, seed: int = 0,
                                progress: bool = True) -> SyntheticDataset:
    """Write a synthetic COCO panoptic dataset under ``root`` (layout in the module docstring).

    ``num_train`` / ``num_val`` images of ``height`` x ``width`` pixels are drawn from ``seed``
    (same seed -> byte-identical files). Existing files of the same names are overwritten. Each
    split's JSON is written last (atomically), so a JSON file present means its split is complete.
    ``progress`` shows a tqdm bar per split. Returns a :class:`SyntheticDataset` with the paths.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    root = Path(root)
    splits = {}
    for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val))):
        png_dir = root / "annotations" / f"panoptic_{split}2017"
        image_dir = root / f"{split}2017"
        json_path = root / "annotations" / f"panoptic_{split}2017.json"
        png_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        num_segments = 0
        it: range | object = range(count)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"synthetic {split}", unit="img")
        for i in it:  # type: ignore[union-attr]
            rng = np.random.default_rng([seed, split_index, i])
            image, ids, segments_info = make_synthetic_sample(rng, height, width)
            image_id = _IMAGE_ID_BASE[split] + i
            name = f"{image_id:012d}"
            ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
            if not ok:  # pragma: no cover
                raise OSError(f"JPEG encoding failed for {name}")
            atomic_write_bytes(image_dir / f"{name}.jpg", buf.tobytes())
            write_panoptic_png(png_dir / f"{name}.png", ids)
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": int(height), "width": int(width)})
            annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments_info})
            num_segments += len(segments_info)
        atomic_write_json(json_path, {
            "info": {"description": "Synthetic shapes panoptic dataset (training/data/synthetic.py)",
                     "version": "1.0", "seed": int(seed), "split": split},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": SYNTHETIC_CATEGORIES,
        })
        splits[split] = SyntheticSplit(split, json_path, png_dir, image_dir, count, num_segments)
    return SyntheticDataset(root, splits)


__all__ = [
    "SYNTHETIC_CATEGORIES", "THING_NAMES", "STUFF_NAMES", "MIN_SEGMENT_AREA",
    "SyntheticSplit", "SyntheticDataset", "make_synthetic_sample", "generate_synthetic_panoptic",
]
