"""Semantic labels of the torch-free post-processing: the argmax over channels of the PyTorch
reference's two-stage bilinear upsampling of the stride-4 logits (x4 to the padded size, crop,
to the original size), pixel for pixel, without the (S + 1) full-resolution logit planes.

An output pixel's logits are a convex combination of at most 3x3 stride-4 logit vectors. Where
every vector of that support window has the same argmax by a clear margin, the pixel's label is
that argmax: decided on a small grid of support windows (:func:`analyse_semantic_windows`) and
expanded. The remaining pixels (:func:`label_undecided_pixels`) are evaluated over the few
channels that can still win in their window (bounded by the window's per-channel max / min),
with torch's float32 arithmetic where the two best are within rounding of each other.

Outputs whose height + width <= 128, and 3-channel logits with one torch thread, go through
another torch upsampling kernel whose last-bit rounding differs; that matters only where two
logits tie to the last bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.contract import SEMANTIC_STRIDE
from runtime.float32_ops import F32, F64, fma32

LOGIT_EPS = 1e-5  # x max |logit|: margins below this count as possible ties


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


def _slot_min_max(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min and max over axis 1 of (n, slots, k), slot by slot (numpy's reduction over a short
    middle axis is slow)."""
    low = vals[:, 0].copy()
    high = vals[:, 0].copy()
    for s in range(1, vals.shape[1]):
        np.minimum(low, vals[:, s], out=low)
        np.maximum(high, vals[:, s], out=high)
    return low, high


def label_undecided_pixels(sem: SemanticWindows, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
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
    sem = analyse_semantic_windows(logits, resized_size, original_size, np.int64)
    out = np.take(np.take(sem.grid, sem.ay.gid, axis=0), sem.ax.gid, axis=1)
    yy, xx = np.nonzero(out == sem.undecided)
    if yy.size:
        out[yy, xx] = label_undecided_pixels(sem, yy, xx)
    return out
