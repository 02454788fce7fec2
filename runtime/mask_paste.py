"""Mask pasting of the torch-free post-processing: each 28x28 mask probability map pasted into its
box region of the original image, thresholded, exactly as the PyTorch reference's
``grid_sample``-based pasting.

Bilinear ``grid_sample`` is separable, so a region is ``Wy @ M @ Wx^T`` (per-axis weights from
torch's float32 source coordinates, zero outside the 28x28). The few pixels that land within
``MASK_BAND`` of the threshold are recomputed with torch's exact per-pixel float32 formula (fused
multiply-adds as torch's CPU kernel is compiled), so rounding never flips a pixel.
"""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from pfpn.runtime.float32_ops import F32, fma32

MASK_BAND = 2e-6  # pasted values this close to the threshold are recomputed exactly


class MaskPaster:
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
            src = fma32(g + F32(1), size / 2, -0.5)
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
    out = fma32(val(iy, ix + 1), s * w, out)
    out = fma32(val(iy + 1, ix), n * e, out)
    return fma32(val(iy + 1, ix + 1), n * w, out)


def paste_mask_region(mask_prob: np.ndarray, box: np.ndarray, image_size: tuple[int, int],
                      threshold: float = 0.5) -> tuple[int, int, np.ndarray]:
    """One mask pasted like ``training.model.panoptic_fusion.paste_masks``, confined to its region.

    mask_prob: (M, M) probabilities; box: (4,) float32 in image pixels -> (y0, x0, bool (h, w))
    where the pasted mask is ``out[y0:y0 + h, x0:x0 + w]`` (False elsewhere)."""
    mask_prob = np.asarray(mask_prob, dtype=F32)
    tables = MaskPaster(np.asarray(box, dtype=F32)[None], mask_prob.shape, int(image_size[0]), int(image_size[1]))
    return tables.paste(0, mask_prob, threshold)


def pasted_masks(boxes: np.ndarray, mask_probs: np.ndarray, image_size: tuple[int, int],
                 threshold: float = 0.5) -> Iterator[np.ndarray]:
    """Every detection's own mask at full image size, as the fusion pastes it (before fusion
    decides who keeps which pixels): boxes (N, 4) float32 in image pixels, mask_probs (N, M, M)
    -> one (H, W) bool array per detection, in order, one at a time (N full-size masks at once
    would be N * H * W bytes)."""
    height, width = int(image_size[0]), int(image_size[1])
    mask_probs = np.asarray(mask_probs, dtype=F32)
    tables = MaskPaster(np.asarray(boxes, dtype=F32).reshape(-1, 4), mask_probs.shape[1:], height, width)
    for i in range(mask_probs.shape[0]):
        y0, x0, region = tables.paste(i, mask_probs[i], threshold)
        full = np.zeros((height, width), dtype=bool)
        full[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
        yield full
