"""Panoptic quality (PQ) evaluation in the COCO panoptic format, torch-free (numpy only).

The rules are those of the reference COCO evaluation (panopticapi's ``pq_compute``), quirks
included, so that the numbers agree with it to floating-point rounding:

* Segment ids come from the PNGs (``id = R + 256 G + 256^2 B``); id 0 is VOID.
* Predicted segment areas are recounted from the prediction PNG (the JSON ``area`` is
  ignored). Every non-void id in a prediction PNG must be listed in its ``segments_info``,
  every listed predicted segment must occur in the PNG, and every predicted category must be
  one of the ground-truth categories; otherwise :class:`ValueError`.
* Ground-truth areas are taken from the ground-truth JSON ``area`` field (as panopticapi does;
  for COCO they equal the PNG pixel counts). Ground-truth ids present in the PNG but not in
  the JSON are ignored pixels that are *not* void; listed ground-truth segments that do not
  occur in the PNG simply go unmatched (FN). Neither is an error, as in panopticapi.
* A ground-truth and a predicted segment of the same category match when IoU > 0.5, where
  ``union = |pred| + |gt| - |pred & gt| - |pred & gt_void|``.
* Crowd ground truth (``iscrowd == 1``) is never matched and never an FN.
* An unmatched prediction is not an FP when
  ``(|pred & gt_void| + |pred & crowd_c|) / |pred| > 0.5``, where ``crowd_c`` is the *last*
  crowd segment (in ``segments_info`` order) of the prediction's category in that image.
* Per category over all images: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 when
  TP = 0), RQ = TP / (TP + FP/2 + FN/2). All / Things / Stuff average over the categories with
  TP + FP + FN > 0; the others get zeros and are not counted in ``n``.

Results are fractions (not x100). Deviations from panopticapi, only where it would crash: an
All/Things/Stuff group with no counted category gives zeros with ``n = 0`` (panopticapi
divides by zero), and in-memory ground-truth segments without ``area`` / ``iscrowd`` use the
id map's pixel count / 0 (panopticapi would raise KeyError).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pfpn.runtime.categories import Category, CategoryTable
from pfpn.runtime.panoptic_io import VOID_ID, read_panoptic_png

__all__ = [
    "OFFSET",
    "PQStatCat",
    "PQStat",
    "PQResult",
    "normalize_categories",
    "pq_stat_single",
    "pq_compute",
    "format_pq_table",
]

OFFSET = 256**3  # ids are < 256**3, so gt_id * OFFSET + pred_id is a unique pair key (< 2**48)

CategoriesLike = CategoryTable | Mapping[int, Any] | Iterable[Any]


@dataclass
class PQStatCat:
    """Accumulated counts of one category."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: "PQStatCat") -> "PQStatCat":
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category TP / FP / FN counts and IoU sums, keyed by COCO category id.

    Add the stats of several images with ``+=``; turn them into metrics with :meth:`result`.
    """

    def __init__(self) -> None:
        self.per_cat: defaultdict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.per_cat[category_id]

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for cat_id, stat in other.per_cat.items():
            self.per_cat[cat_id] += stat
        return self

    def __add__(self, other: "PQStat") -> "PQStat":
        out = PQStat()
        out += self
        out += other
        return out

    def __repr__(self) -> str:
        return f"PQStat({dict(self.per_cat)!r})"

    def average(self, categories: CategoriesLike, isthing: bool | None = None
                ) -> tuple[dict[str, float | int], dict[int, dict[str, float | int]]]:
        """Average over the categories (all, things only or stuff only) that have TP+FP+FN > 0.

        Returns ``({'pq', 'sq', 'rq', 'n'}, per_class)`` where ``per_class[category_id]`` has
        pq, sq, rq (zeros for a category without TP/FP/FN) and the raw tp, fp, fn, iou.
        """
        cats = normalize_categories(categories)
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float | int]] = {}
        for cat_id, info in cats.items():
            if isthing is not None and bool(info["isthing"]) != isthing:
                continue
            s = self.per_cat.get(cat_id, PQStatCat())
            entry: dict[str, float | int] = {"pq": 0.0, "sq": 0.0, "rq": 0.0,
                                             "tp": s.tp, "fp": s.fp, "fn": s.fn, "iou": float(s.iou)}
            per_class[cat_id] = entry
            if s.tp + s.fp + s.fn == 0:
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            entry["pq"] = s.iou / denom
            entry["sq"] = s.iou / s.tp if s.tp != 0 else 0.0
            entry["rq"] = s.tp / denom
            pq += entry["pq"]
            sq += entry["sq"]
            rq += entry["rq"]
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def result(self, categories: CategoriesLike) -> "PQResult":
        cats = normalize_categories(categories)
        all_, per_class = self.average(cats, None)
        things, _ = self.average(cats, True)
        stuff, _ = self.average(cats, False)
        return PQResult(all=all_, things=things, stuff=stuff, per_class=per_class, categories=cats)


@dataclass(frozen=True)
class PQResult:
    """PQ / SQ / RQ as fractions (x100 is only for display).

    ``all``, ``things``, ``stuff``: ``{'pq', 'sq', 'rq', 'n'}``; ``per_class``: category id ->
    ``{'pq', 'sq', 'rq', 'tp', 'fp', 'fn', 'iou'}``; ``categories``: category id ->
    ``{'id', 'name', 'isthing'}`` in the ground truth's order. ``result["All"]``,
    ``result["Things"]``, ``result["Stuff"]`` and ``result["per_class"]`` work too, as for
    panopticapi's result dict.
    """

    all: dict[str, float | int]
    things: dict[str, float | int]
    stuff: dict[str, float | int]
    per_class: dict[int, dict[str, float | int]]
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)

    _KEYS = {"All": "all", "Things": "things", "Stuff": "stuff", "per_class": "per_class"}

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, self._KEYS[key])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"All": ..., "Things": ..., "Stuff": ..., "per_class": {"<id>": ...}}."""
        per_class = {}
        for cat_id, entry in self.per_class.items():
            info = self.categories.get(cat_id, {})
            per_class[str(cat_id)] = {**entry, "name": info.get("name", ""),
                                      "isthing": bool(info.get("isthing", False))}
        return {"All": dict(self.all), "Things": dict(self.things), "Stuff": dict(self.stuff),
                "per_class": per_class}


