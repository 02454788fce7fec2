"""One prepared command that checks the GPU half of the project on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out gpu_report.json            # all checks, < 5 minutes
    python benchmarks/gpu_check.py --out gpu_report.json --quick    # 2 images per image check
    python benchmarks/gpu_check.py --out r.json --only plugin_kernels,amp_training_step

Needs no internet. Writes OUT (JSON: every check with its status, seconds and details) and prints
one line per check (name, pass / fail / skip, key numbers, the reason of a skip). A check whose
requirement is missing (no GPU, no CUDA driver, no TensorRT, no PyTorch) is a "skip" with a
one-line reason, never a pretended pass; a check that raises is a "fail" with the one-line error,
and the others still run. Exit code 1 when any check failed, else 0.

Checks, in order:

1. ``environment``: Python, platform, NVIDIA driver and the CUDA version it supports
   (``cuDriverGetVersion``), GPUs (name, compute capability), cuda-bindings, Triton, PyTorch
   (+ ``torch.cuda.is_available()``), TensorRT if importable. Never fails; lists what is missing.
2. ``postprocess_kernels_small`` / ``postprocess_kernels_r50``: the AOT post-processing kernels
   (``runtime.gpu.postprocess.GpuPostprocessor``) against the numpy post-processing
   (``runtime.postprocess.postprocess_single_image``) on the export graph's outputs computed by
   PyTorch on CUDA (small demo model; random "firing" R-50 at 800x1333, ~100 detections):
   identical label maps required; time per image of both.
3. ``plugin_kernels``: the TensorRT plugins' kernels as an engine runs them (the AOT PTX of
   ``plugins/triton_kernels.compile_kernel`` for this GPU, loaded by the driver, launched with
   exactly the plugin's arguments) on CUDA tensors, against ``plugins/reference.py``.
4. ``torch_cuda_vs_cpu``: the export graph on CUDA vs on the CPU (detections matched by IoU,
   relative error of the semantic logits; TF32 off); fails only on a gross mismatch.
5. ``amp_training_step``: mixed-precision (fp16 autocast + GradScaler) training steps of the
   small model on CUDA: finite loss, weights changed.
6. TensorRT only (else skipped with the import error): ``trt_uint8_input``, ``trt_plugins_alone``,
   ``trt_engine_reload`` (build with ``runtime/build_engine.py`` in a subprocess, run in a fresh
   subprocess that never imports ``plugins``), ``trt_end_to_end`` (``runtime.Predictor`` on the
   engine vs ONNX Runtime: identical panoptic ids on >= 99.9% of the pixels).

The whole run keeps to a time budget (``--budget``, default 270 s): image loops stop early and
later checks are skipped when it is spent, and the report says so.

Other code calls :func:`run_gpu_check`; each check is a plain function ``check_<name>(ctx)``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


import numpy as np  # noqa: E402

from pfpn.runtime.build_engine import one_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 270.0
IMAGES_FULL = 20
IMAGES_QUICK = 2
# torch_cuda_vs_cpu: what counts as a gross mismatch
MAX_SEMANTIC_REL_ERR = 1e-3
MIN_MATCHED_FRACTION = 0.9
MATCH_IOU = 0.9
# plugin_kernels: RoIAlign tolerance (float32 accumulation order vs the float64 reference)
ROI_ATOL = 2e-6
ROI_RTOL = 1e-5
# trt_end_to_end
MIN_PIXEL_AGREEMENT = 0.999

CHECK_NAMES = ("environment", "postprocess_kernels_small", "postprocess_kernels_r50", "plugin_kernels",
               "torch_cuda_vs_cpu", "amp_training_step", "trt_uint8_input", "trt_plugins_alone",
               "trt_engine_reload", "trt_end_to_end")
STATUSES = ("pass", "fail", "skip")


class SkipCheck(Exception):
    """Raised by a check whose requirement is missing; the message is the one-line reason."""


# ----------------------------------------------------------------------------------------------
# run context: budget, work folder, things several checks share


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def low(self, margin: float = 10.0) -> bool:
        return self.remaining() < margin


@dataclass
class CheckContext:
    work_dir: Path
    quick: bool
    budget: Budget
    shared: dict = field(default_factory=dict)  # small model, exports, engine: built once, reused

    @property
    def num_images(self) -> int:
        return IMAGES_QUICK if self.quick else IMAGES_FULL


def check_result(status: str, summary: str = "", *, reason: str = "", **details: Any) -> dict:
    """What a check function returns: status, a one-line summary of key numbers, details."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    out: dict[str, Any] = {"status": status, "summary": summary, "details": details}
    if reason:
        out["reason"] = one_line(reason)
    return out


# ----------------------------------------------------------------------------------------------
# requirements (each raises SkipCheck with a one-line reason naming what is missing)


def require_torch() -> Any:
    try:
        import torch
    except Exception as e:
        raise SkipCheck(f"needs PyTorch with CUDA (import torch failed: {one_line(e)})") from None
    return torch


def require_torch_cuda() -> Any:
    torch = require_torch()
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SkipCheck(f"needs a CUDA GPU: torch {torch.__version__} ({build}) reports torch.cuda.is_available() "
                        f"False")
    return torch


def require_gpu_driver() -> list:
    """The GPUs the CUDA driver API sees (runtime.cuda_driver), or SkipCheck."""
    try:
        from pfpn.runtime.cuda_driver import CudaError, GpuUnavailableError, gpus
    except Exception as e:  # pragma: no cover - the repository is broken
        raise SkipCheck(f"needs a CUDA GPU: runtime.cuda_driver failed to import ({one_line(e)})") from None
    try:
        return gpus()
    except (GpuUnavailableError, CudaError) as e:
        raise SkipCheck(f"needs a CUDA GPU: {one_line(e)}") from None


