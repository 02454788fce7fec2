"""The GPU check ``plugin_kernels`` (benchmarks/gpu_check.py): the TensorRT plugins' Triton kernels
as an engine runs them (the AOT PTX for this GPU, loaded by the driver, launched with exactly the
plugin's arguments) on the RoIAlign / NMS cases here, against plugins/reference.py. The cases and
launch helpers also run the interpreted kernels on the CPU (tests)."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import numpy as np

from pfpn.benchmarks.gpu_check_common import (CheckContext, SkipCheck, check_result, one_line, require_gpu_driver,
                                              require_torch_cuda)

# RoIAlign tolerance (float32 accumulation order vs the float64 reference)
ROI_ATOL = 2e-6
ROI_RTOL = 1e-5


# ----------------------------------------------------------------------------------------------
# 3. Triton plugin kernels vs the numpy reference

# P2..P5 of a 128 x 160 input, and of the published 800 x 1344 input
SMALL_LEVELS = [(32, 40), (16, 20), (8, 10), (4, 5)]
R50_LEVELS = [(200, 336), (100, 168), (50, 84), (25, 42)]


def _rois(rng: np.random.Generator, batch: int, count: int, extent: tuple[float, float], max_side: float) -> np.ndarray:
    h, w = extent
    xy = rng.uniform([-8, -8], [w, h], (count, 2))
    wh = rng.uniform(1, max_side, (count, 2))
    ids = rng.integers(0, batch, (count, 1)).astype(np.float32)
    return np.concatenate([ids, xy, xy + wh], 1).astype(np.float32)


def roi_align_cases(quick: bool = False) -> dict[str, dict]:
    """Inputs of the RoIAlign kernel checks: rois (K, 5), feats 4 x (B, C, H_l, W_l), oh, ow, sampling."""
    rng = np.random.default_rng(11)
    feats = lambda b, c, levels: [rng.standard_normal((b, c, h, w)).astype(np.float32) for h, w in levels]
    cases = {}
    cases["random_7x7"] = dict(rois=_rois(rng, 2, 24, (128, 160), 120), feats=feats(2, 3, SMALL_LEVELS), oh=7, ow=7,
                               sampling=0)
    sides = [40.0, 111.9, 112.0, 224.0, 300.0, 448.0, 600.0]  # every level and the level boundaries
    rois = np.array([[0, 2, 3, 2 + s, 3 + s] for s in sides], np.float32)
    cases["all_levels"] = dict(rois=rois, feats=feats(1, 2, SMALL_LEVELS), oh=2, ow=3, sampling=0)
    rois = np.array([[0, -60, -60, -20, -20], [0, 200, 200, 260, 260], [0, 10, 10, 10, 40], [0, 40, 40, 20, 20],
                     [0, 5, 5, 5.5, 5.25], [0, 0, 0, 160, 128]], np.float32)  # outside -> zero rows, degenerate
    cases["zero_rows_degenerate"] = dict(rois=rois, feats=feats(1, 2, SMALL_LEVELS), oh=3, ow=3, sampling=0)
    cases["sampling_2"] = dict(rois=_rois(rng, 1, 5, (128, 160), 40), feats=feats(1, 5, SMALL_LEVELS), oh=2, ow=2,
                               sampling=2)
    cases["empty"] = dict(rois=np.zeros((0, 5), np.float32), feats=feats(1, 2, SMALL_LEVELS), oh=7, ow=7, sampling=0)
    if not quick:
        big = feats(1, 256, R50_LEVELS)
        cases["r50_box_7x7"] = dict(rois=_rois(rng, 1, 64, (800, 1344), 500), feats=big, oh=7, ow=7, sampling=0)
        cases["r50_mask_14x14"] = dict(rois=_rois(rng, 1, 16, (800, 1344), 400), feats=big, oh=14, ow=14, sampling=0)
    return cases


def nms_cases(quick: bool = False) -> dict[str, dict]:
    """Inputs of the NMS kernel checks: boxes (B, N, 4), scores (B, N), groups (B, N), iou, thr, k, chunk."""
    rng = np.random.default_rng(12)

    def boxes(b, n, scale=60.0, size=25.0):
        xy = rng.uniform(0, scale, (b, n, 2))
        wh = rng.uniform(0, size, (b, n, 2))
        return np.concatenate([xy, xy + wh], -1).astype(np.float32)

    z = lambda b, n: np.zeros((b, n), np.int64)
    cases = {
        "grouped_multichunk": dict(boxes=boxes(2, 70), scores=rng.uniform(0, 1, (2, 70)).astype(np.float32),
                                   groups=rng.integers(0, 3, (2, 70)), iou=0.5, thr=0.05, k=25, chunk=16),
        "ties": dict(boxes=boxes(2, 40, 30.0), scores=rng.choice([0.2, 0.5, 0.9], (2, 40)).astype(np.float32),
                     groups=z(2, 40), iou=0.3, thr=0.1, k=40, chunk=8),
        "k_reached": dict(boxes=boxes(1, 30, 200.0, 10.0), scores=rng.uniform(0, 1, (1, 30)).astype(np.float32),
                          groups=z(1, 30), iou=0.5, thr=0.0, k=3, chunk=8),
        # image 0 has candidates, image 1 none: a zero row of the output
        "zero_row": dict(boxes=boxes(2, 10), scores=np.stack([rng.uniform(0.7, 1, 10), np.full(10, 0.3)]).astype(
            np.float32), groups=z(2, 10), iou=0.5, thr=0.6, k=5, chunk=8),
        "empty_n": dict(boxes=np.zeros((2, 0, 4), np.float32), scores=np.zeros((2, 0), np.float32), groups=z(2, 0),
                        iou=0.5, thr=0.0, k=4, chunk=8),
    }
    s = rng.uniform(0, 1, (1, 48)).astype(np.float32)
    s[0, ::5] = -1.0
    cases["rpn_like"] = dict(boxes=boxes(1, 48), scores=s, groups=np.repeat(np.arange(4), 12)[None], iou=0.7,
                             thr=-0.5, k=30, chunk=16)
    if not quick:  # the production launch configuration (CHUNK 1024), the published sizes
        s = rng.uniform(0, 1, (1, 4000)).astype(np.float32)
        s[0, ::7] = -1.0
        cases["r50_rpn"] = dict(boxes=boxes(1, 4000, 1300.0, 200.0), scores=s,
                                groups=np.repeat(np.arange(4), 1000)[None], iou=0.7, thr=-0.5, k=1000, chunk=None)
        s = np.round(rng.uniform(0, 1, (1, 8000)), 2).astype(np.float32)  # many ties
        cases["r50_box"] = dict(boxes=boxes(1, 8000, 1300.0, 300.0), scores=s, groups=z(1, 8000), iou=0.5, thr=0.6,
                                k=100, chunk=None)
    return cases


class AotPluginKernel:
    """A TensorRT plugin kernel exactly as an engine runs it: the PTX that
    ``plugins.triton_kernels.compile_kernel`` gives TensorRT's AOT plugin for this GPU (the one
    Triton-to-PTX compiler: hidden parameters stripped, plain target, the target's PTX ISA), JIT-
    compiled by the driver (cuModuleLoadData) and launched with exactly the plugin's arguments
    (device pointers, int32 scalars). ``kernel[grid](*args, **constexprs)`` like a Triton kernel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loaded: dict[tuple, tuple[Any, Any, Any]] = {}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def launch(*args: Any, **constexprs: Any) -> None:
            self._launch(int(grid[0]), args, constexprs)
        return launch

    def _function(self, constexprs: dict) -> tuple[Any, Any, Any]:
        from pfpn.plugins import triton_kernels as tk
        from pfpn.plugins.trt_plugins import plugin_target_sm
        from pfpn.runtime import cuda_driver

        key = tuple(sorted(constexprs.items()))
        if key not in self._loaded:
            ctx = cuda_driver.CudaContext(0)  # the primary context, the one PyTorch uses
            sm = plugin_target_sm({}, gpu_sm=ctx.capability[0] * 10 + ctx.capability[1])
            kernel = tk.compile_kernel(self.name, sm, dict(constexprs))
            drv = cuda_driver.driver()
            module = cuda_driver.check(drv.cuModuleLoadData(kernel.ptx.encode() + b"\0"), "cuModuleLoadData")
            function = cuda_driver.check(drv.cuModuleGetFunction(module, kernel.entry.encode()), "cuModuleGetFunction")
            self._loaded[key] = (kernel, module, function)
        return self._loaded[key]

    def _launch(self, grid_x: int, args: Sequence[Any], constexprs: dict) -> None:
        import ctypes

        from pfpn.runtime import cuda_driver

        kernel, _, function = self._function(constexprs)
        if len(args) != len(kernel.param_types):
            raise ValueError(f"{self.name}: {len(args)} arguments for {len(kernel.param_types)} PTX parameters")
        values: list[Any] = []
        for arg, ptx_type in zip(args, kernel.param_types):
            if hasattr(arg, "data_ptr"):
                values.append(ctypes.c_uint64(arg.data_ptr()))
            elif ptx_type in (".u32", ".s32"):
                values.append(ctypes.c_int32(int(arg)))  # TensorRT passes int32 scalars
            else:
                raise ValueError(f"{self.name}: cannot pass {type(arg).__name__} as {ptx_type}")
        array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        cuda_driver.check(cuda_driver.driver().cuLaunchKernel(function, grid_x, 1, 1, 32 * kernel.num_warps, 1, 1, kernel.shared,
                                                0, ctypes.addressof(array), 0), f"cuLaunchKernel({self.name})")