def normalize_categories(categories: CategoriesLike) -> dict[int, dict[str, Any]]:
    """Category id -> {'id', 'name', 'isthing'} from a CategoryTable, a mapping id -> dict or
    Category, or a sequence of COCO category dicts / Category objects (order is kept)."""
    if isinstance(categories, CategoryTable):
        items: Iterable[Any] = categories.by_label
    elif isinstance(categories, Mapping):
        items = categories.values()
    else:
        items = categories
    out: dict[int, dict[str, Any]] = {}
    for c in items:
        if isinstance(c, Category):
            cid, name, isthing = c.id, c.name, c.isthing
        else:
            cid, name, isthing = int(c["id"]), str(c.get("name", "")), c["isthing"] == 1
        out[int(cid)] = {"id": int(cid), "name": name, "isthing": bool(isthing)}
    return out


def _as_id_map(ids: np.ndarray, what: str, image: Any) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 2:
        raise ValueError(f"image {image}: {what} id map must be (H, W), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"image {image}: {what} id map must be integer, got {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= OFFSET):
        raise ValueError(f"image {image}: {what} segment ids must lie in [0, 256**3)")
    return a.astype(np.uint64, copy=False)


def pq_stat_single(gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
                   pred_ids: np.ndarray, pred_segments: Sequence[Mapping[str, Any]],
                   categories: CategoriesLike, *, image_id: Any = None) -> PQStat:
    """PQ counts of one image from in-memory (H, W) id maps and ``segments_info`` lists.

    ``gt_segments`` entries need ``id``, ``category_id``, ``iscrowd`` and ``area`` (the area is
    used as given, like panopticapi; if absent, the pixel count in ``gt_ids``); entries of
    ``pred_segments`` need ``id`` and ``category_id``. ``image_id`` only names the image in
    error messages. The inputs are not modified.
    """
    image = "<in-memory>" if image_id is None else image_id
    cats = normalize_categories(categories)
    gt = _as_id_map(gt_ids, "ground-truth", image)
    pred = _as_id_map(pred_ids, "predicted", image)
    if gt.shape != pred.shape:
        raise ValueError(f"image {image}: ground truth is {gt.shape[1]}x{gt.shape[0]} but the "
                         f"prediction is {pred.shape[1]}x{pred.shape[0]} (WxH)")

    # Later duplicates of an id replace earlier ones (as a dict comprehension does).
    gt_segms = {int(s["id"]): s for s in gt_segments}
    pred_segms = {int(s["id"]): s for s in pred_segments}

    # Pixel counts of every (gt id, pred id) pair, exact in uint64.
    keys, counts = np.unique(gt * np.uint64(OFFSET) + pred, return_counts=True)
    gt_of = (keys // np.uint64(OFFSET)).tolist()
    pred_of = (keys % np.uint64(OFFSET)).tolist()
    pairs: dict[tuple[int, int], int] = dict(zip(zip(gt_of, pred_of), counts.tolist()))
    pred_area: dict[int, int] = defaultdict(int)
    gt_count: dict[int, int] = defaultdict(int)
    for (g, p), c in pairs.items():
        pred_area[p] += c
        gt_count[g] += c

    # Prediction sanity checks, in the reference's order (ascending PNG id).
    for p in sorted(pred_area):
        if p not in pred_segms:
            if p == VOID_ID:
                continue
            raise ValueError(f"image {image}: segment id {p} is in the prediction PNG but not in "
                             "its segments_info")
        cat = pred_segms[p]["category_id"]
        if cat not in cats:
            raise ValueError(f"image {image}: predicted segment id {p} has unknown category_id {cat}")
    missing = [p for p in pred_segms if p not in pred_area]
    if missing:
        raise ValueError(f"image {image}: predicted segment id(s) {missing} are in segments_info "
                         "but not in the prediction PNG")

    def gt_area(g: int) -> int:
        area = gt_segms[g].get("area")
        return gt_count.get(g, 0) if area is None else area

    def is_crowd(seg: Mapping[str, Any]) -> bool:
        return seg.get("iscrowd", 0) == 1

    stat = PQStat()
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (g, p), inter in pairs.items():
        gs = gt_segms.get(g)
        ps = pred_segms.get(p)
        if gs is None or ps is None or is_crowd(gs) or gs["category_id"] != ps["category_id"]:
            continue
        union = pred_area[p] + gt_area(g) - inter - pairs.get((VOID_ID, p), 0)
        if union <= 0:
            raise ValueError(f"image {image}: ground-truth segment id {g} has area {gt_area(g)} in "
                             f"its JSON, inconsistent with its {gt_count.get(g, 0)} pixels in the PNG")
        iou = inter / union
        if iou > 0.5:
            s = stat[gs["category_id"]]
            s.tp += 1
            s.iou += iou
            gt_matched.add(g)
            pred_matched.add(p)

    # Unmatched non-crowd GT -> FN; remember the last crowd segment of each category.
    crowd_of_category: dict[Any, int] = {}
    for g, gs in gt_segms.items():
        if g in gt_matched:
            continue
        if is_crowd(gs):
            crowd_of_category[gs["category_id"]] = g
            continue
        stat[gs["category_id"]].fn += 1

    # Unmatched predictions -> FP unless mostly on void + that category's crowd region.
    for p, ps in pred_segms.items():
        if p in pred_matched:
            continue
        ignored = pairs.get((VOID_ID, p), 0)
        crowd = crowd_of_category.get(ps["category_id"])
        if crowd is not None:
            ignored += pairs.get((crowd, p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stat[ps["category_id"]].fp += 1
    return stat


def agreement_with_reference(reference: Sequence[tuple[np.ndarray, Sequence[Mapping[str, Any]]]],
                             predictions: Sequence[tuple[np.ndarray, Sequence[Mapping[str, Any]]]],
                             categories: CategoriesLike) -> dict[str, float]:
    """How closely one predictor's panoptic output follows another's on the same images, without
    ground truth: PQ of ``predictions`` scored against ``reference`` taken as the ground truth
    (100 = the same segments), and the share of pixels with the same segment id.

    reference, predictions: per image (id map, segments_info) -> {"pq", "pixels"}.
    """
    if len(reference) != len(predictions):
        raise ValueError(f"{len(reference)} reference images but {len(predictions)} predictions")
    stat = PQStat()
    same = total = 0
    for i, ((ref_ids, ref_segments), (ids, segments)) in enumerate(zip(reference, predictions)):
        gt_segments = [{"id": s["id"], "category_id": s["category_id"], "iscrowd": 0, "area": s["area"]}
                       for s in ref_segments]
        stat += pq_stat_single(ref_ids, gt_segments, ids, segments, categories, image_id=i)
        same += int(np.count_nonzero(np.asarray(ref_ids) == np.asarray(ids)))
        total += int(np.asarray(ref_ids).size)
    return {"pq": 100.0 * stat.result(categories).all["pq"], "pixels": same / max(total, 1)}


def _load_json(path: str | os.PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _default_folder(json_path: str | os.PathLike) -> str:
    path = os.fspath(json_path)
    return path[: -len(".json")] if path.endswith(".json") else path


def pq_compute(gt_json_path: str | os.PathLike, pred_json_path: str | os.PathLike,
               gt_folder: str | os.PathLike | None = None,
               pred_folder: str | os.PathLike | None = None, *,
               progress: bool = False, workers: int = 1) -> PQResult:
    """PQ of a COCO panoptic prediction (JSON + PNG folder) against the ground truth.

    Images are paired by ``image_id``; every ground-truth image needs a prediction (extra
    predictions are ignored). The categories are the ground truth JSON's. A folder left as
    None is the JSON path without ``.json`` (as in panopticapi). ``progress`` prints a line to
    stderr every 100 images; ``workers`` > 1 reads and counts images in threads (the result
    does not depend on it).
    """
    start = time.monotonic()
    gt_json = _load_json(gt_json_path)
    pred_json = _load_json(pred_json_path)
    gt_folder = _default_folder(gt_json_path) if gt_folder is None else os.fspath(gt_folder)
    pred_folder = _default_folder(pred_json_path) if pred_folder is None else os.fspath(pred_folder)
    for what, folder in (("ground-truth", gt_folder), ("prediction", pred_folder)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} PNG folder {folder} does not exist")
    categories = normalize_categories(gt_json["categories"])

    pred_by_image = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    pairs = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise ValueError(f"no prediction for the image with id {image_id}")
        pairs.append((gt_ann, pred_by_image[image_id]))

    def one(pair: tuple[dict, dict]) -> PQStat:
        gt_ann, pred_ann = pair
        return pq_stat_single(
            read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"])), gt_ann["segments_info"],
            read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"])), pred_ann["segments_info"],
            categories, image_id=gt_ann["image_id"])

    stats: Iterator[PQStat]
    if workers > 1:
        pool = ThreadPoolExecutor(max_workers=workers)
        stats = pool.map(one, pairs)  # in order: the sums do not depend on scheduling
    else:
        pool = None
        stats = map(one, pairs)
    total = PQStat()
    try:
        for i, stat in enumerate(stats, 1):
            total += stat
            if progress and (i % 100 == 0 or i == len(pairs)):
                print(f"PQ: {i}/{len(pairs)} images ({time.monotonic() - start:.1f} s)",
                      file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return total.result(categories)


def format_pq_table(result: PQResult, *, per_category: bool = False) -> str:
    """The All / Things / Stuff table (x100, 2 decimals), optionally with one row per category."""
    lines = [f"{'':14s}| {'PQ':>7s} {'SQ':>7s} {'RQ':>7s} {'N':>5s}", "-" * 14 + "+" + "-" * 30]
    for name, row in (("All", result.all), ("Things", result.things), ("Stuff", result.stuff)):
        lines.append(f"{name:14s}| {100 * row['pq']:7.2f} {100 * row['sq']:7.2f} "
                     f"{100 * row['rq']:7.2f} {row['n']:5d}")
    if per_category:
        lines.append("")
        lines.append(f"{'category':24s} {'id':>5s} {'kind':>6s} | {'PQ':>7s} {'SQ':>7s} {'RQ':>7s} "
                     f"{'TP':>6s} {'FP':>6s} {'FN':>6s}")
        lines.append("-" * 88)
        for cat_id, entry in result.per_class.items():
            info = result.categories.get(cat_id, {})
            kind = "thing" if info.get("isthing") else "stuff"
            counted = entry["tp"] + entry["fp"] + entry["fn"] > 0
            lines.append(f"{str(info.get('name', ''))[:24]:24s} {cat_id:5d} {kind:>6s} | "
                         f"{100 * entry['pq']:7.2f} {100 * entry['sq']:7.2f} {100 * entry['rq']:7.2f} "
                         f"{entry['tp']:6d} {entry['fp']:6d} {entry['fn']:6d}"
                         + ("" if counted else "  (not counted)"))
    return "\n".join(lines)
