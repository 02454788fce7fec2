"""What every GPU check shares (benchmarks/gpu_check.py): the run context (time budget, work
folder, things several checks build once), check results, the requirements (each raises
:class:`SkipCheck` with a one-line reason naming what is missing) and the GPU-free comparisons
and report helpers (tested without a GPU)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pfpn.runtime.detection_matching import match_detections
from pfpn.runtime.trt.build_plan import one_line

IMAGES_FULL = 20
IMAGES_QUICK = 2
MATCH_IOU = 0.9  # detections of two runs match above this IoU
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


def detection_agreement(boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray, labels_b: np.ndarray,
                        iou_threshold: float = MATCH_IOU) -> dict:
    """How well two runs' detections agree (runtime.detection_matching.match_detections above
    ``iou_threshold``) -> {"num_a", "num_b", "matched", "fraction" (matched / max(num_a, num_b),
    1.0 when both are empty), "min_iou" of the matched pairs}."""
    na, nb = len(boxes_a), len(boxes_b)
    ious = [iou for _, _, iou in match_detections(boxes_a, labels_a, boxes_b, labels_b, iou_threshold=iou_threshold)]
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