@functools.cache
def aot_plugin_kernel(name: str) -> AotPluginKernel:
    return AotPluginKernel(name)


def _device_tensor(torch: Any, array: np.ndarray, device: str) -> Any:
    """A copy of ``array`` on ``device``; empty arrays get a 1-element buffer so the pointer is valid."""
    array = np.ascontiguousarray(array)
    if array.size == 0:
        array = np.zeros(1, array.dtype)
    return torch.from_numpy(array.copy()).to(device)


def launch_roi_align(torch: Any, case: dict, *, kernel: Any = None, device: str = "cuda") -> np.ndarray:
    """The RoIAlign kernel on ``case`` with the plugin's constexprs and grid -> (K, C, oh, ow).
    kernel: default the AOT PTX as TensorRT runs it (CUDA); tests pass the interpreted one with device "cpu"."""
    from pfpn.plugins import triton_kernels as tk

    rois, feats = case["rois"], case["feats"]
    k, c = rois.shape[0], feats[0].shape[1]
    size = k * c * case["oh"] * case["ow"]
    out = torch.zeros(max(size, 1), dtype=torch.float32, device=device)
    cx = tk.roi_align_constexprs(case["oh"], case["ow"], case["sampling"], 4, 56.0)
    args = [_device_tensor(torch, rois, device)] + [_device_tensor(torch, f, device) for f in feats] + [k, c]
    args += [int(v) for f in feats for v in f.shape[2:]] + [out]
    kernel = kernel or aot_plugin_kernel("roi_align_kernel")
    kernel[(tk.roi_align_grid(k, case["oh"], case["ow"]),)](*args, **cx)
    if device == "cuda":
        torch.cuda.synchronize()
    return out[:size].cpu().numpy().reshape(k, c, case["oh"], case["ow"])


