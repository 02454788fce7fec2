"""Triton source of the GPU post-processing kernels (mask pasting + panoptic fusion + semantic
argmax), compiled ahead of time to PTX by ``runtime/gpu/build_ptx.py`` and launched without
Triton or PyTorch by ``runtime/gpu/launcher.py`` / ``runtime/gpu/device_fusion.py``.

Imported only by the PTX build tool and by tests (which also run these same kernels on the CPU
with ``TRITON_INTERPRET=1``). Never imported by the runtime: it needs Triton.

Semantics are those of ``training/model/panoptic_fusion.py`` + ``training/predictor.py``
(``label_map_single_image``), operation by operation and in float32, *including the rounding of
the PyTorch CPU kernels of the reference*: the reference's torch build contracts
``a * b + c`` into fused multiply-adds inside ``grid_sample`` and ``upsample_bilinear2d`` (GCC
``-ffp-contract=fast``), so these kernels call ``tl.fma`` exactly where those C++ kernels fuse
and are compiled with ``enable_fp_fusion=False`` so that nothing else is fused; divisions use
``tl.math.div_rn`` (IEEE; Triton's ``/`` is the approximate ``div.full.f32``).

Kernels (one image; ``D`` detection slots, ``n = num_detections <= D``; all buffers contiguous):

* ``fusion_sort_kernel``   grid (1,): order of the detections as torch's CPU
  ``argsort(-scores)`` gives it (libstdc++ ``std::sort``: introsort, median-of-3, heap-sort
  fallback, final insertion sort), so tie order matches the reference. Without ties any sort is
  that sort and the introsort is skipped.
* ``instance_stats_kernel`` grid (P,): for sorting slot ``slot``: the pasted mask bit is computed
  on the fly from the 28x28 probabilities over the instance's paste region; counts its area and
  the pixels already taken (label map != 0); one atomic add per program.
* ``instance_write_kernel`` grid (P,): keep/skip decision of slot ``slot`` (area 0, or
  float32(covered) / (float32(area) + 1e-5) > overlap threshold -> skip); a kept instance gets the
  next number k and writes ``label + k * offset`` into its free pixels. Program 0 records the
  running count and which detection became instance k.
* ``semantic_kernel``       grid (cdiv(W, TW), cdiv(H, TH)): for every pixel not taken by an
  instance, argmax over the S + 1 channels of the two-stage bilinear upsampling (stride-4 logits
  -> padded size -> crop to the resized size -> original size), computed on the fly; writes
  ``T + argmax`` (the things channel S gives VOID = T + S) and histograms stuff labels.
* ``small_stuff_kernel``    grid (cdiv(H * W, BLOCK),): stuff labels covering fewer than
  ``stuff_area_limit`` pixels become VOID.

The per-instance kernels are "grid-stride": P programs loop over the tiles of the instance's
region (only known on the device), so the host never needs the boxes.
"""
from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# helpers


@triton.jit
def _less(a, b):
    """torch's CPU sort comparator (ascending, NaN last): (!isnan(a) && isnan(b)) || a < b."""
    return ((a == a) & (b != b)) | (a < b)


@triton.jit
def _get(v, ar, i):
    """v[i] of a register vector (exact for integers: a masked sum)."""
    return tl.sum(tl.where(ar == i, v, 0), axis=0)


@triton.jit
def _set(v, ar, i, x):
    return tl.where(ar == i, x, v)