def require_tensorrt() -> Any:
    from pfpn.runtime.trt.runner import import_tensorrt

    try:
        trt = import_tensorrt()
    except ImportError as e:
        raise SkipCheck(one_line(e)) from None
    require_gpu_driver()
    return trt


# ----------------------------------------------------------------------------------------------
# GPU-free helpers (tested without a GPU)


def compare_label_maps(a: np.ndarray, b: np.ndarray) -> dict:
    """Two (H, W) label maps -> {"pixels", "differing", "identical"} (shapes must agree)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    differing = int(np.count_nonzero(a.astype(np.int64) != b.astype(np.int64)))
    return {"pixels": int(a.size), "differing": differing, "identical": differing == 0}


def summarize_map_comparisons(rows: Sequence[dict]) -> dict:
    """Per-image rows of :func:`compare_label_maps` (+ optional "kept_equal") -> totals."""
    return {"images": len(rows),
            "images_identical": sum(1 for r in rows if r["identical"] and r.get("kept_equal", True)),
            "pixels": sum(r["pixels"] for r in rows),
            "pixels_differing": sum(r["differing"] for r in rows)}


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal pixels of two maps of the same shape."""
    c = compare_label_maps(a, b)
    return 1.0 - c["differing"] / c["pixels"] if c["pixels"] else 1.0


def relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    """max |ref - got| / max |ref| (denominator at least 1e-6)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    return float(np.abs(ref - got).max() / max(float(np.abs(ref).max()), 1e-6))


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) x1 y1 x2 y2 -> (N, M) IoU in float64 (0 where the union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray, labels_b: np.ndarray,
                     iou_threshold: float = MATCH_IOU) -> dict:
    """Greedy one-to-one matching of same-label detections, best IoU first ->
    {"num_a", "num_b", "matched" (pairs with IoU > iou_threshold), "fraction" (matched / max(num_a,
    num_b), 1.0 when both are empty), "min_iou" of the matched pairs}."""
    na, nb = len(boxes_a), len(boxes_b)
    iou = box_iou_matrix(boxes_a, boxes_b)
    if na and nb:
        iou[np.asarray(labels_a)[:, None] != np.asarray(labels_b)[None, :]] = 0.0
    used_a, used_b, ious = set(), set(), []
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), nb)
        if iou[i, j] <= iou_threshold:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        ious.append(float(iou[i, j]))
    most = max(na, nb)
    return {"num_a": na, "num_b": nb, "matched": len(ious), "fraction": len(ious) / most if most else 1.0,
            "min_iou": min(ious, default=1.0)}


def median_ms(seconds: Sequence[float]) -> float | None:
    return round(1000.0 * statistics.median(seconds), 3) if seconds else None


def format_check_line(result: dict) -> str:
    """One console line: name, status, seconds, key numbers; the reason of a skip, the error of a fail."""
    status = result["status"]
    text = f"{result['name']:26s} {status.upper():4s} {result.get('seconds', 0.0):7.1f} s"
    if result.get("summary"):
        text += f"  {result['summary']}"
    if status == "skip" and result.get("reason"):
        text += f"  -- skipped: {result['reason']}"
    if status == "fail" and (result.get("error") or result.get("reason")):
        text += f"  -- {result.get('error') or result['reason']}"
    return text


def format_summary(report: dict) -> str:
    """The readable summary of a report: one line per check, then the totals."""
    lines = [format_check_line(r) for r in report["checks"]]
    counts = report["counts"]
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in "
                 f"{report['total_seconds']:.1f} s (budget {report['budget_seconds']:.0f} s); exit code "
                 f"{report['exit_code']}")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """numpy scalars / arrays, Paths, tuples -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------
# models, images, network outputs (torch, imported lazily)


def small_categories() -> Any:
    from pfpn.runtime.categories import CategoryTable
    from pfpn.training.data.synthetic import SYNTHETIC_CATEGORIES

    return CategoryTable(SYNTHETIC_CATEGORIES)


def build_small_model(seed: int = 0) -> tuple[Any, Any]:
    """The small demo config with random weights biased to detect -> (model on the CPU, TrainConfig)."""
    torch = require_torch()
    from pfpn.training.config import tiny_synthetic
    from pfpn.training.model.panoptic_fpn import build_model
    from pfpn.training.random_checkpoint import make_firing

    cats = small_categories()
    config = tiny_synthetic(cats.num_things, cats.num_stuff)
    torch.manual_seed(seed)
    return make_firing(build_model(config.model)).eval(), config


def build_r50_model(seed: int = 0) -> tuple[Any, Any]:
    torch = require_torch()
    from pfpn.training.config import PRESETS
    from pfpn.training.model.panoptic_fpn import build_model
    from pfpn.training.random_checkpoint import make_firing

    config = PRESETS["r50_fpn_1x"]()
    torch.manual_seed(seed)
    return make_firing(build_model(config.model)).eval(), config


def small_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic scenes (BGR uint8) of several sizes, landscape and portrait, not multiples of 32."""
    from pfpn.training.data.synthetic import make_synthetic_sample

    sizes = [(192, 256), (150, 200), (256, 192), (97, 130), (180, 300), (240, 160)]
    return [make_synthetic_sample(np.random.default_rng([seed, i]), *sizes[i % len(sizes)])[0] for i in range(count)]


def photo_images(count: int, height: int = 800, width: int = 1333, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``count`` BGR images of height x width: scikit-image's bundled photographs (resized) where
    importable, else random smooth images -> (images, what they are)."""
    import cv2

    photos: list[np.ndarray] = []
    source = "random smooth images (scikit-image not importable)"
    try:
        from skimage import data as skdata

        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "motorcycle_left"):
            try:
                img = np.asarray(getattr(skdata, name)())
            except Exception:  # not bundled in this version (needs a download): skip it
                continue
            if img.ndim == 2:
                img = np.stack([img] * 3, -1)
            photos.append(np.ascontiguousarray(img[..., :3][..., ::-1]).astype(np.uint8))
        if photos:
            source = f"{len(photos)} scikit-image photographs, resized (flipped / shifted variants)"
    except Exception:
        pass
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if photos:
            img = photos[i % len(photos)]
            if (i // len(photos)) % 2:
                img = img[:, ::-1]
            img = cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_LINEAR)
            if i >= 2 * len(photos):
                img = np.roll(img, shift=(37 * i) % width, axis=1)
        else:
            low = rng.uniform(0, 255, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
            img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(img, dtype=np.uint8))
    return out, source