def launch_nms(torch: Any, case: dict, *, kernel: Any = None, device: str = "cuda") -> tuple[np.ndarray, np.ndarray]:
    """The NMS kernel on ``case`` (one program per image) -> (selected (B, K), counts (B,))."""
    from pfpn.plugins import triton_kernels as tk

    b, n = case["scores"].shape
    sel = torch.full((b, case["k"]), 7, dtype=torch.int64, device=device)  # garbage: every entry must be written
    cnt = torch.full((b,), 7, dtype=torch.int64, device=device)
    kwargs = {} if case["chunk"] is None else {"chunk": case["chunk"]}
    cx = tk.nms_constexprs(case["iou"], case["thr"], case["k"], **kwargs)
    kernel = kernel or aot_plugin_kernel("nms_kernel")
    kernel[(b,)](_device_tensor(torch, case["boxes"], device), _device_tensor(torch, case["scores"], device),
                 _device_tensor(torch, np.asarray(case["groups"], np.int64), device), b, n, sel, cnt, **cx)
    if device == "cuda":
        torch.cuda.synchronize()
    return sel.cpu().numpy(), cnt.cpu().numpy()


def compare_roi_align(got: np.ndarray, expected: np.ndarray) -> dict:
    if got.shape != expected.shape:
        return {"ok": False, "error": f"shape {got.shape} vs {expected.shape}"}
    diff = float(np.abs(got.astype(np.float64) - expected).max()) if got.size else 0.0
    ok = bool(np.allclose(got, expected, rtol=ROI_RTOL, atol=ROI_ATOL))
    return {"ok": ok, "max_abs_diff": diff, "exact": bool(np.array_equal(got, expected))}


