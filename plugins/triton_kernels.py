"""Triton kernels for the two custom operators (specs: ``plugins/*.md``), written for TensorRT's
ahead-of-time Python plugins (``plugins/trt_plugins.py``).

A TensorRT AOT plugin launches exactly ONE kernel per plugin call, with the arguments in the order
``(input pointers..., int32 scalars..., output pointers...)`` and no workspace. Both kernels are
written for that contract:

* ``roi_align_kernel``: one program per (roi, output bin) (+1 idle program so that the grid is
  never empty), looping over channel blocks; level rule, half-pixel mapping, adaptive sampling
  and the out-of-range / clamping rules exactly as ``plugins/reference.py``.
* ``nms_kernel``: one program per batch image, everything in that program: candidates are pulled
  in descending (score, then lower index) order in chunks of ``CHUNK`` (a streaming top-CHUNK
  merge with ``tl.sort`` over the scores, below a cursor key), and each candidate is tested against
  the boxes kept so far, which live in registers (at most ``max_output_boxes``). Memory beyond
  registers: only the outputs. Exact greedy NMS, fixed-size output with -1 padding.

The kernels are plain Python functions wrapped on demand: :func:`interpreted` gives Triton
interpreter versions (CPU, numpy; used by the tests with ``torch`` CPU tensors), and
:func:`compile_kernel` compiles for a given SM with the project's one Triton-to-PTX compiler
(``runtime/gpu/triton_aot.py``, no GPU needed) and returns PTX whose two hidden Triton parameters
(global / profile scratch pointers, unused by these kernels) are removed so that the parameter
list is exactly what TensorRT passes.

Floating point: compiled with ``enable_fp_fusion=False`` and correctly rounded ``div_rn`` /
``sqrt_rn`` so that every value is the float32 value the numpy reference computes (the level
rule is written as comparisons against powers of two, the exact floor of log2).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import triton
import triton.language as tl

from pfpn.runtime.gpu.triton_aot import PtxKernel, compile_ptx

# ----------------------------------------------------------------------------------------------
# kernels (plain functions; see interpreted() / compile_kernel())

_KERNELS: dict[str, Callable[..., Any]] = {}


def _kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    _KERNELS[fn.__name__] = fn
    return fn


@triton.jit
def _sample_axis(start, i, bin_size, grid, size_f, size):
    """Sample ``i`` of a bin's ``grid`` on one axis (feature size ``size``) -> (inside, lo, hi, frac):
    the sample coordinate, whether it is within [-1, size], its two neighbouring cells and the
    bilinear weight of ``hi``, clamped as ``plugins/reference.py`` clamps."""
    pos = start + tl.div_rn((i + 0.5) * bin_size, grid.to(tl.float32))
    inside = (pos >= -1.0) & (pos <= size_f)
    c = tl.maximum(pos, 0.0)
    lo = tl.floor(c).to(tl.int32)
    edge = lo >= size - 1
    lo = tl.where(edge, size - 1, lo)
    hi = tl.where(edge, size - 1, lo + 1)
    c = tl.where(edge, lo.to(tl.float32), c)
    return inside, lo, hi, c - lo.to(tl.float32)


@_kernel
def roi_align_kernel(rois_ptr, p2_ptr, p3_ptr, p4_ptr, p5_ptr,
                     K, C, H2, W2, H3, W3, H4, W4, H5, W5,
                     out_ptr,
                     OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr, BASE_STRIDE: tl.constexpr,
                     FINEST: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    if pid < K * OH * OW:
        k = pid // (OH * OW)
        ph = (pid % (OH * OW)) // OW
        pw = pid % OW
        roi = rois_ptr + k * 5
        batch = tl.load(roi).to(tl.int64)
        bx1 = tl.load(roi + 1)
        by1 = tl.load(roi + 2)
        bx2 = tl.load(roi + 3)
        by2 = tl.load(roi + 4)
        # level = clamp(floor(log2(sqrt(w h) / finest + 1e-6)), 0, 3), as comparisons (NaN -> 0)
        area = (bx2 - bx1) * (by2 - by1)
        t = tl.div_rn(tl.sqrt_rn(area), FINEST) + 1e-6
        level = (t >= 2.0).to(tl.int32) + (t >= 4.0).to(tl.int32) + (t >= 8.0).to(tl.int32)
        feat = tl.where(level == 0, p2_ptr, tl.where(level == 1, p3_ptr, tl.where(level == 2, p4_ptr, p5_ptr)))
        height = tl.where(level == 0, H2, tl.where(level == 1, H3, tl.where(level == 2, H4, H5)))
        width = tl.where(level == 0, W2, tl.where(level == 1, W3, tl.where(level == 2, W4, W5)))
        scale = tl.div_rn(1.0, (BASE_STRIDE * (1 << level)).to(tl.float32))
        x1 = bx1 * scale - 0.5
        y1 = by1 * scale - 0.5
        x2 = bx2 * scale - 0.5
        y2 = by2 * scale - 0.5
        roi_w = x2 - x1
        roi_h = y2 - y1
        bin_w = tl.div_rn(roi_w, OW * 1.0)
        bin_h = tl.div_rn(roi_h, OH * 1.0)
        if SAMPLING > 0:
            grid_h = SAMPLING + 0 * k
            grid_w = SAMPLING + 0 * k
        else:
            grid_h = tl.ceil(bin_h).to(tl.int32)
            grid_w = tl.ceil(bin_w).to(tl.int32)
        count = tl.maximum(grid_h * grid_w, 1).to(tl.float32)
        y_start = y1 + ph * bin_h
        x_start = x1 + pw * bin_w
        hf = height.to(tl.float32)
        wf = width.to(tl.float32)
        plane = height.to(tl.int64) * width
        offs_c = tl.arange(0, BLOCK_C)
        out_base = out_ptr + (k.to(tl.int64) * C) * (OH * OW) + ph * OW + pw
        for c0 in range(0, C, BLOCK_C):
            chan = c0 + offs_c
            cmask = chan < C
            chan_base = feat + (batch * C + chan) * plane
            acc = tl.zeros([BLOCK_C], dtype=tl.float32)
            for iy in range(grid_h):
                y_in, y_lo, y_hi, fy = _sample_axis(y_start, iy, bin_h, grid_h, hf, height)
                for ix in range(grid_w):
                    x_in, x_lo, x_hi, fx = _sample_axis(x_start, ix, bin_w, grid_w, wf, width)
                    # (a scalar condition is widened through int32: the interpreter cannot AND a bool
                    # scalar into a bool block)
                    m = cmask & (((y_in & x_in).to(tl.int32) + tl.zeros([BLOCK_C], tl.int32)) != 0)
                    v00 = tl.load(chan_base + y_lo * width + x_lo, mask=m, other=0.0)
                    v01 = tl.load(chan_base + y_lo * width + x_hi, mask=m, other=0.0)
                    v10 = tl.load(chan_base + y_hi * width + x_lo, mask=m, other=0.0)
                    v11 = tl.load(chan_base + y_hi * width + x_hi, mask=m, other=0.0)
                    top = v00 * (1.0 - fx) + v01 * fx
                    bottom = v10 * (1.0 - fx) + v11 * fx
                    acc += top * (1.0 - fy) + bottom * fy
            tl.store(out_base + chan.to(tl.int64) * (OH * OW), tl.div_rn(acc, count + tl.zeros_like(acc)), mask=cmask)


@_kernel
def nms_kernel(boxes_ptr, scores_ptr, groups_ptr,
               B, N,
               selected_ptr, count_ptr,
               K: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr, IOU: tl.constexpr,
               SCORE_THR: tl.constexpr):
    b = tl.program_id(0)
    if b < B:
        KEY_NONE: tl.constexpr = -9223372036854775807 - 1
        KEY_MAX: tl.constexpr = 9223372036854775807
        LOW32: tl.constexpr = 4294967295
        ar_k = tl.arange(0, BLOCK_K)
        ar_c = tl.arange(0, CHUNK)
        first_row = (tl.arange(0, 2) == 0)[:, None]
        row = b.to(tl.int64) * N
        tl.store(selected_ptr + b * K + ar_k, tl.full([BLOCK_K], -1, tl.int64), mask=ar_k < K)
        kx1 = tl.zeros([BLOCK_K], dtype=tl.float32)
        ky1 = tl.zeros([BLOCK_K], dtype=tl.float32)
        kx2 = tl.zeros([BLOCK_K], dtype=tl.float32)
        ky2 = tl.zeros([BLOCK_K], dtype=tl.float32)
        kgrp = tl.zeros([BLOCK_K], dtype=tl.int64)
        kept = b * 0
        cursor = KEY_MAX + row * 0
        more = b < B
        while more & (kept < K):
            # the next CHUNK candidates in (score desc, index asc) order below the cursor key
            best = tl.full([CHUNK], KEY_NONE, tl.int64)
            for start in range(0, N, CHUNK):
                offs = start + ar_c
                inside = offs < N
                s = tl.load(scores_ptr + row + offs, mask=inside, other=0.0)
                s = tl.where(s == 0.0, 0.0, s)  # -0.0 sorts with +0.0
                bits = s.to(tl.int32, bitcast=True)
                ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
                key = (ordered << 32) | (LOW32 - offs.to(tl.int64))
                ok = inside & (s > SCORE_THR) & (key < cursor)
                key = tl.where(ok, key, KEY_NONE)
                if tl.max(key, axis=0) > tl.min(best, axis=0):
                    merged = tl.sort(tl.cat(best, key, can_reorder=True), descending=True)
                    best = tl.sum(tl.where(first_row, tl.reshape(merged, (2, CHUNK)), 0), axis=0)
            n_valid = tl.sum((best != KEY_NONE).to(tl.int32), axis=0)
            # greedy: keep a candidate unless a kept box of its group overlaps it by > IOU
            j = b * 0
            while (j < n_valid) & (kept < K):
                key_j = tl.sum(tl.where(ar_c == j, best, 0), axis=0)
                idx = LOW32 - (key_j & LOW32)
                box = boxes_ptr + (row + idx) * 4
                x1 = tl.load(box)
                y1 = tl.load(box + 1)
                x2 = tl.load(box + 2)
                y2 = tl.load(box + 3)
                grp = tl.load(groups_ptr + row + idx)
                area = (x2 - x1) * (y2 - y1)
                iw = tl.maximum(tl.minimum(kx2, x2) - tl.maximum(kx1, x1), 0.0)
                ih = tl.maximum(tl.minimum(ky2, y2) - tl.maximum(ky1, y1), 0.0)
                inter = iw * ih
                union = (kx2 - kx1) * (ky2 - ky1) + area - inter
                iou = tl.where(union > 0.0, tl.div_rn(inter, tl.where(union > 0.0, union, 1.0)), 0.0)
                hit = (ar_k < kept) & (kgrp == grp) & (iou > IOU)
                if tl.max(hit.to(tl.int32), axis=0) == 0:
                    slot = ar_k == kept
                    kx1 = tl.where(slot, x1, kx1)
                    ky1 = tl.where(slot, y1, ky1)
                    kx2 = tl.where(slot, x2, kx2)
                    ky2 = tl.where(slot, y2, ky2)
                    kgrp = tl.where(slot, grp, kgrp)
                    tl.store(selected_ptr + b * K + kept, idx)
                    kept += 1
                j += 1
            cursor = tl.min(tl.where(best != KEY_NONE, best, KEY_MAX), axis=0)
            more = n_valid == CHUNK
        tl.store(count_ptr + b, kept.to(tl.int64))


# ----------------------------------------------------------------------------------------------
# launch configuration (plain functions, shared by the plugins and the tests)

ROI_ALIGN_BLOCK_C = 128
ROI_ALIGN_NUM_WARPS = 4
NMS_CHUNK = 1024
NMS_NUM_WARPS = 8
NMS_MAX_OUTPUT_BOXES = 4096  # kept boxes live in registers: BLOCK_K = next power of two >= K


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def roi_align_constexprs(output_height: int, output_width: int, sampling_ratio: int, base_stride: int,
                         finest_scale: float, block_c: int = ROI_ALIGN_BLOCK_C) -> dict[str, Any]:
    if output_height <= 0 or output_width <= 0:
        raise ValueError(f"MultiLevelRoIAlign: output size must be positive, got {output_height}x{output_width}")
    if sampling_ratio < 0:
        raise ValueError(f"MultiLevelRoIAlign: sampling_ratio must be >= 0, got {sampling_ratio}")
    if base_stride <= 0:
        raise ValueError(f"MultiLevelRoIAlign: base_stride must be positive, got {base_stride}")
    if not finest_scale > 0:
        raise ValueError(f"MultiLevelRoIAlign: finest_scale must be positive, got {finest_scale}")
    return {"OH": int(output_height), "OW": int(output_width), "SAMPLING": int(sampling_ratio),
            "BASE_STRIDE": int(base_stride), "FINEST": float(finest_scale), "BLOCK_C": int(block_c)}


def roi_align_grid(num_rois: int, output_height: int, output_width: int) -> int:
    """Programs launched: one per (roi, bin) plus one that does nothing (never an empty grid)."""
    return num_rois * output_height * output_width + 1


def nms_constexprs(iou_threshold: float, score_threshold: float, max_output_boxes: int,
                   chunk: int = NMS_CHUNK) -> dict[str, Any]:
    if max_output_boxes <= 0:
        raise ValueError(f"BatchedNMS: max_output_boxes must be positive, got {max_output_boxes}")
    if max_output_boxes > NMS_MAX_OUTPUT_BOXES:
        raise ValueError(f"BatchedNMS: max_output_boxes {max_output_boxes} exceeds {NMS_MAX_OUTPUT_BOXES}, the "
                         f"most this single-program kernel keeps in registers")
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f"BatchedNMS: chunk must be a power of two >= 2, got {chunk}")
    if math.isnan(iou_threshold) or math.isnan(score_threshold):
        raise ValueError("BatchedNMS: thresholds must not be NaN")
    return {"K": int(max_output_boxes), "BLOCK_K": max(next_pow2(max_output_boxes), 16), "CHUNK": int(chunk),
            "IOU": float(iou_threshold), "SCORE_THR": float(score_threshold)}


# signatures in TensorRT's argument order: inputs, int32 scalars, outputs (then constexprs)
ROI_ALIGN_SIGNATURE = {"rois_ptr": "*fp32", "p2_ptr": "*fp32", "p3_ptr": "*fp32", "p4_ptr": "*fp32",
                       "p5_ptr": "*fp32", "K": "i32", "C": "i32", "H2": "i32", "W2": "i32", "H3": "i32",
                       "W3": "i32", "H4": "i32", "W4": "i32", "H5": "i32", "W5": "i32", "out_ptr": "*fp32"}
NMS_SIGNATURE = {"boxes_ptr": "*fp32", "scores_ptr": "*fp32", "groups_ptr": "*i64", "B": "i32", "N": "i32",
                 "selected_ptr": "*i64", "count_ptr": "*i64"}
SIGNATURES = {"roi_align_kernel": ROI_ALIGN_SIGNATURE, "nms_kernel": NMS_SIGNATURE}
NUM_WARPS = {"roi_align_kernel": ROI_ALIGN_NUM_WARPS, "nms_kernel": NMS_NUM_WARPS}


# ----------------------------------------------------------------------------------------------
# wrappers

_interpreted: dict[str, Any] = {}


def interpreted(name: str) -> Any:
    """The Triton-interpreter version of a kernel (runs on the CPU; ``kernel[grid](...)`` with torch
    CPU tensors). Triton's own library functions are interpreted only when TRITON_INTERPRET=1 was
    set before triton was imported, so the interpreter and compilation need separate processes."""
    if not triton.knobs.runtime.interpret:
        raise RuntimeError("the Triton interpreter needs TRITON_INTERPRET=1 in the environment before triton is "
                           "imported (run it in a separate process from compile_kernel)")
    if name not in _interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted[name] = InterpretedFunction(_KERNELS[name])
    return _interpreted[name]


def compile_kernel(name: str, arch: int, constexprs: dict[str, Any], *, num_warps: int | None = None,
                   ptx_isa: int | None = None) -> PtxKernel:
    """PTX for a TensorRT AOT plugin, for SM ``arch`` (e.g. 87, 90), without a GPU: the project's
    one Triton-to-PTX compiler (``runtime/gpu/triton_aot.py``: ISA raised to what the target needs,
    plain ``sm_XX`` target, no fp contraction, IEEE subnormals, no line info) with Triton's hidden
    scratch parameters removed, so that the parameters are exactly the arguments TensorRT passes.
    The driver JIT-compiles the PTX when the engine is built and loaded."""
    return compile_ptx(_KERNELS[name], signature=SIGNATURES[name], constexprs=constexprs, arch=arch,
                       num_warps=NUM_WARPS[name] if num_warps is None else num_warps, ptx_isa=ptx_isa,
                       hidden_params="strip")