@dataclass
class NetworkRun:
    """One image through the export graph: host copies of the contract outputs (batch of 1)."""

    outputs: dict[str, np.ndarray]
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    scale_factor: tuple[float, float]
    seconds: float


def export_graph(model: Any, config: Any, device: str) -> Any:
    """``export.graph.ExportablePanopticFPN`` of ``model`` on ``device`` (eval)."""
    from pfpn.export.graph import ExportablePanopticFPN

    return ExportablePanopticFPN(model, config.model).to(device).eval()


def run_network(graph: Any, image_bgr: np.ndarray, metadata: Any, device: str) -> NetworkRun:
    """SPEC pre-processing (runtime.preprocess.prepare_batch) and the export graph on ``device``."""
    torch = require_torch()
    from pfpn.runtime.contract import OUTPUT_NAMES
    from pfpn.runtime.preprocess import prepare_batch

    batch, sizes, factors = prepare_batch([image_bgr], metadata.max_long_side, metadata.max_short_side,
                                          metadata.size_divisor)
    t0 = time.perf_counter()
    with torch.no_grad():
        outs = graph(torch.from_numpy(batch).to(device), torch.from_numpy(sizes).to(device))
    host = {name: t.detach().cpu().numpy() for name, t in zip(OUTPUT_NAMES, outs)}
    seconds = time.perf_counter() - t0
    return NetworkRun(host, (int(image_bgr.shape[0]), int(image_bgr.shape[1])), (int(sizes[0][0]), int(sizes[0][1])),
                      (int(batch.shape[1]), int(batch.shape[2])), (float(factors[0][0]), float(factors[0][1])), seconds)


def numpy_postprocess(run: NetworkRun, metadata: Any) -> Any:
    """The numpy post-processing exactly as runtime.predictor.Predictor._predict_chunk calls it."""
    from pfpn.runtime.postprocess import postprocess_single_image

    o = run.outputs
    n = int(o["num_detections"][0])
    return postprocess_single_image(
        o["boxes"][0, :n], o["scores"][0, :n], o["labels"][0, :n], o["mask_probs"][0, :n], o["semantic_logits"][0],
        resized_size=run.resized_size, original_size=run.original_size, scale_factor=run.scale_factor,
        num_thing_classes=metadata.num_thing_classes, mask_threshold=metadata.mask_threshold,
        mask_overlap_threshold=metadata.mask_overlap_threshold, stuff_area_limit=metadata.stuff_area_limit,
        instance_offset=metadata.instance_offset)


def gpu_postprocess(post: Any, run: NetworkRun, stream: Any) -> tuple[Any, float]:
    """One image's contract outputs copied into device buffers, then the kernels (timed: the
    kernels, the label map copy back and the synchronisation) -> (GpuLabelMap, seconds)."""
    from pfpn.runtime import cuda_driver

    names = ("boxes", "scores", "labels", "mask_probs", "num_detections", "semantic_logits")
    bufs = {}
    try:
        for name in names:
            host = np.ascontiguousarray(run.outputs[name][0] if name != "num_detections" else run.outputs[name][:1])
            bufs[name] = cuda_driver.DeviceBuffer(host.nbytes)
            cuda_driver.copy_to_device(bufs[name].ptr, host, stream)
        stream.synchronize()
        logits_size = tuple(int(v) for v in run.outputs["semantic_logits"].shape[2:])
        t0 = time.perf_counter()
        out = post.run(**{k: b.ptr for k, b in bufs.items()}, original_size=run.original_size,
                       resized_size=run.resized_size, padded_size=run.padded_size, scale_factor=run.scale_factor,
                       logits_size=logits_size)
        return out, time.perf_counter() - t0
    finally:
        for b in bufs.values():
            b.close()


# ----------------------------------------------------------------------------------------------
# 1. environment


def _driver_facts() -> tuple[dict, list[str]]:
    facts: dict[str, Any] = {}
    missing: list[str] = []
    version_file = Path("/proc/driver/nvidia/version")
    if version_file.is_file():
        text = version_file.read_text(errors="replace")
        words = text.split()
        facts["nvidia_driver_version"] = next((w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()),
                                              one_line(text.splitlines()[0]) if text else "")
    else:
        facts["nvidia_driver_version"] = None
        missing.append("NVIDIA kernel driver: /proc/driver/nvidia/version does not exist")
    try:
        from pfpn.runtime.cuda_driver import driver

        drv = driver()
        err, version = drv.cuDriverGetVersion()
        if err != drv.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"cuDriverGetVersion returned {getattr(err, 'name', err)}")
        facts["cuda_driver_api_version"] = f"{int(version) // 1000}.{int(version) % 1000 // 10}"
    except Exception as e:
        facts["cuda_driver_api_version"] = None
        missing.append(f"CUDA driver: {one_line(e)}")
    try:
        from pfpn.runtime.cuda_driver import CudaError, GpuUnavailableError, gpus

        facts["gpus"] = [{"index": g.index, "name": g.name, "compute_capability": g.compute_capability} for g in gpus()]
    except (GpuUnavailableError, CudaError) as e:
        facts["gpus"] = []
        missing.append(f"GPU: {one_line(e)}")
    return facts, missing


