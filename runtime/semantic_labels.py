"""Semantic labels of the torch-free post-processing: the argmax over channels of the PyTorch
reference's two-stage bilinear upsampling of the stride-4 logits (x4 to the padded size, crop,
to the original size), pixel for pixel, without the (S + 1) full-resolution logit planes.

An output pixel's logits are a convex combination of at most 3x3 stride-4 logit vectors. Where
every vector of that support window has the same argmax by a clear margin, the pixel's label is
that argmax: decided on a small grid of support windows (:func:`analyse_semantic_windows`) and
expanded. The remaining pixels (:func:`label_undecided_pixels`) are evaluated tile by tile (4x4
stride-4 cells and their 2-cell halo) over the channels that are among the two best of some
cell of the tile, as two small matrix products per tile; a pixel whose best value does not
clear the bound of every other channel, or whose two best are within rounding of each other,
is evaluated again with torch's float32 arithmetic.

Outputs whose height + width <= 128, and 3-channel logits with one torch thread, go through
another torch upsampling kernel whose last-bit rounding differs; that matters only where two
logits tie to the last bit. Non-finite logits follow torch's general kernel (0 x NaN is NaN, so
a NaN next to a pixel's support can reach it through a zero weight); where the crop already has
the output size torch copies instead, and pixels next to a NaN or inf can differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfpn.runtime.contract import SEMANTIC_STRIDE
from pfpn.runtime.float32_ops import F32, F64, fma32

LOGIT_EPS = 1e-5  # x max |logit|: margins below this count as possible ties
TILE = 4  # stride-4 cells per tile side in label_undecided_pixels (timed best of 2, 3, 4, 6, 8)
TILE_SPAN = TILE + 2  # a tile's cells and the 2-cell halo its pixels' supports reach into
K_BOUNDS = (2, 3, 4, 6, 8, 12)  # tiles grouped by candidate count, each group padded to its largest


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
    tile: np.ndarray  # (out,) tile of each output position: lo // TILE
    tile_pos: np.ndarray  # (out,) position inside its tile's run of output positions
    tile_w: np.ndarray  # (tiles, positions, TILE_SPAN) float32 composite weights over the tile's cells
    tile_cells: np.ndarray  # (tiles, TILE_SPAN) low-res index of each tile cell (clamped at the border)


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
    w = w.astype(F32)
    # tiles: lo is non-decreasing, so each tile's output positions are one run
    tile = lo // TILE
    n_tiles = -(-low // TILE)
    run_start = np.searchsorted(tile, np.arange(n_tiles))
    tile_pos = np.arange(out) - run_start[tile]
    tile_w = np.zeros((n_tiles, max(int(np.bincount(tile, minlength=1).max()), 1), TILE_SPAN), dtype=F32)
    for t in range(3):  # lo - tile * TILE + t <= TILE + 1: inside the span
        tile_w[tile, tile_pos, lo - tile * TILE + t] = w[:, t]
    tile_cells = np.minimum(np.arange(n_tiles)[:, None] * TILE + np.arange(TILE_SPAN)[None, :], low - 1)
    return _Axis((i0, i1, l0, l1), (j0, j1, m0, m1), lo, n, w, np.cumsum(change) - 1,
                 lo[starts], n[starts], np.append(starts, out), tile, tile_pos, tile_w, tile_cells)


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
        a = fma32(v(i0y[jy], i0x[jx]), l0x[jx], v(i0y[jy], i1x[jx]) * l1x[jx])
        b = fma32(v(i1y[jy], i0x[jx]), l0x[jx], v(i1y[jy], i1x[jx]) * l1x[jx])
        return fma32(a, l0y[jy], b * l1y[jy])

    top = fma32(mid(j0y, j0x), m0x, mid(j0y, j1x) * m1x)
    bottom = fma32(mid(j1y, j0x), m0x, mid(j1y, j1x) * m1x)
    return fma32(top, m0y, bottom * m1y)


@dataclass
class SemanticWindows:
    """Low-resolution analysis of the logits: the decided window grid and what resolving the
    rest needs."""

    flat: np.ndarray  # (C, h * w) float32 logits
    low_w: int
    ay: _Axis
    ax: _Axis
    grid: np.ndarray  # (groups_y, groups_x) channel of each support window, ``undecided`` if not decided
    undecided: int
    eps: np.float32


def analyse_semantic_windows(logits: np.ndarray, resized_size: tuple[int, int], original_size: tuple[int, int],
                      code_dtype) -> SemanticWindows:
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
    return SemanticWindows(logits.reshape(num_ch, -1), low_w, ay, ax, grid, undecided, eps)


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


def _tile_any(cells: np.ndarray, n_ty: int, n_tx: int) -> np.ndarray:
    """(..., h, w) bool per cell -> (..., n_ty, n_tx): any over each tile's TILE_SPAN x TILE_SPAN
    cells (rows ty * TILE .. ty * TILE + TILE + 1, likewise columns)."""
    h, w = cells.shape[-2:]
    pad = np.zeros(cells.shape[:-2] + (n_ty * TILE + 2, n_tx * TILE + 2), dtype=bool)
    pad[..., :h, :w] = cells
    rows = pad[..., 0:n_ty * TILE:TILE, :].copy()
    for i in range(1, TILE_SPAN):
        rows |= pad[..., i:i + n_ty * TILE:TILE, :][..., :n_ty, :]
    out = rows[..., 0:n_tx * TILE:TILE].copy()
    for i in range(1, TILE_SPAN):
        out |= rows[..., i:i + n_tx * TILE:TILE][..., :n_tx]
    return out


def _support_has(cells: np.ndarray, ay: _Axis, ax: _Axis, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(h, w) bool per cell -> (P,) whether any cell of pixel (yy, xx)'s support (the cells with
    non-zero composite weight) is set: a summed-area table read at the support's corners."""
    table = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = cells.cumsum(axis=0).cumsum(axis=1)
    y0, x0 = ay.lo[yy], ax.lo[xx]
    y1, x1 = y0 + ay.n[yy], x0 + ax.n[xx]
    return (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) > 0