@triton.jit
def _key(packed):
    """Sort key (float32) of a packed (key bits << 32 | detection index) int64."""
    return (packed >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _key_at(p, ar, i):
    return _key(_get(p, ar, i))


@triton.jit
def _swap(p, ar, i, j):
    pi = _get(p, ar, i)
    pj = _get(p, ar, j)
    return tl.where(ar == i, pj, tl.where(ar == j, pi, p))


@triton.jit
def _adjust_heap(p, ar, first, hole, length, value):
    """libstdc++ std::__adjust_heap + std::__push_heap on p[first:first + length]."""
    vkey = _key(value)
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _less(_key_at(p, ar, first + child), _key_at(p, ar, first + child - 1)):
            child = child - 1
        p = _set(p, ar, first + hole, _get(p, ar, first + child))
        hole = child
    if ((length & 1) == 0) & (child == (length - 2) // 2):
        child = 2 * (child + 1)
        p = _set(p, ar, first + hole, _get(p, ar, first + child - 1))
        hole = child - 1
    parent = (hole - 1) // 2
    go = (hole > top) & _less(_key_at(p, ar, first + parent), vkey)
    while go:
        p = _set(p, ar, first + hole, _get(p, ar, first + parent))
        hole = parent
        parent = (hole - 1) // 2
        go = (hole > top) & _less(_key_at(p, ar, first + parent), vkey)
    p = _set(p, ar, first + hole, value)
    return p


@triton.jit
def _heap_sort(p, ar, first, last):
    """libstdc++ std::__partial_sort(first, last, last): make_heap then sort_heap."""
    length = last - first
    parent = (length - 2) // 2
    go = length >= 2
    while go:
        p = _adjust_heap(p, ar, first, parent, length, _get(p, ar, first + parent))
        go = parent > 0
        parent = parent - 1
    while last - first > 1:
        last = last - 1
        value = _get(p, ar, last)
        p = _set(p, ar, last, _get(p, ar, first))
        p = _adjust_heap(p, ar, first, first * 0, last - first, value)
    return p


@triton.jit
def _stable_rank(p, ar, n, BLOCK: tl.constexpr):
    """rank of each element in a stable sort by key (what std::sort's final insertion sort
    makes of the introsort-partitioned array) and the number of tied pairs."""
    keys = _key(p)
    rank = tl.zeros([BLOCK], dtype=tl.int32)
    ties = tl.zeros([BLOCK], dtype=tl.int32)
    for j in range(0, n):
        # (broadcast before comparing: the interpreter mislabels broadcast scalar comparisons)
        kj = tl.full([BLOCK], 0.0, tl.float32) + _key_at(p, ar, j)
        lt = _less(kj, keys)
        eq = (~lt) & (~_less(keys, kj))
        rank += (lt | (eq & (ar > j))).to(tl.int32)
        ties += (eq & (ar != j)).to(tl.int32)
    return rank, tl.sum(tl.where(ar < n, ties, 0), axis=0)


@triton.jit
def _src_index(dst, in_size, out_size):
    """torch upsample_bilinear2d (align_corners=False) source indices and weights along one
    axis, float32 as the reference's CPU kernel computes them (fma in the source index):
    scale = in / out; src = max(fma(scale, dst + 0.5, -0.5), 0); i0 = min(int(src), in - 1);
    i1 = i0 + (i0 < in - 1); l1 = clamp(src - i0, 0, 1); l0 = 1 - l1; in == out copies."""
    scale = tl.math.div_rn(in_size.to(tl.float32), out_size.to(tl.float32))
    src = tl.fma(scale, dst.to(tl.float32) + 0.5, -0.5)
    src = tl.where(src < 0.0, 0.0, src)
    i0 = tl.minimum(tl.floor(src).to(tl.int32), in_size - 1)
    l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    same = in_size == out_size
    i0 = tl.where(same, dst, i0)
    i1 = tl.where(same, dst, i1)
    l1 = tl.where(same, 0.0, l1)
    l0 = 1.0 - l1
    return i0, i1, l0, l1


@triton.jit
def _lerp2(base, w4, r0, r1, a0, a1, c0, c1, b0, b1, mask):
    """Bilinear value as torch's separable CPU kernel: rows r0/r1 (weights a0/a1, shape
    [TH, 1]), columns c0/c1 (weights b0/b1, shape [1, TW]); x first, then y, each
    fma(t0, w0, t1 * w1)."""
    v00 = tl.load(base + r0 * w4 + c0, mask=mask, other=0.0)
    v01 = tl.load(base + r0 * w4 + c1, mask=mask, other=0.0)
    v10 = tl.load(base + r1 * w4 + c0, mask=mask, other=0.0)
    v11 = tl.load(base + r1 * w4 + c1, mask=mask, other=0.0)
    t0 = tl.fma(v00, b0, v01 * b1)
    t1 = tl.fma(v10, b0, v11 * b1)
    return tl.fma(t0, a0, t1 * a1)


@triton.jit
def _load_box(boxes_ptr, det, sx, sy, H, W):
    """Box of detection det in original-image pixels (float32 division by the per-axis resize
    factors) and its paste region [x0i, x1i) x [y0i, y1i) as the reference:
    x0i = max(floor(x1) - 1, 0), x1i = min(ceil(x2) + 1, W), same for y."""
    bx1 = tl.math.div_rn(tl.load(boxes_ptr + det * 4 + 0), sx)
    by1 = tl.math.div_rn(tl.load(boxes_ptr + det * 4 + 1), sy)
    bx2 = tl.math.div_rn(tl.load(boxes_ptr + det * 4 + 2), sx)
    by2 = tl.math.div_rn(tl.load(boxes_ptr + det * 4 + 3), sy)
    x0i = tl.maximum(tl.floor(bx1) - 1.0, 0.0).to(tl.int32)
    y0i = tl.maximum(tl.floor(by1) - 1.0, 0.0).to(tl.int32)
    x1i = tl.minimum(tl.ceil(bx2) + 1.0, W.to(tl.float32)).to(tl.int32)
    y1i = tl.minimum(tl.ceil(by2) + 1.0, H.to(tl.float32)).to(tl.int32)
    return bx1, by1, bx2, by2, x0i, y0i, x1i, y1i


@triton.jit
def _grid_coord(pix, lo, hi, M):
    """Pixel index -> grid_sample source coordinate in the MxM mask: normalised
    g = ((pix + 0.5) - lo) / (hi - lo) * 2 - 1 (inf -> 0), then grid_sample's unnormalise
    fma(g + 1, M / 2, -0.5) (align_corners=False). Returns the floor index and weight."""
    g = tl.math.div_rn((pix.to(tl.float32) + 0.5) - lo, hi - lo) * 2.0 - 1.0
    g = tl.where(tl.abs(g) == float("inf"), 0.0, g)
    src = tl.fma(g + 1.0, M.to(tl.float32) * 0.5, -0.5)
    fl = tl.floor(src)
    return fl.to(tl.int32), src - fl


@triton.jit
def _mask_tile(probs_ptr, ys, xs, bx1, by1, bx2, by2, M, mask_thr):
    """Pasted-mask bits of a tile (ys: [TH, 1] rows, xs: [1, TW] columns): grid_sample
    bilinear with zero padding over the 28x28 probabilities, as torch's vectorised CPU kernel
    (corner weights s*e, s*w, n*e, n*w; value = fma chain nw, ne, sw, se), then >= threshold."""
    ix, wx = _grid_coord(xs, bx1, bx2, M)
    iy, wy = _grid_coord(ys, by1, by2, M)
    ex = 1.0 - wx
    sy_ = 1.0 - wy
    nw = sy_ * ex
    ne = sy_ * wx
    sw = wy * ex
    se = wy * wx
    inx0 = (ix > -1) & (ix < M)
    inx1 = (ix + 1 > -1) & (ix + 1 < M)
    iny0 = (iy > -1) & (iy < M)
    iny1 = (iy + 1 > -1) & (iy + 1 < M)
    v_nw = tl.load(probs_ptr + iy * M + ix, mask=iny0 & inx0, other=0.0)
    v_ne = tl.load(probs_ptr + iy * M + ix + 1, mask=iny0 & inx1, other=0.0)
    v_sw = tl.load(probs_ptr + (iy + 1) * M + ix, mask=iny1 & inx0, other=0.0)
    v_se = tl.load(probs_ptr + (iy + 1) * M + ix + 1, mask=iny1 & inx1, other=0.0)
    val = v_nw * nw
    val = tl.fma(v_ne, ne, val)
    val = tl.fma(v_sw, sw, val)
    val = tl.fma(v_se, se, val)
    return val >= mask_thr


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def fusion_sort_kernel(scores_ptr, num_det_ptr, order_ptr, D, BLOCK: tl.constexpr, STACK: tl.constexpr):
    """order[r] = detection index of rank r in torch.argsort(-scores[:n]) (CPU, unstable).

    scores_ptr: float32 [D]; num_det_ptr: int64 [1] (n, clamped to [0, D]);
    order_ptr: int32 [D] (rows >= n untouched). One program; BLOCK >= D (power of 2).
    """
    ar = tl.arange(0, BLOCK)
    n = tl.minimum(tl.maximum(tl.load(num_det_ptr).to(tl.int32), 0), D)
    s = tl.load(scores_ptr + ar, mask=ar < n, other=0.0)
    keybits = (-s).to(tl.int32, bitcast=True)
    p = (keybits.to(tl.int64) << 32) | ar.to(tl.int64)
    rank, ties = _stable_rank(p, ar, n, BLOCK)
    if (ties > 0) & (n > 16):
        # std::__introsort_loop with an explicit stack of (first, last, depth) segments; the
        # recursion order does not matter (segments are disjoint)
        lg = n * 0
        t = n
        while t > 1:
            t = t >> 1
            lg = lg + 1
        sar = tl.arange(0, STACK)
        st_first = tl.zeros([STACK], dtype=tl.int32)
        st_last = tl.where(sar == 0, n, 0)
        st_depth = tl.where(sar == 0, 2 * lg, 0)
        sp = n * 0 + 1
        while sp > 0:
            sp = sp - 1
            first = _get(st_first, sar, sp)
            last = _get(st_last, sar, sp)
            depth = _get(st_depth, sar, sp)
            while last - first > 16:
                if depth == 0:
                    p = _heap_sort(p, ar, first, last)
                    last = first
                else:
                    depth = depth - 1
                    mid = first + (last - first) // 2
                    ka = _key_at(p, ar, first + 1)
                    kb = _key_at(p, ar, mid)
                    kc = _key_at(p, ar, last - 1)
                    ab = _less(ka, kb)
                    bc = _less(kb, kc)
                    ac = _less(ka, kc)
                    m = tl.where(ab, tl.where(bc, mid, tl.where(ac, last - 1, first + 1)),
                                 tl.where(ac, first + 1, tl.where(bc, last - 1, mid)))
                    p = _swap(p, ar, first, m)
                    pivot = _key_at(p, ar, first)
                    lo = first + 1
                    hi = last
                    cont = lo < hi
                    while cont:
                        go = _less(_key_at(p, ar, lo), pivot)
                        while go:
                            lo = lo + 1
                            go = _less(_key_at(p, ar, lo), pivot)
                        hi = hi - 1
                        go = _less(pivot, _key_at(p, ar, hi))
                        while go:
                            hi = hi - 1
                            go = _less(pivot, _key_at(p, ar, hi))
                        cont = lo < hi
                        if cont:
                            p = _swap(p, ar, lo, hi)
                            lo = lo + 1
                    if last - lo > 16:
                        st_first = _set(st_first, sar, sp, lo)
                        st_last = _set(st_last, sar, sp, last)
                        st_depth = _set(st_depth, sar, sp, depth)
                        sp = sp + 1
                    last = lo
        rank, ties = _stable_rank(p, ar, n, BLOCK)
    det = (p & 0xFFFFFFFF).to(tl.int32)
    tl.store(order_ptr + rank, det, mask=ar < n)


@triton.jit
def instance_stats_kernel(slot, boxes_ptr, probs_ptr, num_det_ptr, order_ptr, label_map_ptr, stats_ptr,
                          H, W, M, sx, sy, mask_thr, TH: tl.constexpr, TW: tl.constexpr):
    """Area and covered pixels of the detection in sorting slot ``slot``.

    boxes_ptr: float32 [D, 4] (resized-image pixels); probs_ptr: float32 [D, M, M];
    num_det_ptr: int64 [1]; order_ptr: int32 [D]; label_map_ptr: int32 [H, W] (0 = free);
    stats_ptr: int32 [D, 2] (area, covered), accumulated with atomics (zeroed beforehand).
    Grid (P,): program i handles region tiles i, i + P, ...
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    valid = slot < tl.load(num_det_ptr).to(tl.int32)
    det = tl.load(order_ptr + slot, mask=valid, other=0)
    bx1, by1, bx2, by2, x0i, y0i, x1i, y1i = _load_box(boxes_ptr, det, sx, sy, H, W)
    ntx = tl.cdiv(tl.maximum(x1i - x0i, 0), TW)
    nty = tl.cdiv(tl.maximum(y1i - y0i, 0), TH)
    n_tiles = tl.where(valid, ntx * nty, 0)
    probs = probs_ptr + det * M * M
    area = pid * 0
    covered = pid * 0
    for t in range(pid, n_tiles, nprog):
        ys = y0i + (t // ntx) * TH + tl.arange(0, TH)[:, None]
        xs = x0i + (t % ntx) * TW + tl.arange(0, TW)[None, :]
        inside = (ys < y1i) & (xs < x1i)
        bits = _mask_tile(probs, ys, xs, bx1, by1, bx2, by2, M, mask_thr) & inside
        cur = tl.load(label_map_ptr + ys * W + xs, mask=bits, other=0)
        area += tl.sum(bits.to(tl.int32))
        covered += tl.sum((bits & (cur != 0)).to(tl.int32))
    tl.atomic_add(stats_ptr + slot * 2, area, mask=area > 0)
    tl.atomic_add(stats_ptr + slot * 2 + 1, covered, mask=covered > 0)


@triton.jit
def instance_write_kernel(slot, boxes_ptr, probs_ptr, labels_ptr, num_det_ptr, order_ptr, label_map_ptr,
                          stats_ptr, count_ptr, kept_ptr, H, W, M, sx, sy, mask_thr, overlap_thr, offset,
                          TH: tl.constexpr, TW: tl.constexpr):
    """Keep/skip the detection in slot ``slot`` and paint its free pixels if kept.

    labels_ptr: int64 [D]; stats_ptr: int32 [D, 2] from instance_stats_kernel; count_ptr: int32
    [D + 1], count[s] = instances kept before slot s (count[0] = 0, written by program 0 of
    slot s - 1); kept_ptr: int32 [D], kept[k - 1] = detection index of instance k.
    Pixels get ``label + k * offset`` (int32). Grid (P,) as instance_stats_kernel.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    valid = slot < tl.load(num_det_ptr).to(tl.int32)
    det = tl.load(order_ptr + slot, mask=valid, other=0)
    area = tl.load(stats_ptr + slot * 2)
    covered = tl.load(stats_ptr + slot * 2 + 1)
    ratio = tl.math.div_rn(covered.to(tl.float32), area.to(tl.float32) + 1e-5)
    keep = valid & (area > 0) & (~(ratio > overlap_thr))
    before = tl.load(count_ptr + slot)
    tl.store(count_ptr + slot + 1, before + keep.to(tl.int32), mask=pid == 0)
    tl.store(kept_ptr + before, det, mask=(pid == 0) & keep)
    label = tl.load(labels_ptr + det, mask=keep, other=0).to(tl.int32)
    value = label + (before + 1) * offset
    bx1, by1, bx2, by2, x0i, y0i, x1i, y1i = _load_box(boxes_ptr, det, sx, sy, H, W)
    ntx = tl.cdiv(tl.maximum(x1i - x0i, 0), TW)
    nty = tl.cdiv(tl.maximum(y1i - y0i, 0), TH)
    n_tiles = tl.where(keep, ntx * nty, 0)
    probs = probs_ptr + det * M * M
    for t in range(pid, n_tiles, nprog):
        ys = y0i + (t // ntx) * TH + tl.arange(0, TH)[:, None]
        xs = x0i + (t % ntx) * TW + tl.arange(0, TW)[None, :]
        inside = (ys < y1i) & (xs < x1i)
        bits = _mask_tile(probs, ys, xs, bx1, by1, bx2, by2, M, mask_thr) & inside
        ptrs = label_map_ptr + ys * W + xs
        cur = tl.load(ptrs, mask=bits, other=1)
        tl.store(ptrs, tl.zeros([TH, TW], dtype=tl.int32) + value, mask=bits & (cur == 0))


@triton.jit
def semantic_kernel(logits_ptr, label_map_ptr, hist_ptr, H, W, RH, RW, PH, PW, LH, LW, S, T,
                    TH: tl.constexpr, TW: tl.constexpr, NB: tl.constexpr):
    """Semantic label of every free pixel of the (H, W) original-size label map.

    logits_ptr: float32 [S + 1, LH, LW] stride-4 logits; (PH, PW): padded input size the first
    bilinear stage goes to; (RH, RW): resized image size it is cropped to; (H, W): original size
    (second stage). label_map_ptr: int32 [H, W], 0 = free -> T + argmax (first maximum; NaN
    counts as maximum as in torch.argmax); hist_ptr: int32 [NB] (NB >= S, power of 2), counts
    of stuff channels 0..S-1 over the free pixels (atomics). Grid (cdiv(W, TW), cdiv(H, TH)).
    """
    ys = tl.program_id(1) * TH + tl.arange(0, TH)[:, None]
    xs = tl.program_id(0) * TW + tl.arange(0, TW)[None, :]
    inside = (ys < H) & (xs < W)
    cur = tl.load(label_map_ptr + ys * W + xs, mask=inside, other=1)
    free = inside & (cur == 0)
    # stage 2 (resized crop -> original) and stage 1 (logits -> padded) indices, per row/column
    py0, py1, wy0, wy1 = _src_index(ys, RH, H)
    px0, px1, wx0, wx1 = _src_index(xs, RW, W)
    qa0, qa1, va0, va1 = _src_index(py0, LH, PH)
    qb0, qb1, vb0, vb1 = _src_index(py1, LH, PH)
    ra0, ra1, ua0, ua1 = _src_index(px0, LW, PW)
    rb0, rb1, ub0, ub1 = _src_index(px1, LW, PW)
    best = tl.full([TH, TW], float("-inf"), dtype=tl.float32)
    best_c = tl.zeros([TH, TW], dtype=tl.int32)
    plane = LH * LW
    for c in range(0, S + 1):
        base = logits_ptr + c * plane
        i00 = _lerp2(base, LW, qa0, qa1, va0, va1, ra0, ra1, ua0, ua1, free)
        i01 = _lerp2(base, LW, qa0, qa1, va0, va1, rb0, rb1, ub0, ub1, free)
        i10 = _lerp2(base, LW, qb0, qb1, vb0, vb1, ra0, ra1, ua0, ua1, free)
        i11 = _lerp2(base, LW, qb0, qb1, vb0, vb1, rb0, rb1, ub0, ub1, free)
        t0 = tl.fma(i00, wx0, i01 * wx1)
        t1 = tl.fma(i10, wx0, i11 * wx1)
        v = tl.fma(t0, wy0, t1 * wy1)
        upd = (v > best) | ((v != v) & (best == best))
        best = tl.where(upd, v, best)
        best_c = tl.where(upd, c, best_c)
    tl.store(label_map_ptr + ys * W + xs, T + best_c, mask=free)
    stuff = free & (best_c < S)
    flat = tl.reshape(tl.where(stuff, best_c, 0), [TH * TW])
    counts = tl.histogram(flat, NB, mask=tl.reshape(stuff, [TH * TW]))
    bins = tl.arange(0, NB)
    tl.atomic_add(hist_ptr + bins, counts, mask=(bins < S) & (counts > 0))


@triton.jit
def small_stuff_kernel(label_map_ptr, hist_ptr, HW, S, T, limit, BLOCK: tl.constexpr):
    """Stuff labels T..T+S-1 whose pixel count (hist_ptr int32 [>= S]) is below ``limit``
    become VOID = T + S. label_map_ptr: int32 [HW]. Grid (cdiv(HW, BLOCK),)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < HW
    v = tl.load(label_map_ptr + offs, mask=inside, other=0)
    is_stuff = inside & (v >= T) & (v < T + S)
    count = tl.load(hist_ptr + (v - T), mask=is_stuff, other=0)
    small = is_stuff & (count < limit)
    tl.store(label_map_ptr + offs, tl.zeros([BLOCK], dtype=tl.int32) + (T + S), mask=small)
