"""Torch-free post-processing of one image's model outputs: the heuristic panoptic fusion (REFERENCE §5
"Model" and "Panoptic fusion") over the pasted masks and the semantic labels.

The result is the PyTorch reference's map (``training.predictor.label_map_single_image``),
pixel for pixel, at a cost that grows with the summed box areas instead of detections x image
size, and without the (S + 1) full-resolution logit planes. By concern:

* **Fusion order** (``runtime/torch_sort.py``): torch's ``argsort(-scores)``, an unstable sort,
  emulated with exact score ties (libstdc++ introsort, which torch's CPU sort uses).
* **Masks** (``runtime/mask_paste.py``): pasted one box region at a time, separable bilinear
  weights, the pixels near the threshold recomputed with torch's exact float32 formula. Fusion
  writes into one (H, W) code map.
* **Semantic labels** (``runtime/semantic_labels.py``): decided on a grid of support windows
  where the argmax is clear; only the boundary pixels that no instance took are evaluated.
* **Fusion** (here): overlap rule, stuff area limit, label map and segment table.

Bit-level notes (what "the same as torch" means): torch 2.x CPU kernels are compiled with fused
multiply-adds (``grid_sample``'s source coordinate and interpolation, the bilinear upsampling's
source index and interpolation); they are emulated in float64 and rounded once
(``runtime/float32_ops.py``).
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.float32_ops import F32
from pfpn.runtime.mask_paste import MaskPaster
from pfpn.runtime.panoptic_io import VOID_ID
from pfpn.runtime.result import PanopticMap, SegmentTable
from pfpn.runtime.semantic_labels import SemanticWindows, analyse_semantic_windows, label_undecided_pixels
from pfpn.runtime.torch_sort import fusion_order

__all__ = ["postprocess_single_image"]


# ----------------------------------------------------------------------------------------------
def _first_last(flags: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1])


def postprocess_single_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, mask_probs: np.ndarray,
                             semantic_logits: np.ndarray, *, resized_size: tuple[int, int],
                             original_size: tuple[int, int], scale_factor: tuple[float, float],
                             num_thing_classes: int, mask_threshold: float = 0.5,
                             fusion: FusionConfig = FusionConfig()) -> PanopticMap:
    """One image's valid contract outputs -> the model-level panoptic map (REFERENCE §5), with its
    segment table (``runtime.result.to_panoptic_result`` then needs no pass over the pixels).

    boxes: (N, 4) float32 x1, y1, x2, y2 in resized-input pixels; scores: (N,); labels: (N,)
    thing labels; mask_probs: (N, 28, 28) probabilities; semantic_logits: (S + 1, Hp / 4, Wp / 4)
    stride-4 logits of the padded input; resized_size: (h, w) of the resized image inside the
    padding; original_size: (H, W); scale_factor: (new_w / W, new_h / H).
    """
    instance_offset = fusion.instance_offset
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    height, width = int(original_size[0]), int(original_size[1])
    boxes = np.asarray(boxes, dtype=F32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=F32).reshape(-1)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    num = boxes.shape[0]
    mask_probs = np.asarray(mask_probs, dtype=F32).reshape(num, *np.shape(mask_probs)[-2:])
    logits = np.asarray(semantic_logits, dtype=F32)
    if logits.ndim != 3:
        raise ValueError(f"semantic_logits must be (S + 1, H / 4, W / 4), got shape {logits.shape}")
    if not (scores.shape[0] == labels.shape[0] == num):
        raise ValueError(f"boxes, scores and labels disagree in length: {num}, {scores.shape[0]}, {labels.shape[0]}")
    num_stuff = logits.shape[0] - 1
    void = num_thing_classes + num_stuff
    if instance_offset <= void:
        raise ValueError(f"instance_offset {instance_offset} must exceed the VOID label {void}")
    undecided = num_stuff + 1  # codes: channel 0..S, undecided S + 1, instance k -> S + 1 + k
    code_dtype = np.uint16 if undecided + num + 1 < 2**16 else np.int32

    # semantic: decided windows expanded to the image
    sem = analyse_semantic_windows(logits, resized_size, original_size, code_dtype)
    code = np.take(np.take(sem.grid, sem.ay.gid, axis=0), sem.ax.gid, axis=1)
    t_sem = time.perf_counter()
    timings["semantic_grid"] = t_sem - t_start

    # masks + fusion, by descending score
    sx, sy = scale_factor
    boxes_orig = boxes / np.array([sx, sy, sx, sy], dtype=F32)
    kept: list[int] = []
    inst_area: list[int] = []
    inst_bbox: list[list[int]] = []
    thr_overlap = F32(fusion.mask_overlap_threshold)
    tables = MaskPaster(boxes_orig, mask_probs.shape[1:], height, width)
    for idx in fusion_order(scores).tolist():
        y0, x0, mask = tables.paste(idx, mask_probs[idx], mask_threshold)
        area = np.count_nonzero(mask)
        if area == 0:
            continue
        sub = code[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        free = mask > (sub > undecided)  # mask & not yet taken
        n_free = np.count_nonzero(free)
        covered = area - n_free
        if F32(covered) / (F32(area) + F32(1e-5)) > thr_overlap:
            continue
        kept.append(idx)
        np.copyto(sub, undecided + len(kept), where=free)
        r0, r1 = _first_last(free.any(axis=1))
        c0, c1 = _first_last(free.any(axis=0))
        inst_area.append(n_free)
        inst_bbox.append([x0 + c0, y0 + r0, c1 - c0 + 1, r1 - r0 + 1])
    t_masks = time.perf_counter()
    timings["masks_fusion"] = t_masks - t_sem

    # semantic labels of the boundary pixels nobody took
    flat_code = code.reshape(-1)
    pix = np.flatnonzero(flat_code == undecided)
    resolved_y = resolved_x = resolved_c = np.zeros(0, dtype=np.int64)
    if pix.size:
        resolved_y, resolved_x = np.divmod(pix, width)
        resolved_c = label_undecided_pixels(sem, resolved_y, resolved_x)
        flat_code[pix] = resolved_c
    t_res = time.perf_counter()
    timings["semantic_boundary"] = t_res - t_masks

    # stuff area limit, final labels
    counts = _code_histogram(code, num_stuff + 1)
    stuff_ok = counts[:num_stuff] >= fusion.stuff_area_limit
    lut = np.full(undecided + 1 + len(kept), void, dtype=np.int64)
    lut[:num_stuff] = np.where(stuff_ok, num_thing_classes + np.arange(num_stuff), void)
    kept_labels = labels[np.asarray(kept, dtype=np.int64)]
    inst_ids = kept_labels + np.arange(1, len(kept) + 1, dtype=np.int64) * instance_offset
    lut[undecided + 1:] = inst_ids
    label_map = np.take(lut, code)
    id_lut = np.where(lut == void, VOID_ID, lut)
    t_fin = time.perf_counter()
    timings["labels"] = t_fin - t_res

    # segment table: stuff (ascending label) then instances (ascending k)
    stuff_ch = np.flatnonzero(stuff_ok & (counts[:num_stuff] > 0))
    stuff_boxes = _stuff_bboxes(code, sem, stuff_ch, resolved_y, resolved_x, resolved_c)
    seg_ids = np.concatenate([num_thing_classes + stuff_ch, inst_ids]).astype(np.int64)
    seg_areas = np.concatenate([counts[stuff_ch], np.asarray(inst_area, dtype=np.int64)]).astype(np.int64)
    seg_boxes = np.concatenate([stuff_boxes.reshape(-1, 4), np.asarray(inst_bbox, dtype=np.int64).reshape(-1, 4)])
    timings["segments"] = time.perf_counter() - t_fin
    timings["total"] = time.perf_counter() - t_start
    table = SegmentTable(ids=seg_ids, areas=seg_areas, bboxes=seg_boxes.astype(np.int64), codes=code, code_ids=id_lut)
    return PanopticMap(label_map=label_map, kept=kept, boxes=boxes_orig, scores=scores.copy(), labels=labels,
                       instance_offset=instance_offset, mask_probs=mask_probs, mask_threshold=float(mask_threshold),
                       segments=table, part_seconds=timings,
                       boundary_pixels=int(pix.size))


def _code_histogram(code: np.ndarray, bins: int) -> np.ndarray:
    """Pixel counts of codes 0..bins-1."""
    if code.dtype == np.uint16 and code.size < 2**24:  # float32 bins count exactly below 2**24
        hist = cv2.calcHist([code], [0], None, [bins], [0, bins])
        return np.rint(np.asarray(hist).reshape(-1)).astype(np.int64)
    return np.bincount(code.reshape(-1), minlength=bins)[:bins].astype(np.int64)


def _stuff_bboxes(code: np.ndarray, sem: SemanticWindows, channels: np.ndarray, ry: np.ndarray, rx: np.ndarray,
                  rc: np.ndarray) -> np.ndarray:
    """Tight [x, y, w, h] boxes of the pixels with code c for each c in ``channels``: an outer
    bound from the window grid and the resolved boundary pixels, shrunk by scanning inwards."""
    out = np.zeros((channels.size, 4), dtype=np.int64)
    if channels.size == 0:
        return out
    grid, ay, ax = sem.grid, sem.ay, sem.ax
    nbins = max(int(grid.max()) if grid.size else 0, int(rc.max()) if rc.size else 0) + 1
    rows = np.zeros((grid.shape[0], nbins), dtype=bool)  # group row holds channel c somewhere
    cols = np.zeros((grid.shape[1], nbins), dtype=bool)
    rows[np.arange(grid.shape[0])[:, None], grid] = True
    cols[np.arange(grid.shape[1])[None, :], grid] = True
    rows[ay.gid[ry], rc] = True
    cols[ax.gid[rx], rc] = True
    rows, cols = rows[:, channels], cols[:, channels]
    g_y0 = rows.argmax(axis=0)
    g_y1 = rows.shape[0] - 1 - rows[::-1].argmax(axis=0)
    g_x0 = cols.argmax(axis=0)
    g_x1 = cols.shape[0] - 1 - cols[::-1].argmax(axis=0)
    y_lo, y_hi = ay.g_start[g_y0], ay.g_start[g_y1 + 1] - 1
    x_lo, x_hi = ax.g_start[g_x0], ax.g_start[g_x1 + 1] - 1
    for i, c in enumerate(channels.tolist()):
        y0, y1 = _shrink(code, c, int(y_lo[i]), int(y_hi[i]), int(x_lo[i]), int(x_hi[i]), axis=0)
        x0, x1 = _shrink(code, c, int(x_lo[i]), int(x_hi[i]), y0, y1, axis=1)
        out[i] = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
    return out


def _shrink(code: np.ndarray, c: int, lo: int, hi: int, o_lo: int, o_hi: int, *, axis: int) -> tuple[int, int]:
    """First and last row (axis 0) or column (axis 1) in lo..hi holding code c, looking only at
    o_lo..o_hi along the other axis (blocks of 1, 2, 4, ... lines from each end)."""
    def has(a: int, b: int) -> np.ndarray:
        if axis == 0:
            return (code[a:b, o_lo:o_hi + 1] == c).any(axis=1)
        return (code[o_lo:o_hi + 1, a:b] == c).any(axis=0)

    start, step = lo, 1
    while True:
        if start > hi:
            raise AssertionError(f"segment {c} not found in its bound")
        found = has(start, min(start + step, hi + 1))
        if found.any():
            lo = start + int(np.argmax(found))
            break
        start, step = start + step, step * 2
    end, step = hi, 1
    while True:
        a = max(end - step + 1, lo)
        found = has(a, end + 1)
        if found.any():
            return lo, a + int(len(found) - 1 - np.argmax(found[::-1]))
        end, step = a - 1, step * 2