def compare_nms(got: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> dict:
    sel, cnt = got
    ref_sel, ref_cnt = expected
    same = sel.shape == ref_sel.shape and bool(np.array_equal(sel, ref_sel)) and bool(np.array_equal(cnt, ref_cnt))
    return {"ok": same, "kept": [int(v) for v in ref_cnt], "kept_kernel": [int(v) for v in cnt],
            "differing_entries": int(np.count_nonzero(sel != ref_sel)) if sel.shape == ref_sel.shape else -1}


def check_plugin_kernels(ctx: CheckContext) -> dict:
    require_gpu_driver()
    torch = require_torch_cuda()
    if os.environ.get("TRITON_INTERPRET"):
        raise SkipCheck("TRITON_INTERPRET is set: Triton would interpret the kernels instead of compiling them for "
                        "the CUDA GPU")
    try:
        import triton  # noqa: F401
    except Exception as e:
        raise SkipCheck(f"needs Triton to compile the plugin kernels for the CUDA GPU ({one_line(e)})") from None
    from pfpn.plugins import reference

    roi_rows, nms_rows = {}, {}
    for name, case in roi_align_cases(ctx.quick).items():
        got = launch_roi_align(torch, case)
        expected = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                                  sampling_ratio=case["sampling"])
        roi_rows[name] = compare_roi_align(got, expected)
    for name, case in nms_cases(ctx.quick).items():
        selection = launch_nms(torch, case)
        ref_selection = reference.batched_nms(case["boxes"], case["scores"], case["groups"], iou_threshold=case["iou"],
                                              score_threshold=case["thr"], max_output_boxes=case["k"])
        nms_rows[name] = compare_nms(selection, ref_selection)
    roi_ok = sum(r["ok"] for r in roi_rows.values())
    nms_ok = sum(r["ok"] for r in nms_rows.values())
    max_diff = max((r.get("max_abs_diff", float("inf")) for r in roi_rows.values()), default=0.0)
    ok = roi_ok == len(roi_rows) and nms_ok == len(nms_rows)
    summary = (f"RoIAlign {roi_ok}/{len(roi_rows)} cases ok, max abs diff {max_diff:.2e}; NMS {nms_ok}/{len(nms_rows)} "
               f"cases identical")
    return check_result("pass" if ok else "fail", summary, roi_align=roi_rows, nms=nms_rows,
                        roi_align_max_abs_diff=max_diff, tolerance={"atol": ROI_ATOL, "rtol": ROI_RTOL},
                        reason="" if ok else "a plugin kernel disagrees with plugins/reference.py")