def _package_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_environment(ctx: CheckContext) -> dict:
    facts, missing = _driver_facts()
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                            "platform": platform.platform(), **facts}
    for pkg in ("cuda-bindings", "cuda-python", "triton", "cupy-cuda12x", "cupy", "onnx", "onnxruntime",
                "onnxruntime-gpu", "scikit-image"):
        info[f"{pkg}_version"] = _package_version(pkg)
    if info["cuda-bindings_version"] is None:
        missing.append("cuda-bindings (cuda-python 12.x) is not installed")
    if info["triton_version"] is None:
        missing.append("Triton is not installed")
    try:
        import torch

        info["torch_version"] = torch.__version__
        info["torch_cuda_build"] = torch.version.cuda
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
        if info["torch_cuda_available"]:
            info["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            missing.append(f"PyTorch CUDA: torch {torch.__version__} reports torch.cuda.is_available() False")
    except Exception as e:
        info["torch_version"] = None
        info["torch_cuda_available"] = False
        missing.append(f"PyTorch: import torch failed ({one_line(e)})")
    from pfpn.runtime.trt.runner import import_tensorrt

    try:
        info["tensorrt_version"] = import_tensorrt().__version__
    except ImportError as e:
        info["tensorrt_version"] = None
        missing.append(one_line(e))
    gpu_text = ", ".join(f"{g['name']} (sm {g['compute_capability']})" for g in info["gpus"]) or "no GPU"
    summary = (f"python {info['python']}, driver {info['nvidia_driver_version'] or '-'} / CUDA "
               f"{info['cuda_driver_api_version'] or '-'}, {gpu_text}, torch {info['torch_version'] or '-'} "
               f"(cuda {'yes' if info['torch_cuda_available'] else 'no'}), triton {info['triton_version'] or '-'}, "
               f"tensorrt {info['tensorrt_version'] or '-'}; {len(missing)} missing")
    return check_result("pass", summary, missing=missing, **info)


# ----------------------------------------------------------------------------------------------
# 2. post-processing kernels vs numpy


def _postprocess_kernels(ctx: CheckContext, which: str) -> dict:
    require_gpu_driver()
    torch = require_torch_cuda()
    from pfpn.export.metadata import build_metadata
    from pfpn.runtime.gpu.postprocess import GpuPostprocessor

    if which == "small":
        model, config = build_small_model()
        cats = small_categories()
        images, source = small_images(ctx.num_images), "synthetic scenes of 6 sizes"
    else:
        from pfpn.runtime.categories import coco_panoptic_categories
        from pfpn.runtime.categories import CategoryTable

        model, config = build_r50_model()
        cats = CategoryTable(coco_panoptic_categories())
        images, source = photo_images(ctx.num_images)
    meta = build_metadata(config.model, cats, flavor="ort", source=f"random {which} model (firing)")
    graph = export_graph(model, config, "cuda")
    post = GpuPostprocessor.from_metadata(meta)
    rows, gpu_s, cpu_s, net_s, detections = [], [], [], [], []
    stopped = ""
    try:
        for i, image in enumerate(images):
            if ctx.budget.low(20.0):
                stopped = f"time budget: stopped after {i} of {len(images)} images"
                break
            run = run_network(graph, image, meta, "cuda")
            net_s.append(run.seconds)
            t0 = time.perf_counter()
            ref = numpy_postprocess(run, meta)
            cpu_s.append(time.perf_counter() - t0)
            got, seconds = gpu_postprocess(post, run, post.stream)
            gpu_s.append(seconds)
            row = compare_label_maps(ref.label_map, got.label_map)
            row["kept_equal"] = [int(k) for k in got.kept] == [int(k) for k in ref.kept]
            row.update(image=i, size=list(run.original_size), detections=int(run.outputs["num_detections"][0]),
                       kept=len(ref.kept))
            detections.append(row["detections"])
            rows.append(row)
    finally:
        post.close()
        del graph
        torch.cuda.empty_cache()
    totals = summarize_map_comparisons(rows)
    ok = bool(rows) and totals["images_identical"] == totals["images"]
    gpu_ms, cpu_ms = median_ms(gpu_s[1:] or gpu_s), median_ms(cpu_s)
    summary = (f"{totals['images_identical']}/{totals['images']} images identical, {totals['pixels_differing']} px "
               f"differ; gpu {gpu_ms} ms/img, numpy {cpu_ms} ms/img; detections {min(detections, default=0)}.."
               f"{max(detections, default=0)}")
    if stopped:
        summary += f" ({stopped})"
    return check_result("pass" if ok else "fail", summary, **totals, gpu_ms_per_image_median=gpu_ms,
                        gpu_ms_first_image=round(1000 * gpu_s[0], 3) if gpu_s else None,
                        numpy_ms_per_image_median=cpu_ms, network_ms_per_image_median=median_ms(net_s[1:] or net_s),
                        images_source=source, stopped_early=stopped, per_image=rows,
                        reason="" if ok else "the GPU and numpy post-processing disagree (per_image lists where)")


def check_postprocess_kernels_small(ctx: CheckContext) -> dict:
    return _postprocess_kernels(ctx, "small")


def check_postprocess_kernels_r50(ctx: CheckContext) -> dict:
    return _postprocess_kernels(ctx, "r50")


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


# ----------------------------------------------------------------------------------------------
# 4. PyTorch on CUDA vs CPU


def compare_network_outputs(ref: NetworkRun, got: NetworkRun) -> dict:
    """Export-graph outputs of one image on two devices: detections matched by IoU, relative error
    of the semantic logits inside the image (not the padding)."""
    a, b = ref.outputs, got.outputs
    na, nb = int(a["num_detections"][0]), int(b["num_detections"][0])
    match = match_detections(a["boxes"][0, :na], a["labels"][0, :na], b["boxes"][0, :nb], b["labels"][0, :nb])
    h4, w4 = -(-ref.resized_size[0] // 4), -(-ref.resized_size[1] // 4)
    sa, sb = a["semantic_logits"][0][:, :h4, :w4], b["semantic_logits"][0][:, :h4, :w4]
    return {**match, "semantic_rel_err": relative_error(sa, sb),
            "semantic_max_abs_diff": float(np.abs(sa.astype(np.float64) - sb).max()) if sa.size else 0.0}


def check_torch_cuda_vs_cpu(ctx: CheckContext) -> dict:
    torch = require_torch_cuda()
    from pfpn.export.metadata import build_metadata

    model, config = build_small_model()
    meta = build_metadata(config.model, small_categories(), flavor="ort", source="random small model (firing)")
    images = small_images(2, seed=5)
    cpu_graph = export_graph(model, config, "cpu")
    cpu_runs = [run_network(cpu_graph, im, meta, "cpu") for im in images]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        import copy

        cuda_graph = export_graph(copy.deepcopy(model), config, "cuda")
        cuda_runs = [run_network(cuda_graph, im, meta, "cuda") for im in images]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rows = [compare_network_outputs(r, g) for r, g in zip(cpu_runs, cuda_runs)]
    matched = sum(r["matched"] for r in rows)
    most = sum(max(r["num_a"], r["num_b"]) for r in rows)
    fraction = matched / most if most else 1.0
    rel = max(r["semantic_rel_err"] for r in rows)
    gross = rel > MAX_SEMANTIC_REL_ERR or fraction < MIN_MATCHED_FRACTION
    reasons = []
    if gross:
        reasons.append(f"gross mismatch: semantic rel. err {rel:.2e} (limit {MAX_SEMANTIC_REL_ERR:g}), "
                       f"{fraction:.1%} of detections matched at IoU > {MATCH_IOU} (limit {MIN_MATCHED_FRACTION:.0%})")
    summary = (f"2 images, {matched}/{most} detections matched (IoU > {MATCH_IOU}), semantic rel. err {rel:.2e}, "
               f"max abs {max(r['semantic_max_abs_diff'] for r in rows):.2e} (TF32 off)")
    return check_result("fail" if reasons else "pass", summary, per_image=rows, matched_fraction=fraction,
                        semantic_rel_err=rel, reason="; ".join(reasons))


# ----------------------------------------------------------------------------------------------
# 5. mixed-precision training step


def training_batch(work_dir: Path, device: str, count: int = 2) -> tuple[Any, list, list, Any]:
    """A training batch of the small config from a synthetic dataset written under work_dir ->
    (images, sizes, targets on device, TrainConfig)."""
    from pfpn.training.config import tiny_synthetic
    from pfpn.training.data.coco_panoptic import CocoPanopticDataset
    from pfpn.training.data.collate import collate_train
    from pfpn.training.data.synthetic import generate_synthetic_panoptic
    from pfpn.training.data.transforms import TrainTransform

    root = work_dir / "synthetic_train"
    if not (root / "annotations" / "panoptic_train2017.json").is_file():
        generate_synthetic_panoptic(root, num_train=count, num_val=0, seed=7, progress=False)
    dataset = CocoPanopticDataset(root, "train")
    config = tiny_synthetic(dataset.categories.num_things, dataset.categories.num_stuff)
    transform = TrainTransform(max_long=config.model.input.max_long_side,
                               short_side_range=config.data.train_short_side_range, flip_prob=config.data.flip_prob)
    samples = [transform(dataset[i], np.random.default_rng([7, i])) for i in range(count)]
    images, sizes, targets = collate_train(samples, config.model.input)
    return images.to(device), sizes, [{k: v.to(device) for k, v in t.items()} for t in targets], config


def training_steps(work_dir: Path, device: str, *, amp: bool, max_steps: int = 4) -> dict:
    """Up to ``max_steps`` SGD steps of the small model on one batch (with fp16 autocast and a
    GradScaler when ``amp``), stopping after the first step the scaler did not skip ->
    {"losses", "loss_finite", "steps", "skipped_steps", "weights_changed", "max_weight_change", ...}."""
    torch = require_torch()
    from pfpn.training.model.panoptic_fpn import build_model

    images, sizes, targets, config = training_batch(work_dir, device)
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    model.generator = torch.Generator(device=device).manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=config.solver.base_lr, momentum=config.solver.momentum,
                                weight_decay=config.solver.weight_decay)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    losses_seen, skipped, parts = [], 0, {}
    finite = True
    steps = 0
    for _ in range(max_steps):
        steps += 1
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            losses = model(images, sizes, targets)
        loss = sum(losses.values())
        parts = {k: float(v.detach().float()) for k, v in losses.items()}
        losses_seen.append(float(loss.detach().float()))
        if not torch.isfinite(loss.detach()).item():
            finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.solver.clip_grad_norm)
        scale = scaler.get_scale() if amp else 1.0
        scaler.step(optimizer)
        scaler.update()
        if amp and scaler.get_scale() < scale:  # inf/nan gradients: the scaler skipped this step
            skipped += 1
            continue
        break
    change = max(float((p.detach() - b).abs().max()) for p, b in zip(params, before))
    return {"device": device, "amp": amp, "losses": losses_seen, "loss_parts": parts, "loss_finite": finite,
            "steps": steps, "skipped_steps": skipped, "weights_changed": change > 0, "max_weight_change": change,
            "grad_scale": float(scaler.get_scale()) if amp else None}