def _two_best_members(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of (C, h, w) logits: which channels reach the second largest value (counted with
    multiplicity, so at least two) -> (C, h, w) bool, an upper bound of the other channels: the
    third largest value -> (h, w), and the largest value (NaN where the cell has a NaN) -> (h, w).
    One pass over the channels."""
    best = logits[0].copy()
    second = np.full_like(best, -np.inf)
    third = second.copy()
    tmp = np.empty_like(best)
    for c in range(1, logits.shape[0]):
        x = logits[c]
        np.minimum(second, x, out=tmp)
        np.maximum(third, tmp, out=third)
        np.minimum(best, x, out=tmp)
        np.maximum(second, tmp, out=second)
        np.maximum(best, x, out=best)
    return logits >= second, third, best


@dataclass
class _TilePlan:
    """What every tile group of :func:`label_undecided_pixels` reads."""

    sem: SemanticWindows
    yy: np.ndarray  # (P,) pixels to label
    xx: np.ndarray
    tiles: np.ndarray  # (T,) tiles holding them (ty * n_tx + tx), ascending
    slot: np.ndarray  # (P,) each pixel's tile, as an index into ``tiles``
    lists: np.ndarray  # (T, kmax) ascending candidate channels, padded
    counts: np.ndarray  # (T,) candidates per tile
    bad_support: np.ndarray | None  # (P,) a non-finite logit in the pixel's support; None: all finite
    third: np.ndarray  # (h, w) bound of the channels outside a cell's two best
    floor_value: np.float32  # below every finite logit: padding candidates never win


def _label_tile_group(plan: _TilePlan, tg: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, list]:
    """Tiles ``tg`` (indices into plan.tiles, ascending, one candidate-count group) and their
    pixels ``p`` -> (the best candidate per pixel, [(pixels, channel lists)] to evaluate exactly)."""
    sem, k = plan.sem, int(plan.counts[tg].max())
    flat, ay, ax, eps = sem.flat, sem.ay, sem.ax, sem.eps
    n_tx = ax.tile_w.shape[0]
    chans = plan.lists[tg, :k]
    t_y, t_x = plan.tiles[tg] // n_tx, plan.tiles[tg] % n_tx
    cell = ay.tile_cells[t_y][:, :, None] * sem.low_w + ax.tile_cells[t_x][:, None, :]  # (tiles, span, span)
    # (tiles, rows, k + 1, cols): the candidates, then the bound plane
    blocks = np.empty((tg.size, TILE_SPAN, k + 1, TILE_SPAN), dtype=F32)
    blocks[:, :, :k] = np.take(flat, chans[:, None, :, None] * flat.shape[1] + cell[:, :, None, :])
    pad = np.arange(k)[None, :] >= plan.counts[tg][:, None]
    blocks[:, :, :k][np.broadcast_to(pad[:, None, :], (tg.size, TILE_SPAN, k))] = plan.floor_value
    blocks[:, :, k] = np.take(plan.third.reshape(-1), cell)
    if plan.bad_support is not None:  # those pixels are evaluated exactly; keep the others finite
        np.nan_to_num(blocks, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    rows = np.matmul(ay.tile_w[t_y], blocks.reshape(tg.size, TILE_SPAN, -1))  # (tiles, py, (k + 1) * span)
    vals = np.matmul(rows.reshape(tg.size, -1, TILE_SPAN), ax.tile_w[t_x].transpose(0, 2, 1))
    # vals: (tiles, py, k + 1, px), flattened; one gather per candidate column
    local = np.empty(plan.tiles.size, dtype=np.int64)
    local[tg] = np.arange(tg.size)
    ps = local[plan.slot[p]]  # each pixel's tile, as an index into tg
    n_px = vals.shape[2]
    at = ps * vals[0].size + ay.tile_pos[plan.yy[p]] * ((k + 1) * n_px) + ax.tile_pos[plan.xx[p]]
    cols = [np.take(vals.reshape(-1), at + j * n_px) for j in range(k + 1)]  # (P,) per candidate, bound
    best, runner_up = cols[0].copy(), np.full(p.size, -np.inf, dtype=F32)
    pick = np.zeros(p.size, dtype=np.int64)
    tmp = np.empty_like(best)
    for j in range(1, k):
        np.minimum(best, cols[j], out=tmp)
        np.maximum(runner_up, tmp, out=runner_up)
        pick[cols[j] > best] = j  # the first maximum, as argmax
        np.maximum(best, cols[j], out=best)
    chosen = np.take(chans.reshape(-1), ps * k + pick)
    bounded = best > cols[k] + 2 * eps
    if plan.bad_support is not None:
        bounded &= ~plan.bad_support[p]
    near_tie = np.flatnonzero(bounded & ~(best - runner_up > 2 * eps))
    exact_sets = []
    if near_tie.size:
        near = np.stack([c[near_tie] for c in cols[:k]], axis=1) >= (best[near_tie] - 2 * eps)[:, None]
        exact_sets.append((p[near_tie], _compact(chans[ps[near_tie]], near, int(near.sum(axis=1).max()))[0]))
    unbounded = p[~bounded]
    if unbounded.size:
        exact_sets.append((unbounded, np.broadcast_to(np.arange(flat.shape[0]), (unbounded.size, flat.shape[0]))))
    return chosen, exact_sets


def label_undecided_pixels(sem: SemanticWindows, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Semantic channel (argmax of the upsampled logits, torch's tie rule) at pixels (yy, xx)
    whose support window is not uniform -> (P,) int64.

    Per tile of TILE x TILE cells that holds such pixels: the candidates are the channels among
    the two best of some cell of the tile or its halo; every other channel is at most the
    cell's third best there, so at a pixel at most the upsampled third-best plane. The
    candidates and that bound are upsampled over the tile's pixels in float32 (two small matrix
    products, the tile's composite weights). A pixel is labelled by its best candidate when that
    clears the bound and the runner-up by 2 eps (a float32 sum of <= 9 products is within a few
    ulps); within 2 eps of a tie, the near-best candidates are evaluated with torch's exact
    arithmetic; below the bound, or with a non-finite logit in its support, all channels are."""
    flat, ay, ax = sem.flat, sem.ay, sem.ax
    num_ch, low_w = flat.shape[0], sem.low_w
    chosen = np.zeros(yy.size, dtype=np.int64)
    if yy.size == 0:
        return chosen
    n_ty, n_tx = ay.tile_w.shape[0], ax.tile_w.shape[0]
    member, third, best_value = _two_best_members(flat.reshape(num_ch, -1, low_w))
    lowest = float(np.fmin.reduce(flat, axis=None))
    floor_value = F32(lowest - max(1.0, abs(lowest))) if np.isfinite(lowest) else F32(-3e38)
    key = ay.tile[yy] * n_tx + ax.tile[xx]
    mark = np.zeros(n_ty * n_tx, dtype=bool)
    mark[key] = True
    tiles = np.flatnonzero(mark)
    marks = _tile_any(member, n_ty, n_tx).reshape(num_ch, -1)[:, tiles].T  # (tiles, C)
    marks[:, 0] |= ~marks.any(axis=1)  # a tile of NaN cells only: one (unused) candidate
    lists, counts = _compact(np.broadcast_to(np.arange(num_ch), marks.shape), marks, int(marks.sum(axis=1).max()))
    slot_of = np.zeros(mark.size, dtype=np.int64)
    slot_of[tiles] = np.arange(tiles.size)
    bad_support = None
    if not (np.isfinite(lowest) and np.isfinite(best_value).all()):
        bad_support = _support_has(~np.isfinite(flat).all(axis=0).reshape(best_value.shape), ay, ax, yy, xx)
    plan = _TilePlan(sem, yy, xx, tiles, slot_of[key], lists, counts, bad_support,
                     np.maximum(third, floor_value), floor_value)  # third: finite where there is no third channel
    group = np.searchsorted(np.array(K_BOUNDS), counts)
    pix_group = group[plan.slot]
    order = np.argsort(pix_group, kind="stable")  # pixels by tile group
    ends = np.cumsum(np.bincount(pix_group, minlength=len(K_BOUNDS) + 1))
    for g in np.flatnonzero(np.bincount(group, minlength=len(K_BOUNDS) + 1)):
        p = order[ends[g - 1] if g else 0:ends[g]]
        chosen[p], exact_sets = _label_tile_group(plan, np.flatnonzero(group == g), p)
        for pix, chans in exact_sets:
            exact = _exact_logits(flat, low_w, ay, ax, yy[pix], xx[pix], chans)
            chosen[pix] = chans[np.arange(pix.size), np.argmax(exact, axis=1)]
    return chosen


def semantic_argmax(semantic_logits: np.ndarray, *, resized_size: tuple[int, int],
                    original_size: tuple[int, int]) -> np.ndarray:
    """argmax over channels of the reference's two-stage upsampled logits, at every pixel of
    the original image -> (H, W) int64 channel (0..S)."""
    logits = np.asarray(semantic_logits, dtype=F32)
    sem = analyse_semantic_windows(logits, resized_size, original_size, np.int64)
    out = np.take(np.take(sem.grid, sem.ay.gid, axis=0), sem.ax.gid, axis=1)
    yy, xx = np.nonzero(out == sem.undecided)
    if yy.size:
        out[yy, xx] = label_undecided_pixels(sem, yy, xx)
    return out
