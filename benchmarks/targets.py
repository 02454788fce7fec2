"""What the benchmarks compare: one checkpoint run by several backends, each a :class:`Target`
built on demand (export, quantization, engine build, cached next to the checkpoint's artifacts)
and timed the same way, through its predictor's own public API (:meth:`Target.predict_timed`).

A target that cannot run here (no GPU, TensorRT or OpenVINO missing) has the status "skipped"
with the reason (its builder raised :class:`TargetUnavailable`); one that breaks is "failed"
with the error.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from pfpn.runtime.predictor import Predictor, Timings
from pfpn.runtime.result import PanopticResult

ROOT = Path(__file__).resolve().parents[1]

BACKENDS = ("pytorch", "ort_fp32", "ort_int8", "openvino", "openvino_int8", "trt_fp16", "trt_int8", "mmdet")
# the backends that return panoptic results (mmdet is a timing row: its results are compared with
# ours by the parity tests, tests/reference)
RESULT_BACKENDS = tuple(b for b in BACKENDS if b != "mmdet")
BACKEND_HELP = {
    "pytorch": "PyTorch eager predictor (training/predictor.py)",
    "ort_fp32": "ONNX Runtime CPU, ort-flavor export, float32",
    "ort_int8": "ONNX Runtime CPU, static INT8 (Q/DQ) of the ort-flavor export",
    "openvino": "OpenVINO CPU (f32) on the ort-flavor export",
    "openvino_int8": "OpenVINO CPU on the same static INT8 (Q/DQ) model as ort_int8 (one calibration)",
    "trt_fp16": "TensorRT FP16 engine + CUDA post-processing (needs a GPU and TensorRT)",
    "trt_int8": "TensorRT INT8 engine + CUDA post-processing (needs a GPU and TensorRT)",
    "mmdet": "mmdetection 3.3 itself (what a user would run instead), where the parity tests' reference "
             "environment is installed (make reference) and the checkpoint is in the published layout",
}


class TargetUnavailable(Exception):
    """Raised by a target's builder when the backend cannot run on this machine (no GPU, a
    library missing, a TensorRT build environment problem); the message is the one-line reason.
    :func:`make_target` turns it into a Target with the status "skipped"."""


@dataclass
class TimedPrediction:
    """One image through a target."""

    result: PanopticResult | None  # None for a timing-only backend (mmdet)
    timings: Timings  # per stage, as the predictor reports them
    seconds: float  # end to end, measured around the predictor's call
    detections: int | None = None  # the network's detections, where the predictor reports them


@dataclass
class Target:
    """A backend, opened or not. ``predictor`` is the backend's own predictor: a runtime
    :class:`~pfpn.runtime.predictor.Predictor`, the PyTorch ``PanopticPredictor`` (the same
    methods) or a :class:`MmdetProcess` (``predict_timed`` only: timing, no results)."""

    name: str
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    model_file: Path | None = None
    predictor: Any = None

    @property
    def file_size_mb(self) -> float | None:
        if self.model_file is None or not Path(self.model_file).exists():
            return None
        return Path(self.model_file).stat().st_size / 1e6

    def predict_timed(self, image) -> TimedPrediction:
        """``image`` (a BGR array or a path) through the predictor's public API: the runtime and
        PyTorch predictors' ``predict_detailed`` (result, PanopticMap with the network's
        detections, per-stage timings), else (mmdet) its ``predict_timed`` (result, timings)."""
        t0 = time.perf_counter()
        if hasattr(self.predictor, "predict_detailed"):
            result, panoptic, timings = self.predictor.predict_detailed([image])[0]
            return TimedPrediction(result, timings, time.perf_counter() - t0, len(panoptic.scores))
        result, timings = self.predictor.predict_timed(image)
        return TimedPrediction(result, timings, time.perf_counter() - t0)


def load_reference_env() -> ModuleType:
    """tests/reference/reference_env.py (where the parity tests' mmdetection environment lives),
    loaded from its file; TargetUnavailable where the repository's tests/ is absent (an installed
    wheel has none)."""
    path = ROOT / "tests" / "reference" / "reference_env.py"
    if not path.is_file():
        raise TargetUnavailable(f"the mmdetection backend needs the repository's tests/reference ({path} not found)")
    spec = importlib.util.spec_from_file_location("pfpn_reference_env", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MmdetProcess:
    """mmdetection 3.3 in its own process (tests/reference/run_mmdet.py serve, in the parity tests'
    reference environment), timed by that process: pre-processing = its test pipeline (load,
    resize, pack), network = ``test_step`` (data pre-processor, network and fusion together)."""

    def __init__(self, ckpt: Path, threads: int, folder: Path) -> None:
        reference_env = load_reference_env()
        if not reference_env.is_installed():
            raise TargetUnavailable(f"the mmdetection reference environment is not installed "
                                    f"({reference_env.site_dir()}; make reference)")
        from pfpn.training.checkpoint import load_checkpoint

        layout = load_checkpoint(ckpt)
        if layout.source != "mmdet" or layout.config.model.backbone.depth != 50:
            raise TargetUnavailable(f"mmdetection runs its published R-50 config: {ckpt.name} is "
                                    f"{'not in the published layout' if layout.source != 'mmdet' else 'another depth'}")
        env = dict(reference_env.reference_environment(), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths: dict[int, Path] = {}  # id(image array) -> the PNG written for it
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "reference" / "run_mmdet.py"),
                                      "--threads", str(threads), "serve", "--ckpt", str(ckpt)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if not first.strip().startswith("{"):
            tail = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()[-1:]
            raise RuntimeError(f"mmdetection could not load {ckpt.name}: {tail[0] if tail else 'no output'} (its "
                               f"checkpoint must be in the published layout)")

    def image_path(self, image) -> Path:
        """A path for ``image``: itself, or a PNG written once per array."""
        if isinstance(image, (str, os.PathLike)):
            return Path(image)
        key = id(image)
        if key not in self.paths:
            import cv2

            self.paths[key] = self.folder / f"image_{len(self.paths):03d}.png"
            cv2.imwrite(str(self.paths[key]), image)
        return self.paths[key]

    def predict_timed(self, image) -> tuple[None, Timings]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{self.image_path(image)}\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return None, Timings(answer["pipeline_s"], answer["test_step_s"], 0.0, 1)

    def predict(self, image) -> PanopticResult:
        raise NotImplementedError("the mmdetection backend only times mmdetection; its panoptic results are "
                                  "compared with ours by the parity tests (tests/reference/test_mmdet_parity.py)")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close() if self.proc.stdin else None
            self.proc.wait(timeout=30)


def open_predictor(name: str, model: Path, *, threads: int, batch_size: int = 1):
    """The predictor of backend ``name`` on its built file: the PyTorch predictor on a checkpoint
    ("pytorch", torch.set_num_threads), else a runtime Predictor (OpenVINO for the openvino
    backends; TensorRT engines ignore ``threads``)."""
    if name == "pytorch":
        import torch

        from pfpn.training.predictor import PanopticPredictor

        torch.set_num_threads(threads)
        return PanopticPredictor.from_checkpoint(model)
    if name.startswith("openvino"):
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise TargetUnavailable("OpenVINO is not installed (pip install openvino)") from None
    return Predictor(model, backend="openvino" if name.startswith("openvino") else None, threads=threads,
                     batch_size=batch_size)


def open_target(name: str, model: Path, *, threads: int) -> Target:
    """Backend ``name`` opened on a file it has already (a checkpoint for "pytorch"): an ok
    Target; raises TargetUnavailable where the backend cannot run here."""
    return Target(name, "ok", model_file=model, predictor=open_predictor(name, model, threads=threads))


# ----------------------------------------------------------------------------------------------
# artifacts (cached)

def onnx_file(ckpt: Path, workdir: Path, flavor: str = "ort") -> Path:
    """The checkpoint's export of ``flavor`` (export/to_onnx.py's export_onnx), written once."""
    out = workdir / f"{ckpt.stem}_{flavor}.onnx"
    if not out.exists():
        from pfpn.export.to_onnx import export_onnx

        export_onnx(ckpt=ckpt, out=out, flavor=flavor)
    return out


def int8_file(ckpt: Path, workdir: Path, calib_images: Sequence[Path]) -> Path:
    out = workdir / f"{ckpt.stem}_int8.onnx"
    if not out.exists():
        from pfpn.runtime.quantize_int8 import quantize_int8

        quantize_int8(onnx_file(ckpt, workdir), out, list(calib_images))
    return out


def engine_file(ckpt: Path, workdir: Path, precision: str, calib_dir: Path | None) -> Path:
    """The checkpoint's trt-flavor engine at ``precision`` ("fp16" / "int8", calibrated on the
    images of ``calib_dir``), built once (runtime/build_engine.py's build_engine, silent);
    TargetUnavailable where TensorRT, a GPU or plugin support is missing."""
    from pfpn.runtime.build_engine import build_engine
    from pfpn.runtime.trt.build_plan import EnvironmentProblem, one_line

    out = workdir / f"{ckpt.stem}_{precision}.engine"
    if not out.exists():
        try:
            build_engine(onnx=onnx_file(ckpt, workdir, "trt"), out=out, fp16=precision == "fp16",
                         int8=precision == "int8", calib_images=calib_dir if precision == "int8" else None, echo=None)
        except EnvironmentProblem as e:
            raise TargetUnavailable(one_line(e)) from None
    return out


def gpu_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else why not (one line)."""
    try:
        from pfpn.runtime.cuda_driver import gpus
        from pfpn.runtime.trt.runner import import_tensorrt

        import_tensorrt()
    except ImportError as e:
        return str(e)
    try:
        if not gpus():
            return "no CUDA GPU found"
    except RuntimeError as e:  # GpuUnavailableError / CudaError: no driver, no device
        return f"no usable CUDA GPU ({' '.join(str(e).split())[:160]})"
    return None


# ----------------------------------------------------------------------------------------------

def make_target(name: str, *, ckpt: Path, workdir: Path, threads: int, calib_images: Sequence[Path],
                calib_dir: Path | None = None) -> Target:
    """Build (or reuse) what ``name`` needs and open it; never raises: a builder's
    TargetUnavailable gives the status "skipped", any other error "failed", each with its one line."""
    workdir.mkdir(parents=True, exist_ok=True)

    def opened(model: Path) -> Target:
        return open_target(name, model, threads=threads)

    builders: dict[str, Callable[[], Target]] = {
        "pytorch": lambda: opened(ckpt),
        "ort_fp32": lambda: opened(onnx_file(ckpt, workdir)),
        "ort_int8": lambda: opened(int8_file(ckpt, workdir, calib_images)),
        "openvino": lambda: opened(onnx_file(ckpt, workdir)),
        "openvino_int8": lambda: opened(int8_file(ckpt, workdir, calib_images)),
        "trt_fp16": lambda: _tensorrt(name, ckpt, workdir, "fp16", None, calib_images),
        "trt_int8": lambda: _tensorrt(name, ckpt, workdir, "int8", calib_dir, calib_images),
        "mmdet": lambda: Target(name, "ok", model_file=ckpt, predictor=MmdetProcess(ckpt, threads, workdir / "mmdet")),
    }
    if name not in builders:
        return Target(name, "failed", f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        return builders[name]()
    except TargetUnavailable as e:
        return Target(name, "skipped", str(e))
    except Exception as e:
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return Target(name, "failed", detail)


def open_targets(names: Sequence[str], *, ckpt: Path, workdir: Path, threads: int, calib_images: Sequence[Path],
                 calib_dir: Path | None = None, progress: bool = False) -> Iterator[Target]:
    """The per-backend loop of the benchmarks: :func:`make_target` for each name in turn (opened
    when the caller asks for the next one), announced as "[name] preparing ..." and, when it cannot
    run, "[name] skipped: reason" / "[name] failed: error"; yields every Target, ok or not. With
    ``progress``, a ``[progress] done/total`` line before each (training/progress.py)."""
    from pfpn.training.progress import progress_line

    for done, name in enumerate(names):
        if progress:
            print(progress_line(done, len(names), next=name), flush=True)
        print(f"[{name}] preparing ...", flush=True)
        target = make_target(name, ckpt=ckpt, workdir=workdir, threads=threads, calib_images=calib_images,
                             calib_dir=calib_dir)
        if target.status != "ok":
            print(f"[{name}] {target.status}: {target.reason}", flush=True)
        yield target
    if progress:
        print(progress_line(len(names), len(names)), flush=True)


def _tensorrt(name: str, ckpt: Path, workdir: Path, precision: str, calib_dir: Path | None,
              calib_images: Sequence[Path]) -> Target:
    reason = gpu_unavailable_reason()
    if reason:
        raise TargetUnavailable(reason)
    from pfpn.runtime.predictor import Predictor

    if precision == "int8" and calib_dir is None:  # build_engine.py calibrates from a folder
        calib_dir = copy_images(calib_images, workdir / "calib")
    engine = engine_file(ckpt, workdir, precision, calib_dir)
    return Target(name, "ok", model_file=engine, predictor=Predictor(engine))


def copy_images(paths: Sequence[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder
