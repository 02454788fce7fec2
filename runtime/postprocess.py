"""Torch-free post-processing of one image's model outputs: mask pasting, semantic upsampling
and the heuristic panoptic fusion (SPEC "Model" and "Panoptic fusion").

The result is the PyTorch reference's map (``training.predictor.label_map_single_image``),
pixel for pixel, at a cost that grows with the summed box areas instead of detections x image
size, and without the (S + 1) full-resolution logit planes:

* **Masks** are pasted one box region at a time. Bilinear ``grid_sample`` is separable, so a
  region is ``Wy @ M @ Wx^T`` (per-axis weights from torch's float32 source coordinates, zero
  outside the 28x28). The few pixels that land within 2e-6 of the threshold are recomputed with
  torch's exact per-pixel float32 formula (fused multiply-adds as torch's CPU kernel is
  compiled), so rounding never flips a pixel. Fusion writes into one (H, W) code map.
* **Semantic labels**: an output pixel's logits are a convex combination of at most 3x3
  stride-4 logit vectors (two separable bilinear stages: x4 to the padded size, crop, to the
  original size). Where every vector of that support has the same argmax by a clear margin, the
  pixel's label is that argmax: decided on a small grid of support windows and expanded. Only
  the remaining boundary pixels that no instance took are evaluated, over the few channels that
  can still win there (bounded by the support's per-channel max/min), with torch's float32
  arithmetic where the two best are within rounding of each other.
* **Fusion order** is torch's ``argsort(-scores)``, an unstable sort: with exact score ties it
  is emulated (libstdc++ introsort, which torch's CPU sort uses) so tied instances come in the
  same order.

Bit-level notes (what "the same as torch" means here): torch 2.x CPU kernels are compiled with
fused multiply-adds (``grid_sample``'s source coordinate and interpolation, the bilinear
upsampling's source index and interpolation); they are emulated in float64 and rounded once.
Outputs whose height + width <= 128, and 3-channel logits with one torch thread, go through
another torch upsampling kernel whose last-bit rounding differs; that matters only where two
logits tie to the last bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from runtime.contract import SEMANTIC_STRIDE
from runtime.panoptic_io import VOID_ID, CategoryTable
from runtime.result import PanopticResult, segments_info

__all__ = [
    "PostprocessOutput",
    "postprocess_single_image",
    "to_panoptic_result",
    "fusion_order",
    "paste_mask_region",
    "semantic_argmax",
]

F32 = np.float32
F64 = np.float64
MASK_BAND = 2e-6  # pasted values this close to the threshold are recomputed exactly
LOGIT_EPS = 1e-5  # x max |logit|: margins below this count as possible ties


# ----------------------------------------------------------------------------------------------
# output
@dataclass
class PostprocessOutput:
    """One image's post-processing result.

    ``label_map``: (H, W) int64 model-level map, as ``label_map_single_image``: ``label + k *
    instance_offset`` for kept instance k (1-based), stuff labels T..T+S-1, VOID = T + S.
    ``kept``: detection indices in instance order (``kept[k - 1]`` became instance k).
    The segment table (one row per non-void segment, ascending id, as ``np.unique`` of the map
    would give) lets :func:`to_panoptic_result` build the COCO form without scanning the map.
    """

    label_map: np.ndarray
    kept: list[int]
    segment_ids: np.ndarray  # (n,) int64
    segment_areas: np.ndarray  # (n,) int64 pixel counts
    segment_bboxes: np.ndarray  # (n, 4) int64 tight [x, y, w, h]
    void_label: int
    instance_offset: int
    timings: dict[str, float] = field(default_factory=dict, repr=False)  # seconds per part
    boundary_pixels: int = 0  # pixels whose semantic label needed the full interpolation
    _code: np.ndarray | None = field(default=None, repr=False)  # (H, W) compact codes
    _id_lut: np.ndarray | None = field(default=None, repr=False)  # code -> COCO id (VOID -> 0)

    def id_map(self) -> np.ndarray:
        """(H, W) int64 COCO segment ids (VOID -> 0)."""
        if self._code is not None and self._id_lut is not None:
            return np.take(self._id_lut, self._code)
        labels = self.label_map % self.instance_offset
        return np.where(labels == self.void_label, VOID_ID, self.label_map)


def to_panoptic_result(output: PostprocessOutput, categories: CategoryTable, scores: Sequence[float] | np.ndarray
                       ) -> PanopticResult:
    """The COCO form of ``output``; identical to ``runtime.result.panoptic_result_from_label_map(
    output.label_map, categories, instance_scores=scores[output.kept], ...)`` without its
    ``np.unique`` over every pixel. ``scores``: the scores of all N detections given to
    :func:`postprocess_single_image`."""
    kept_scores = np.asarray(scores)[np.asarray(output.kept, dtype=np.int64)]
    segments = segments_info(output.segment_ids, output.segment_areas, output.segment_bboxes, categories,
                             kept_scores, output.instance_offset)
    return PanopticResult(id_map=output.id_map(), segments_info=segments)


# ----------------------------------------------------------------------------------------------
# float32 helpers
def _fma32(a, b, c) -> np.ndarray:
    """float32 a * b + c rounded once (a fused multiply-add), emulated in float64."""
    return (np.asarray(a, F64) * b + c).astype(F32)


def fusion_order(scores: np.ndarray) -> np.ndarray:
    """The reference's instance order: ``torch.argsort(-scores)`` on the CPU (unstable)."""
    neg = -np.asarray(scores, dtype=F32)
    if neg.size < 2 or len(np.unique(neg)) == neg.size:  # no ties (NaNs collapse in unique)
        return np.argsort(neg, kind="stable")
    return np.array(_std_sort_indices(neg.tolist()), dtype=np.int64)


def _std_sort_indices(keys: list[float]) -> list[int]:
    """Indices of ``keys`` in the order libstdc++'s ``std::sort`` (introsort) puts (key, index)
    pairs with torch's ascending comparator (NaN last). Torch's CPU sort uses it when
    ``stable=False``; equal keys come out in its deterministic but non-stable order."""

    def less(p, q) -> bool:
        x, y = p[0], q[0]
        return (x == x and y != y) or x < y

    ordered, _ = std_sort([(k, i) for i, k in enumerate(keys)], less)
    return [i for _, i in ordered]


def std_sort(items: list, less: Callable[[Any, Any], bool]) -> tuple[list, bool]:
    """libstdc++ (GCC 13) ``std::sort`` of ``items`` with the comparator ``less``: introsort
    (threshold 16, depth 2 * floor(log2 n), median-of-3 pivot moved to the front, unguarded
    partition), heap-sort fallback at depth 0, final insertion sort. -> (sorted copy, whether the
    heap-sort fallback ran)."""
    a = list(items)
    n = len(a)
    heap_sorted = False

    def unguarded_linear_insert(last: int) -> None:
        val = a[last]
        nxt = last - 1
        while less(val, a[nxt]):
            a[last] = a[nxt]
            last = nxt
            nxt -= 1
        a[last] = val

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            val = a[i]
            if less(val, a[first]):
                a[first + 1:i + 1] = a[first:i]
                a[first] = val
            else:
                unguarded_linear_insert(i)

    def move_median_to_first(result: int, x: int, y: int, z: int) -> None:
        if less(a[x], a[y]):
            m = y if less(a[y], a[z]) else (z if less(a[x], a[z]) else x)
        elif less(a[x], a[z]):
            m = x
        elif less(a[y], a[z]):
            m = z
        else:
            m = y
        a[result], a[m] = a[m], a[result]

    def unguarded_partition(first: int, last: int, pivot: int) -> int:
        while True:
            while less(a[first], a[pivot]):
                first += 1
            last -= 1
            while less(a[pivot], a[last]):
                last -= 1
            if not first < last:
                return first
            a[first], a[last] = a[last], a[first]
            first += 1

    def adjust_heap(first: int, hole: int, length: int, value) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value

    def heap_sort(first: int, last: int) -> None:  # std::__partial_sort(first, last, last)
        nonlocal heap_sorted
        heap_sorted = True
        length = last - first
        if length >= 2:
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, a[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:
            last -= 1
            value = a[last]
            a[last] = a[first]
            adjust_heap(first, 0, last - first, value)

    def introsort_loop(first: int, last: int, depth: int) -> None:
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            mid = first + (last - first) // 2
            move_median_to_first(first, first + 1, mid, last - 1)
            cut = unguarded_partition(first + 1, last, first)
            introsort_loop(cut, last, depth)
            last = cut

    if n > 1:
        introsort_loop(0, n, 2 * (n.bit_length() - 1))
        if n > 16:
            insertion_sort(0, 16)
            for i in range(16, n):
                unguarded_linear_insert(i)
        else:
            insertion_sort(0, n)
    return a, heap_sorted


# ----------------------------------------------------------------------------------------------
# masks
class _PasteTables:
    """Per-box paste regions, source coordinates and bilinear weights of all boxes at once
    (flat arrays; box i's rows are ``y_off[i]:y_off[i + 1]``, columns ``x_off[i]:x_off[i + 1]``)."""

    def __init__(self, boxes: np.ndarray, mask_shape: tuple[int, int], height: int, width: int) -> None:
        boxes = np.asarray(boxes, dtype=F32).reshape(-1, 4)
        self.x0, self.x_off, self.sx, self.wx = self._axis(boxes[:, 0], boxes[:, 2], width, mask_shape[1])
        self.y0, self.y_off, self.sy, self.wy = self._axis(boxes[:, 1], boxes[:, 3], height, mask_shape[0])

    @staticmethod
    def _axis(lo: np.ndarray, hi: np.ndarray, limit: int, size: int):
        # paste_masks' region: floor(lo) - 1 (>= 0) .. ceil(hi) + 1 (<= limit)
        with np.errstate(invalid="ignore"):
            start = np.where(np.isfinite(lo), np.clip(np.floor(lo) - F32(1), 0, limit), 0).astype(np.int64)
            stop = np.where(np.isfinite(hi), np.clip(np.ceil(hi) + F32(1), 0, limit), limit).astype(np.int64)
        length = np.maximum(stop - start, 0)
        off = np.zeros(len(lo) + 1, dtype=np.int64)
        np.cumsum(length, out=off[1:])
        owner = np.repeat(np.arange(len(lo)), length)
        pix = np.arange(off[-1]) - np.repeat(off[:-1] - start, length)
        # the reference's normalised coordinate ((x + 0.5 - lo) / (hi - lo)) * 2 - 1 (inf -> 0),
        # unnormalised as torch's CPU grid_sample does: (g + 1) * (size / 2) - 0.5, one rounding
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            g = (pix.astype(F32) + F32(0.5) - lo[owner]) / (hi[owner] - lo[owner]) * F32(2) - F32(1)
            g[np.isinf(g)] = 0
            src = _fma32(g + F32(1), size / 2, -0.5)
        return start, off, src, _axis_weights(src, size)

    def paste(self, i: int, mask: np.ndarray, threshold: float) -> tuple[int, int, np.ndarray]:
        """Box i's mask (M, M) pasted and thresholded -> (y0, x0, bool region)."""
        a, b = self.y_off[i], self.y_off[i + 1]
        c, d = self.x_off[i], self.x_off[i + 1]
        y0, x0 = int(self.y0[i]), int(self.x0[i])
        if a == b or c == d:
            return y0, x0, np.zeros((b - a, d - c), dtype=bool)
        # OpenCV's gemm, not numpy's: a multi-threaded BLAS (numpy's default) is many times
        # slower on these many small products than one thread
        pasted = cv2.gemm(cv2.gemm(self.wy[a:b], mask, 1.0, None, 0.0), self.wx[c:d], 1.0, None, 0.0,
                          flags=cv2.GEMM_2_T)
        hi = pasted >= F32(threshold + MASK_BAND)
        lo = pasted >= F32(threshold - MASK_BAND)
        if np.count_nonzero(lo) != np.count_nonzero(hi):  # recompute the near-threshold pixels exactly
            yy, xx = np.nonzero(lo & ~hi)
            hi[yy, xx] = _paste_exact(mask, self.sy[a:b][yy], self.sx[c:d][xx]) >= F32(threshold)
        return y0, x0, hi


def _axis_weights(src: np.ndarray, size: int) -> np.ndarray:
    """(n, size) float32 bilinear weights with zero padding (NaN coordinates read zeros)."""
    n = src.shape[0]
    wts = np.zeros((n, size), dtype=F32)
    ok = np.isfinite(src)
    fl = np.floor(np.where(ok, src, F32(-10)))
    frac = (src - fl).astype(F32)
    i0 = fl.astype(np.int64)
    rows = np.arange(n)
    for idx, w in ((i0, F32(1) - frac), (i0 + 1, frac)):
        sel = ok & (idx >= 0) & (idx < size)
        wts[rows[sel], idx[sel]] = w[sel]
    return wts


def _paste_exact(mask: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """torch CPU grid_sample (bilinear, zeros, align_corners=False) at the points (sy[i], sx[i]),
    with its float32 operation order."""
    size_y, size_x = mask.shape
    ok = np.isfinite(sx) & np.isfinite(sy)
    sx = np.where(ok, sx, F32(-10))
    sy = np.where(ok, sy, F32(-10))
    xw = np.floor(sx)
    yn = np.floor(sy)
    w = (sx - xw).astype(F32)
    e = F32(1) - w
    n = (sy - yn).astype(F32)
    s = F32(1) - n
    ix = xw.astype(np.int64)
    iy = yn.astype(np.int64)

    def val(yy, xx):
        inside = ok & (yy >= 0) & (yy < size_y) & (xx >= 0) & (xx < size_x)
        return np.where(inside, mask[np.clip(yy, 0, size_y - 1), np.clip(xx, 0, size_x - 1)], F32(0))

    out = val(iy, ix) * (s * e)
    out = _fma32(val(iy, ix + 1), s * w, out)
    out = _fma32(val(iy + 1, ix), n * e, out)
    return _fma32(val(iy + 1, ix + 1), n * w, out)


def paste_mask_region(mask_prob: np.ndarray, box: np.ndarray, image_size: tuple[int, int],
                      threshold: float = 0.5) -> tuple[int, int, np.ndarray]:
    """One mask pasted like ``training.model.postprocess.paste_masks``, confined to its region.

    mask_prob: (M, M) probabilities; box: (4,) float32 in image pixels -> (y0, x0, bool (h, w))
    where the pasted mask is ``out[y0:y0 + h, x0:x0 + w]`` (False elsewhere)."""
    mask_prob = np.asarray(mask_prob, dtype=F32)
    tables = _PasteTables(np.asarray(box, dtype=F32)[None], mask_prob.shape, int(image_size[0]), int(image_size[1]))
    return tables.paste(0, mask_prob, threshold)


# ----------------------------------------------------------------------------------------------
# semantic upsampling
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch upsample_bilinear2d (align_corners=False) taps along one axis, with the CPU
    kernel's float32 arithmetic: scale = in / out, src = fma(scale, dst + 0.5, -0.5) clamped at
    0, i0 = int(src), i1 = i0 + (i0 < in - 1), l1 = clamp(src - i0, 0, 1), l0 = 1 - l1."""
    scale = F32(F32(in_size) / F32(out_size))
    src = (F64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(F32)
    src = np.maximum(src, F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(F32), F32(0), F32(1)).astype(F32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (F32(1) - l1).astype(F32), l1


@dataclass
class _Axis:
    """The two upsampling stages along one axis (low -> padded, crop, -> out)."""

    s1: tuple  # stage 1 taps (i0, i1, l0, l1) for positions 0..crop-1
    s2: tuple  # stage 2 taps (j0, j1, m0, m1) for output positions
    lo: np.ndarray  # (out,) first low-res index with a non-zero composite weight
    n: np.ndarray  # (out,) support length (1..3)
    w: np.ndarray  # (out, 3) float32 composite weights of lo + t
    gid: np.ndarray  # (out,) run of equal (lo, n): the support-window group
    g_lo: np.ndarray  # (groups,)
    g_n: np.ndarray  # (groups,)
    g_start: np.ndarray  # (groups + 1,) first output position of each group, then out


def _make_axis(low: int, padded: int, crop: int, out: int) -> _Axis:
    i0, i1, l0, l1 = (a[:crop] for a in _linear_taps(low, padded))
    j0, j1, m0, m1 = _linear_taps(crop, out)
    rows = np.stack([i0[j0], i1[j0], i0[j1], i1[j1]], axis=1)
    wts = np.stack([F64(1) * m0 * l0[j0], F64(1) * m0 * l1[j0], F64(1) * m1 * l0[j1], F64(1) * m1 * l1[j1]], axis=1)
    nz = wts > 0
    lo = np.where(nz, rows, np.iinfo(np.int64).max).min(axis=1)
    hi = np.where(nz, rows, -1).max(axis=1)
    n = hi - lo + 1
    if n.size and (n.min() < 1 or n.max() > 3):
        raise AssertionError("bilinear support wider than 3 cells")
    w = np.zeros((out, 3), dtype=F64)
    for t in range(3):
        w[:, t] = np.where(nz & (rows == (lo + t)[:, None]), wts, 0).sum(axis=1)
    key = lo * 4 + n
    change = np.empty(out, dtype=bool)
    change[:1] = True
    change[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    return _Axis((i0, i1, l0, l1), (j0, j1, m0, m1), lo, n, w.astype(F32), np.cumsum(change) - 1,
                 lo[starts], n[starts], np.append(starts, out))


def _exact_logits(flat: np.ndarray, low_w: int, ay: _Axis, ax: _Axis, yy: np.ndarray, xx: np.ndarray,
                  chans: np.ndarray) -> np.ndarray:
    """The two-stage upsampled logits of channels ``chans`` (P, K) at pixels (yy, xx) (P,), with
    torch's CPU kernel arithmetic (per stage: fma(fma(v00, wx0, v01 * wx1), wy0,
    fma(v10, wx0, v11 * wx1) * wy1)). flat: (C, h * w) low-res logits."""
    i0y, i1y, l0y, l1y = ay.s1
    i0x, i1x, l0x, l1x = ax.s1
    j0y, j1y, m0y, m1y = (a[yy][:, None] for a in ay.s2)
    j0x, j1x, m0x, m1x = (a[xx][:, None] for a in ax.s2)

    def mid(jy, jx):  # stage 1 value at intermediate (jy, jx)
        def v(r, c):
            return flat[chans, r * low_w + c]
        a = _fma32(v(i0y[jy], i0x[jx]), l0x[jx], v(i0y[jy], i1x[jx]) * l1x[jx])
        b = _fma32(v(i1y[jy], i0x[jx]), l0x[jx], v(i1y[jy], i1x[jx]) * l1x[jx])
        return _fma32(a, l0y[jy], b * l1y[jy])

    top = _fma32(mid(j0y, j0x), m0x, mid(j0y, j1x) * m1x)
    bottom = _fma32(mid(j1y, j0x), m0x, mid(j1y, j1x) * m1x)
    return _fma32(top, m0y, bottom * m1y)


@dataclass
class _Semantic:
    """Low-resolution analysis of the logits: the decided window grid and what resolving the
    rest needs."""

    flat: np.ndarray  # (C, h * w) float32 logits
    low_w: int
    ay: _Axis
    ax: _Axis
    grid: np.ndarray  # (groups_y, groups_x) channel of each support window, ``undecided`` if not decided
    undecided: int
    eps: np.float32


def _analyse_semantic(logits: np.ndarray, resized_size: tuple[int, int], original_size: tuple[int, int],
                      code_dtype) -> _Semantic:
    num_ch, low_h, low_w = logits.shape
    undecided = num_ch
    ay = _make_axis(low_h, low_h * SEMANTIC_STRIDE, int(resized_size[0]), int(original_size[0]))
    ax = _make_axis(low_w, low_w * SEMANTIC_STRIDE, int(resized_size[1]), int(original_size[1]))
    top = logits.max(axis=0)
    scale = float(np.nanmax([1.0, np.abs(top).max(), -logits.min()])) if top.size else 1.0
    eps = F32(LOGIT_EPS * scale)
    near = logits > (top - eps)  # channels within eps of the best, per cell
    count = near.view(np.uint8).sum(axis=0, dtype=np.uint8 if num_ch < 256 else np.uint16)
    confident = count == 1  # one clear argmax (NaN cells: count 0, never confident)
    ar = np.arange(num_ch, dtype=np.uint8 if num_ch < 256 else np.uint16)[:, None, None]
    best = (near.view(np.uint8) * ar).max(axis=0) if num_ch < 256 else (near * ar).max(axis=0)
    # uniform[ny, nx][r, c]: the window rows r..r+ny-1, cols c..c+nx-1 is confident with one argmax
    uniform = np.zeros((4, 4, low_h, low_w), dtype=bool)
    vert = {1: confident}
    v2 = np.zeros_like(confident)
    v2[:-1] = confident[:-1] & confident[1:] & (best[:-1] == best[1:])
    v3 = np.zeros_like(confident)
    v3[:-2] = v2[:-2] & v2[1:-1]
    vert[2], vert[3] = v2, v3
    for ny, v in vert.items():
        uniform[ny, 1] = v
        uniform[ny, 2, :, :-1] = v[:, :-1] & v[:, 1:] & (best[:, :-1] == best[:, 1:])
        uniform[ny, 3, :, :-2] = uniform[ny, 2, :, :-2] & uniform[ny, 2, :, 1:-1]
    ok = uniform[ay.g_n, :, ay.g_lo][:, ax.g_n, ax.g_lo]  # (groups_y, groups_x)
    label = np.take(np.take(best, ay.g_lo, axis=0), ax.g_lo, axis=1)
    grid = np.where(ok, label, undecided).astype(code_dtype)
    return _Semantic(logits.reshape(num_ch, -1), low_w, ay, ax, grid, undecided, eps)


def _compact(rows: np.ndarray, take: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the entries of ``rows`` where ``take`` is True, left-aligned and padded with the
    row's last one -> ((n, width) values, (n,) counts). Rows need at least one True."""
    count = take.sum(axis=1)
    r, c = np.nonzero(take)
    pos = np.arange(r.size) - np.repeat(np.cumsum(count) - count, count)
    out = np.empty((rows.shape[0], width), dtype=rows.dtype)
    out[r, pos] = rows[r, c]
    fill = np.arange(width)[None, :] >= count[:, None]
    return np.where(fill, out[np.arange(rows.shape[0]), np.maximum(count, 1) - 1][:, None], out), count


def _slot_min_max(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min and max over axis 1 of (n, slots, k), slot by slot (numpy's reduction over a short
    middle axis is slow)."""
    low = vals[:, 0].copy()
    high = vals[:, 0].copy()
    for s in range(1, vals.shape[1]):
        np.minimum(low, vals[:, s], out=low)
        np.maximum(high, vals[:, s], out=high)
    return low, high


def _resolve(sem: _Semantic, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Semantic channel (argmax of the upsampled logits, torch's tie rule) at pixels (yy, xx)
    whose support window is not uniform.

    Per support window: channel j can win only if its largest value in the window reaches the
    largest per-channel smallest value B (every pixel's logits lie between the window's per-channel
    min and max). Those candidates are found among the cells' two best channels when every
    cell's third best is below B; otherwise (or with NaNs) over all channels. Pixels are then
    evaluated over their window's candidates only, in float32, and where the two best are within
    rounding of each other, with torch's exact arithmetic."""
    flat, ay, ax, eps = sem.flat, sem.ay, sem.ax, sem.eps
    num_ch = flat.shape[0]
    n_gx = ax.g_lo.size
    key = ay.gid[yy] * n_gx + ax.gid[xx]
    mark = np.zeros(ay.g_lo.size * n_gx, dtype=bool)
    mark[key] = True
    windows = np.flatnonzero(mark)
    slot_of = np.zeros(mark.size, dtype=np.int64)
    slot_of[windows] = np.arange(windows.size)
    inv = slot_of[key]  # window of each pixel
    n_win = windows.size
    wy_lo, wy_n = ay.g_lo[windows // n_gx], ay.g_n[windows // n_gx]
    wx_lo, wx_n = ax.g_lo[windows % n_gx], ax.g_n[windows % n_gx]
    ny_max, nx_max = int(wy_n.max()), int(wx_n.max())
    slots = ny_max * nx_max
    cells = np.stack([(wy_lo + np.minimum(ty, wy_n - 1)) * sem.low_w + wx_lo + np.minimum(tx, wx_n - 1)
                      for ty in range(ny_max) for tx in range(nx_max)], axis=1)  # (windows, slots)
    cmark = np.zeros(flat.shape[1], dtype=bool)
    cmark[cells] = True
    cell_ids = np.flatnonzero(cmark)
    cpos = np.zeros(flat.shape[1], dtype=np.int64)
    cpos[cell_ids] = np.arange(cell_ids.size)
    values = np.ascontiguousarray(np.take(flat, cell_ids, axis=1).T)  # (cells, C)
    cw = cpos[cells]  # (windows, slots) rows of ``values``
    values_flat = values.reshape(-1)
    n_cells = cell_ids.size

    # candidates: channels whose window max reaches the best window min (floor). Searched among
    # the union of the cells' two best channels where every cell's third best is below the floor,
    # else among all channels; windows with NaNs are evaluated over all channels.
    bad = np.isnan(values).any(axis=1)
    all_channels = bad[cw].any(axis=1)  # evaluated over every channel, no candidate search
    search_all = np.zeros(n_win, dtype=bool)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (windows, channel lists, counts)
    if num_ch >= 3:
        tmp = values.copy()
        r = np.arange(n_cells)
        first = tmp.argmax(axis=1)
        tmp[r, first] = -np.inf
        second = tmp.argmax(axis=1)
        tmp[r, second] = -np.inf
        third = tmp.max(axis=1)
        top2 = np.stack([first, second], axis=1)[cw].reshape(n_win, 2 * slots)
        top2.sort(axis=1)
        new = np.ones(top2.shape, dtype=bool)
        new[:, 1:] = top2[:, 1:] != top2[:, :-1]
        union, n_union = _compact(top2, new, int(new.sum(axis=1).max()))
        for lo_k, hi_k in ((2, 2), (3, 4)):
            sel = np.flatnonzero(~all_channels & (n_union >= lo_k) & (n_union <= hi_k))
            if sel.size == 0:
                continue
            u = union[sel, :hi_k]
            vals = np.take(values_flat, cw[sel][:, :, None] * num_ch + u[:, None, :])  # (windows, slots, k)
            low, high = _slot_min_max(vals)
            floor_ = low.max(axis=1)
            good = _slot_min_max(third[cw[sel]][:, :, None])[1][:, 0] < floor_ - eps
            search_all[sel[~good]] = True
            cand = (high >= (floor_ - eps)[:, None]) & (np.arange(u.shape[1])[None, :] < n_union[sel, None])
            lists, counts = _compact(u[good], cand[good], hi_k)
            found.append((sel[good], lists, counts))
        search_all |= ~all_channels & (n_union > 4)
    else:
        search_all = ~all_channels
    sel = np.flatnonzero(search_all)
    if sel.size:
        wv = values[cw[sel]]  # (windows, slots, C)
        floor_ = wv.min(axis=1).max(axis=1)
        cand = wv.max(axis=1) >= (floor_ - eps)[:, None]
        lists, counts = _compact(np.broadcast_to(np.arange(num_ch), cand.shape), cand, int(cand.sum(axis=1).max()))
        found.append((sel, lists, counts))
    width = max([lst.shape[1] for _, lst, _ in found], default=1)
    chans_w = np.zeros((n_win, width), dtype=np.int64)
    num_cand = np.zeros(n_win, dtype=np.int64)
    for sel, lists, counts in found:
        chans_w[sel, :lists.shape[1]] = lists
        chans_w[sel, lists.shape[1]:] = lists[:, -1:]
        num_cand[sel] = counts
    # buckets of windows: 1 candidate (decided), 2, 3-4, 5-8 (padded lists), all channels
    bucket = np.searchsorted(np.array([1, 2, 4, 8]), num_cand)
    bucket[all_channels] = 4
    kmax_of = (1, 2, 4, None, num_ch)
    pix_bucket = bucket[inv]
    result = np.empty(yy.size, dtype=np.int64)
    single = pix_bucket == 0
    if single.any():
        result[single] = chans_w[inv[single], 0]
    for b in range(1, 5):
        p = np.flatnonzero(pix_bucket == b)
        if p.size == 0:
            continue
        wins = np.flatnonzero(bucket == b)
        local = np.zeros(n_win, dtype=np.int64)
        local[wins] = np.arange(wins.size)
        if b == 4:
            ch = np.broadcast_to(np.arange(num_ch), (wins.size, num_ch))
            wvk = values[cw[wins]]  # (windows, slots, C)
        else:
            kmax = kmax_of[b] or int(num_cand[wins].max())
            ch = chans_w[wins, :kmax]
            wvk = np.take(values_flat, cw[wins][:, :, None] * num_ch + ch[:, None, :])  # (windows, slots, kmax)
        pw = local[inv[p]]
        py, px = yy[p], xx[p]
        wgt = (ay.w[py, :ny_max][:, :, None] * ax.w[px, :nx_max][:, None, :]).reshape(p.size, slots)
        approx = np.einsum("ps,psk->pk", wgt, wvk[pw])
        chans = ch[pw]
        rows = np.arange(p.size)
        if approx.shape[1] == 2:  # distinct channels
            pick = (approx[:, 1] > approx[:, 0]).astype(np.int64)
            gap = np.abs(approx[:, 1] - approx[:, 0])
            chosen = chans[rows, pick]
        else:
            pick = np.argmax(approx, axis=1)
            chosen = chans[rows, pick]
            others = np.where(chans == chosen[:, None], F32(-np.inf), approx)
            gap = approx[rows, pick] - others.max(axis=1)
        unsure = np.flatnonzero(~(gap > 2 * eps))  # within rounding of a tie (or NaN)
        if unsure.size:
            exact = _exact_logits(flat, sem.low_w, ay, ax, py[unsure], px[unsure], chans[unsure])
            chosen[unsure] = chans[unsure, np.argmax(exact, axis=1)]
        result[p] = chosen
    return result


def semantic_argmax(semantic_logits: np.ndarray, *, resized_size: tuple[int, int],
                    original_size: tuple[int, int]) -> np.ndarray:
    """argmax over channels of the reference's two-stage upsampled logits, at every pixel of
    the original image -> (H, W) int64 channel (0..S)."""
    logits = np.asarray(semantic_logits, dtype=F32)
    sem = _analyse_semantic(logits, resized_size, original_size, np.int64)
    out = np.take(np.take(sem.grid, sem.ay.gid, axis=0), sem.ax.gid, axis=1)
    yy, xx = np.nonzero(out == sem.undecided)
    if yy.size:
        out[yy, xx] = _resolve(sem, yy, xx)
    return out


# ----------------------------------------------------------------------------------------------
def _first_last(flags: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1])


def postprocess_single_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, mask_probs: np.ndarray,
                             semantic_logits: np.ndarray, *, resized_size: tuple[int, int],
                             original_size: tuple[int, int], scale_factor: tuple[float, float],
                             num_thing_classes: int, mask_threshold: float = 0.5,
                             mask_overlap_threshold: float = 0.5, stuff_area_limit: int = 4096,
                             instance_offset: int = 1000) -> PostprocessOutput:
    """One image's valid contract outputs -> the model-level panoptic map (SPEC).

    boxes: (N, 4) float32 x1, y1, x2, y2 in resized-input pixels; scores: (N,); labels: (N,)
    thing labels; mask_probs: (N, 28, 28) probabilities; semantic_logits: (S + 1, Hp / 4, Wp / 4)
    stride-4 logits of the padded input; resized_size: (h, w) of the resized image inside the
    padding; original_size: (H, W); scale_factor: (new_w / W, new_h / H).
    """
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
    sem = _analyse_semantic(logits, resized_size, original_size, code_dtype)
    code = np.take(np.take(sem.grid, sem.ay.gid, axis=0), sem.ax.gid, axis=1)
    t_sem = time.perf_counter()
    timings["semantic_grid"] = t_sem - t_start

    # masks + fusion, by descending score
    sx, sy = scale_factor
    boxes_orig = boxes / np.array([sx, sy, sx, sy], dtype=F32)
    kept: list[int] = []
    inst_area: list[int] = []
    inst_bbox: list[list[int]] = []
    thr_overlap = F32(mask_overlap_threshold)
    tables = _PasteTables(boxes_orig, mask_probs.shape[1:], height, width)
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
        resolved_c = _resolve(sem, resolved_y, resolved_x)
        flat_code[pix] = resolved_c
    t_res = time.perf_counter()
    timings["semantic_boundary"] = t_res - t_masks

    # stuff area limit, final labels
    counts = _code_histogram(code, num_stuff + 1)
    stuff_ok = counts[:num_stuff] >= stuff_area_limit
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
    return PostprocessOutput(label_map=label_map, kept=kept, segment_ids=seg_ids, segment_areas=seg_areas,
                             segment_bboxes=seg_boxes.astype(np.int64), void_label=void,
                             instance_offset=instance_offset, timings=timings, boundary_pixels=int(pix.size),
                             _code=code, _id_lut=id_lut)


def _code_histogram(code: np.ndarray, bins: int) -> np.ndarray:
    """Pixel counts of codes 0..bins-1."""
    if code.dtype == np.uint16 and code.size < 2**24:  # float32 bins count exactly below 2**24
        hist = cv2.calcHist([code], [0], None, [bins], [0, bins])
        return np.rint(np.asarray(hist).reshape(-1)).astype(np.int64)
    return np.bincount(code.reshape(-1), minlength=bins)[:bins].astype(np.int64)


def _stuff_bboxes(code: np.ndarray, sem: _Semantic, channels: np.ndarray, ry: np.ndarray, rx: np.ndarray,
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