def check_amp_training_step(ctx: CheckContext) -> dict:
    require_torch_cuda()
    r = training_steps(ctx.work_dir, "cuda", amp=True)
    ok = r["loss_finite"] and r["weights_changed"]
    summary = (f"loss {r['losses'][-1]:.4f} ({'finite' if r['loss_finite'] else 'NOT finite'}), {r['steps']} step(s), "
               f"{r['skipped_steps']} skipped by the scaler, max weight change {r['max_weight_change']:.2e}")
    reason = "" if ok else ("the loss is not finite" if not r["loss_finite"] else "no weight changed (every step "
                                                                                  "skipped by the GradScaler?)")
    return check_result("pass" if ok else "fail", summary, reason=reason, **r)


# ----------------------------------------------------------------------------------------------
# 6. TensorRT


def uint8_cast_transpose_model(shape: tuple[int, int, int, int] = (2, 5, 7, 3)) -> Any:
    """uint8 [B, H, W, 3] -> Cast(float) -> Transpose to [B, 3, H, W]: the export graph's input pattern."""
    import onnx
    from onnx import TensorProto, helper

    b, h, w, c = shape
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2])],
        "uint8_cast_transpose", [helper.make_tensor_value_info("images", TensorProto.UINT8, [b, h, w, c])],
        [helper.make_tensor_value_info("nchw", TensorProto.FLOAT, [b, c, h, w])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def plugin_node_model(kind: str, case: dict) -> Any:
    """A one-node ONNX model with the custom node the trt-flavor export emits for ``kind``
    ("roi_align": MultiLevelRoIAlign, "nms": BatchedNMS), static shapes from ``case``."""
    from onnx import TensorProto, helper

    from pfpn.plugins.names import CUSTOM_DOMAIN, NMS_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, ROI_ALIGN_NAME

    ident = dict(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if kind == "roi_align":
        feats, rois = case["feats"], case["rois"]
        inputs = [helper.make_tensor_value_info("rois", f32, list(rois.shape))]
        inputs += [helper.make_tensor_value_info(f"p{i + 2}", f32, list(f.shape)) for i, f in enumerate(feats)]
        node = helper.make_node(ROI_ALIGN_NAME, [v.name for v in inputs], ["pooled"], domain=CUSTOM_DOMAIN,
                                output_height=case["oh"], output_width=case["ow"], sampling_ratio=case["sampling"],
                                base_stride=4, finest_scale=56.0, **ident)
        outputs = [helper.make_tensor_value_info("pooled", f32, [rois.shape[0], feats[0].shape[1], case["oh"],
                                                                  case["ow"]])]
    elif kind == "nms":
        b, n = case["scores"].shape
        inputs = [helper.make_tensor_value_info("boxes", f32, [b, n, 4]),
                  helper.make_tensor_value_info("scores", f32, [b, n]),
                  helper.make_tensor_value_info("groups", i64, [b, n])]
        node = helper.make_node(NMS_NAME, ["boxes", "scores", "groups"], ["selected", "num_selected"],
                                domain=CUSTOM_DOMAIN, iou_threshold=float(case["iou"]),
                                score_threshold=float(case["thr"]), max_output_boxes=int(case["k"]), **ident)
        outputs = [helper.make_tensor_value_info("selected", i64, [b, int(case["k"])]),
                   helper.make_tensor_value_info("num_selected", i64, [b])]
    else:
        raise ValueError(f"kind must be 'roi_align' or 'nms', got {kind!r}")
    graph = helper.make_graph([node], f"one_{kind}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CUSTOM_DOMAIN, 1)])
    model.ir_version = 8
    return model


def plugin_feeds(kind: str, case: dict) -> dict[str, np.ndarray]:
    if kind == "roi_align":
        return {"rois": case["rois"], **{f"p{i + 2}": f for i, f in enumerate(case["feats"])}}
    return {"boxes": case["boxes"], "scores": case["scores"], "groups": np.asarray(case["groups"], np.int64)}


def trt_plugin_cases() -> dict[str, tuple[str, dict]]:
    """Small static-shape cases for the one-node TensorRT networks (no zero-sized tensors)."""
    roi = roi_align_cases(quick=True)
    nms = nms_cases(quick=True)
    return {"roi_align_random_7x7": ("roi_align", roi["random_7x7"]),
            "roi_align_zero_rows": ("roi_align", roi["zero_rows_degenerate"]),
            "nms_grouped": ("nms", nms["grouped_multichunk"]),
            "nms_zero_row": ("nms", nms["zero_row"])}


def trt_build(trt: Any, model: Any, *, python_plugins: bool = False, workspace_gb: float = 1.0) -> bytes:
    """Build a serialized TensorRT 10 engine from an ONNX model with static input shapes."""
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = 0
    enum = trt.NetworkDefinitionCreationFlag
    if python_plugins and hasattr(enum, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(enum.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [one_line(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser failed ({len(errors)} errors): {errors[0] if errors else '?'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def trt_run(trt: Any, engine_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deserialize and run an engine once (name-based tensor API, runtime.cuda buffers and stream)."""
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.trt.runner import deserialize_engine

    logger = trt.Logger(trt.Logger.WARNING)
    context_gpu = cuda_driver.CudaContext(0)
    stream = context_gpu.create_stream()
    buffers: list[Any] = []
    try:
        _runtime, engine = deserialize_engine(trt, engine_bytes, logger)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            host = np.ascontiguousarray(feeds[name])
            want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if host.dtype != want:
                raise RuntimeError(f"engine input {name} is {want}, the feed {host.dtype}")
            if not context.set_input_shape(name, tuple(host.shape)):
                raise RuntimeError(f"TensorRT rejected shape {host.shape} for {name}")
            buf = cuda_driver.DeviceBuffer(host.nbytes)
            buffers.append(buf)
            buf.copy_from_host(host, stream)
            context.set_tensor_address(name, buf.ptr)
        outputs: dict[str, tuple[np.ndarray, Any]] = {}
        for name in names:
            if name in inputs:
                continue
            dims = context.get_tensor_shape(name)
            host = np.empty(tuple(int(dims[i]) for i in range(len(dims))),
                            np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            buf = cuda_driver.DeviceBuffer(host.nbytes)
            buffers.append(buf)
            context.set_tensor_address(name, buf.ptr)
            outputs[name] = (host, buf)
        if not context.execute_async_v3(stream.address):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for host, buf in outputs.values():
            if host.nbytes:
                buf.copy_to_host(host, stream)
        stream.synchronize()
        return {name: host for name, (host, _) in outputs.items()}
    finally:
        for buf in buffers:
            buf.close()
        stream.close()
        context_gpu.close()


def check_trt_uint8_input(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    model = uint8_cast_transpose_model()
    images = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 128, 255]
    out = trt_run(trt, trt_build(trt, model), {"images": images})["nchw"]
    expected = images.astype(np.float32).transpose(0, 3, 1, 2)
    ok = out.shape == expected.shape and bool(np.array_equal(out, expected))
    summary = f"TensorRT {trt.__version__}: uint8 {list(images.shape)} -> float {list(out.shape)}, " \
              f"{'equal to numpy' if ok else 'DIFFERENT from numpy'}"
    return check_result("pass" if ok else "fail", summary, tensorrt_version=trt.__version__,
                        max_abs_diff=float(np.abs(out - expected).max()) if out.shape == expected.shape else None,
                        reason="" if ok else "the uint8 -> Cast -> Transpose engine does not reproduce numpy")


def check_trt_plugins_alone(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    from pfpn.plugins import reference
    from pfpn.plugins.trt_plugins import COMPILED, register_plugins

    try:
        register_plugins()
    except ImportError as e:
        raise SkipCheck(f"TensorRT {trt.__version__} cannot host the project's plugins: {one_line(e)}") from None
    rows = {}
    for name, (kind, case) in trt_plugin_cases().items():
        got = trt_run(trt, trt_build(trt, plugin_node_model(kind, case), python_plugins=True), plugin_feeds(kind, case))
        if kind == "roi_align":
            expected = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                                      sampling_ratio=case["sampling"])
            rows[name] = compare_roi_align(got["pooled"], expected)
        else:
            ref_selection = reference.batched_nms(case["boxes"], case["scores"], case["groups"],
                                                  iou_threshold=case["iou"], score_threshold=case["thr"],
                                                  max_output_boxes=case["k"])
            rows[name] = compare_nms((got["selected"], got["num_selected"]), ref_selection)
    ok_count = sum(r["ok"] for r in rows.values())
    ok = ok_count == len(rows)
    summary = f"TensorRT {trt.__version__}: {ok_count}/{len(rows)} one-plugin networks match plugins/reference.py"
    return check_result("pass" if ok else "fail", summary, cases=rows, compiled=dict(COMPILED),
                        reason="" if ok else "a plugin network disagrees with the reference")


def small_exports(ctx: CheckContext) -> dict[str, Path]:
    """The small model's checkpoint and both ONNX flavors under the work folder (built once)."""
    if "small_exports" in ctx.shared:
        return ctx.shared["small_exports"]
    require_torch()
    from pfpn.export import to_onnx
    from pfpn.training.checkpoint import save_checkpoint

    model, config = build_small_model()
    folder = ctx.work_dir / "small"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ckpt": folder / "small.pt", "ort": folder / "small_ort.onnx", "trt": folder / "small_trt.onnx"}
    save_checkpoint(paths["ckpt"], model=model, config=config, categories=small_categories())
    log = io.StringIO()
    for flavor in ("ort", "trt"):
        with contextlib.redirect_stdout(log):
            rc = to_onnx.main(["--ckpt", str(paths["ckpt"]), "--flavor", flavor, "--out", str(paths[flavor])])
        if rc != 0:
            raise RuntimeError(f"export/to_onnx.py --flavor {flavor} exited {rc}: {one_line(log.getvalue())[-300:]}")
    ctx.shared["small_exports"] = paths
    return paths


def small_engine(ctx: CheckContext) -> tuple[Path, float]:
    """Build the small model's trt-flavor engine with runtime/build_engine.py in a subprocess."""
    if "small_engine" in ctx.shared:
        return ctx.shared["small_engine"], 0.0
    paths = small_exports(ctx)
    engine = paths["trt"].with_name("small_trt_fp32.engine")
    timeout = max(30.0, min(240.0, ctx.budget.remaining() - 15.0))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "build_engine.py"), "--onnx", str(paths["trt"]),
                           "--out", str(engine)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"runtime/build_engine.py exited {proc.returncode}: {one_line(last)[:300]}")
    ctx.shared["small_engine"] = engine
    return engine, seconds


# Run in a fresh interpreter: load and run an engine without ever importing plugins/.
RELOAD_SCRIPT = r"""
import json, sys
engine = sys.argv[2]
import numpy as np
from pfpn.runtime.trt.runner import TrtRunner
import pfpn.runtime.predictor
report = {"imported_before_run": sorted(m for m in sys.modules if m == "pfpn.plugins" or m.startswith("pfpn.plugins."))}
if engine != "--imports-only":
    with TrtRunner(engine) as runner:
        rng = np.random.default_rng(0)
        h, w = runner.metadata.max_short_side, runner.metadata.max_long_side
        div = runner.metadata.size_divisor
        images = np.zeros((1, -(-h // div) * div, -(-w // div) * div, 3), np.uint8)
        images[0, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = runner.infer(images, np.array([[h, w]], np.int64))
        report["shapes"] = {k: list(v.shape) for k, v in out.items()}
        report["num_detections"] = int(out["num_detections"][0])
        report["finite"] = bool(all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"))
report["plugins_modules"] = sorted(m for m in sys.modules if m == "pfpn.plugins" or m.startswith("pfpn.plugins."))
print("RELOAD " + json.dumps(report))
"""


def run_reload_script(engine: str | Path, timeout: float = 120.0) -> dict:
    """RELOAD_SCRIPT in a fresh interpreter -> its report (``engine="--imports-only"``: imports only)."""
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(ROOT), str(engine)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RELOAD ")), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the reload subprocess exited {proc.returncode}: {one_line(last)[:300]}")
    return json.loads(line[len("RELOAD "):])


def check_trt_engine_reload(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    engine, build_s = small_engine(ctx)
    report = run_reload_script(engine, timeout=max(30.0, min(120.0, ctx.budget.remaining() - 5.0)))
    clean = not report["plugins_modules"]
    ok = clean and report.get("finite", False)
    summary = (f"TensorRT {trt.__version__}: built in {build_s:.1f} s ({engine.stat().st_size / 1e6:.1f} MB), ran in a "
               f"fresh process with {report.get('num_detections')} detections; plugins imported there: "
               f"{report['plugins_modules'] or 'none'}")
    reason = "" if ok else ("the fresh process imported plugins/" if not clean else "non-finite outputs")
    return check_result("pass" if ok else "fail", summary, reason=reason, engine=str(engine), build_seconds=build_s,
                        **report)


def check_trt_end_to_end(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    from pfpn.runtime.predictor import Predictor

    engine, _ = small_engine(ctx)
    paths = small_exports(ctx)
    images = small_images(IMAGES_QUICK if ctx.quick else 6, seed=9)
    trt_pred = Predictor(engine)
    ort_pred = Predictor(paths["ort"])
    rows, differing, pixels = [], 0, 0
    for i, image in enumerate(images):
        if ctx.budget.low(5.0):
            break
        a = ort_pred.predict(image).id_map
        b = trt_pred.predict(image).id_map
        c = compare_label_maps(a, b)
        rows.append({"image": i, "size": list(image.shape[:2]), **c})
        differing += c["differing"]
        pixels += c["pixels"]
    agreement = 1.0 - differing / pixels if pixels else 0.0
    ok = bool(rows) and agreement >= MIN_PIXEL_AGREEMENT
    summary = (f"TensorRT {trt.__version__} ({trt_pred.backend.name}) vs ONNX Runtime: {agreement:.4%} identical "
               f"panoptic ids over {len(rows)} images (limit {MIN_PIXEL_AGREEMENT:.1%})")
    return check_result("pass" if ok else "fail", summary, agreement=agreement, per_image=rows,
                        backend=trt_pred.backend.name,
                        reason="" if ok else f"panoptic ids agree on {agreement:.4%} < {MIN_PIXEL_AGREEMENT:.1%}")


# ----------------------------------------------------------------------------------------------
# runner


def run_one(name: str, ctx: CheckContext) -> dict:
    """Run ``check_<name>`` -> {"name", "status", "seconds", "summary", "details", "reason" / "error"}."""
    t0 = time.perf_counter()
    fn = globals()[f"check_{name}"]  # looked up at call time (tests replace checks)
    try:
        if ctx.budget.low(3.0):
            raise SkipCheck(f"time budget of {ctx.budget.seconds:.0f} s used up before this check started")
        result = dict(fn(ctx))
    except SkipCheck as e:
        result = check_result("skip", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a broken check must not stop the others
        result = check_result("fail")
        result["error"] = one_line(f"{type(e).__name__}: {e}")[:500]
    result = {"name": name, "status": result["status"], "seconds": round(time.perf_counter() - t0, 2),
              **{k: v for k, v in result.items() if k != "status"}}
    return result


def run_gpu_check(*, out: Path, quick: bool = False, budget_s: float = DEFAULT_BUDGET_S,
                  only: Sequence[str] | None = None, work_dir: Path | None = None,
                  echo: Callable[[str], None] | None = print) -> dict:
    """Run the checks (all, or ``only``), write the JSON report to ``out`` and return it.

    ``work_dir``: where exports / engines / the training data go (default: a temporary folder,
    removed afterwards). ``echo``: progress lines (None: silent)."""
    names = list(CHECK_NAMES if not only else only)
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {', '.join(CHECK_NAMES)}")
    say = echo or (lambda _line: None)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    budget = Budget(budget_s)
    results = []
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx = CheckContext(work_dir=work_dir, quick=quick, budget=budget)
        for i, name in enumerate(names, 1):
            say(f"[{i}/{len(names)}] {name} ...")
            result = run_one(name, ctx)
            results.append(result)
            say(f"[{i}/{len(names)}] {format_check_line(result)}")
    counts = {s: sum(1 for r in results if r["status"] == s) for s in STATUSES}
    report = {"script": "benchmarks/gpu_check.py", "started_at": started, "quick": quick,
              "budget_seconds": budget_s, "total_seconds": round(budget.elapsed(), 2), "counts": counts,
              "exit_code": 1 if counts["fail"] else 0, "checks": results}
    report = jsonable(report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--quick", action="store_true", help=f"{IMAGES_QUICK} images per image check, fewer kernel cases")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}); image loops stop and later "
                        f"checks are skipped when it is spent")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(CHECK_NAMES)}")
    p.add_argument("--work-dir", help="keep exports / engines here (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        report = run_gpu_check(out=Path(args.out), quick=args.quick, budget_s=args.budget, only=only,
                               work_dir=Path(args.work_dir) if args.work_dir else None)
    except ValueError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print()
    print(format_summary(report))
    print(f"report: {args.out}")
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
