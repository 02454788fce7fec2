"""What the benchmarks compare: one checkpoint run by several backends, each a *target* with
the same ``predict_timed(image)`` interface, built on demand (export, quantization, engine
build) and cached next to the checkpoint's artifacts.

A target that cannot run here (no GPU, TensorRT or OpenVINO missing) is returned as
*skipped* with the reason; one that breaks is *failed* with the error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pfpn.runtime.predictor import Timings
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


@dataclass
class Target:
    name: str
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    model_file: Path | None = None
    predictor: Any = None  # has predict_timed(image) -> (PanopticResult, Timings) and .categories
    notes: dict = field(default_factory=dict)

    @property
    def file_size_mb(self) -> float | None:
        if self.model_file is None or not Path(self.model_file).exists():
            return None
        return Path(self.model_file).stat().st_size / 1e6


class RuntimeTarget:
    """A runtime Predictor with per-stage timings."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.categories = predictor.categories

    def predict_timed(self, image) -> tuple[PanopticResult, Timings]:
        p = self.predictor.predict_detailed([image])[0]
        return p.result, p.timings

    def predict(self, image) -> PanopticResult:
        return self.predictor.predict(image)


class MmdetTarget:
    """mmdetection 3.3 in its own process (tests/reference/run_mmdet.py serve, the parity tests'
    reference environment), timed by that process: pre-processing = its test pipeline (load,
    resize, pack), network = ``test_step`` (data pre-processor, network and fusion together)."""

    def __init__(self, ckpt: Path, threads: int, folder: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests" / "reference"))
        try:
            import reference_env
        finally:
            sys.path.pop(0)
        if not reference_env.is_installed():
            raise _Skip(f"the mmdetection reference environment is not installed ({reference_env.site_dir()}; "
                        f"make reference)")
        from pfpn.training.checkpoint import load_checkpoint

        layout = load_checkpoint(ckpt)
        if layout.source != "mmdet" or layout.config.model.backbone.depth != 50:
            raise _Skip(f"mmdetection runs its published R-50 config: {ckpt.name} is "
                        f"{'not in the published layout' if layout.source != 'mmdet' else 'another depth'}")
        env = dict(reference_env.reference_environment(), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths: dict[int, Path] = {}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "reference" / "run_mmdet.py"),
                                      "--threads", str(threads), "serve", "--ckpt", str(ckpt)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if not first.strip().startswith("{"):
            tail = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()[-1:]
            raise RuntimeError(f"mmdetection could not load {ckpt.name}: {tail[0] if tail else 'no output'} (its "
                               f"checkpoint must be in the published layout)")

    def _path(self, image) -> Path:
        if isinstance(image, (str, os.PathLike)):
            return Path(image)
        key = id(image)
        if key not in self._paths:
            import cv2

            self._paths[key] = self.folder / f"image_{len(self._paths):03d}.png"
            cv2.imwrite(str(self._paths[key]), image)
        return self._paths[key]

    def predict_timed(self, image) -> tuple[None, Timings]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{self._path(image)}\n")
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


class TorchTarget:
    """The PyTorch eager predictor with the same per-stage timings."""

    def __init__(self, ckpt: Path, threads: int) -> None:
        import torch

        from pfpn.training.predictor import PanopticPredictor

        torch.set_num_threads(threads)
        self.predictor = PanopticPredictor.from_checkpoint(ckpt)
        self.categories = self.predictor.categories

    def predict_timed(self, image) -> tuple[PanopticResult, Timings]:
        import torch

        from pfpn.runtime.images import load_image
        from pfpn.runtime.result import panoptic_result_from_label_map
        from pfpn.training.predictor import label_map_single_image

        p = self.predictor
        t0 = time.perf_counter()
        bgr = load_image(image)
        batch = p.prepare([bgr])
        t1 = time.perf_counter()
        with torch.no_grad():
            raw = p.model(batch.images, batch.image_sizes)
        t2 = time.perf_counter()
        lm = label_map_single_image(raw.detections[0], raw.semantic_logits[0], p.config,
                                    padded_size=tuple(batch.images.shape[-2:]), resized_size=batch.image_sizes[0],
                                    original_size=batch.original_sizes[0], scale_factor=batch.scale_factors[0])
        result = panoptic_result_from_label_map(lm.label_map.numpy(), p.categories,
                                                instance_scores=lm.detections.scores[lm.kept].tolist(),
                                                instance_offset=p.config.fusion.instance_offset)
        t3 = time.perf_counter()
        return result, Timings(t1 - t0, t2 - t1, t3 - t2, 1)

    def predict(self, image) -> PanopticResult:
        return self.predict_timed(image)[0]


# ----------------------------------------------------------------------------------------------
# artifacts (cached)

def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed: {' | '.join(tail)}")


def onnx_file(ckpt: Path, workdir: Path, flavor: str = "ort") -> Path:
    out = workdir / f"{ckpt.stem}_{flavor}.onnx"
    if not out.exists():
        _run([sys.executable, str(ROOT / "export" / "to_onnx.py"), "--ckpt", str(ckpt), "--flavor", flavor,
              "--out", str(out)], f"export ({flavor})")
    return out


def int8_file(ckpt: Path, workdir: Path, calib_images: Sequence[Path]) -> Path:
    out = workdir / f"{ckpt.stem}_int8.onnx"
    if not out.exists():
        from pfpn.runtime.quantize_int8 import quantize_int8

        quantize_int8(onnx_file(ckpt, workdir), out, list(calib_images))
    return out


def engine_file(ckpt: Path, workdir: Path, precision: str, calib_dir: Path | None) -> Path:
    out = workdir / f"{ckpt.stem}_{precision}.engine"
    if not out.exists():
        cmd = [sys.executable, str(ROOT / "runtime" / "build_engine.py"), "--onnx", str(onnx_file(ckpt, workdir, "trt")),
               f"--{precision}", "--out", str(out)]
        if precision == "int8" and calib_dir is not None:
            cmd += ["--calib-images", str(calib_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["engine build failed"]
            raise _Skip(reason[0].removeprefix("error: ")) if proc.returncode == 3 else RuntimeError(reason[0])
    return out


class _Skip(Exception):
    """The target cannot run on this machine (reason in the message)."""


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
    """Build (or reuse) what ``name`` needs and open it; never raises."""
    from pfpn.runtime.predictor import Predictor

    workdir.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[], Target]] = {
        "pytorch": lambda: Target(name, "ok", model_file=ckpt, predictor=TorchTarget(ckpt, threads)),
        "ort_fp32": lambda: _runtime(name, onnx_file(ckpt, workdir), Predictor, threads=threads),
        "ort_int8": lambda: _runtime(name, int8_file(ckpt, workdir, calib_images), Predictor, threads=threads),
        "openvino": lambda: _openvino(name, onnx_file(ckpt, workdir), threads),
        "openvino_int8": lambda: _openvino(name, int8_file(ckpt, workdir, calib_images), threads),
        "trt_fp16": lambda: _tensorrt(name, ckpt, workdir, "fp16", None, calib_images),
        "trt_int8": lambda: _tensorrt(name, ckpt, workdir, "int8", calib_dir, calib_images),
        "mmdet": lambda: Target(name, "ok", model_file=ckpt, predictor=MmdetTarget(ckpt, threads, workdir / "mmdet")),
    }
    if name not in builders:
        return Target(name, "failed", f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        return builders[name]()
    except _Skip as e:
        return Target(name, "skipped", str(e))
    except Exception as e:
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return Target(name, "failed", detail)


def _runtime(name: str, model: Path, predictor_cls, **kwargs) -> Target:
    return Target(name, "ok", model_file=model, predictor=RuntimeTarget(predictor_cls(model, **kwargs)))


def _openvino(name: str, model: Path, threads: int) -> Target:
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise _Skip("OpenVINO is not installed (pip install openvino)") from None
    from pfpn.runtime.predictor import Predictor

    return Target(name, "ok", model_file=model,
                  predictor=RuntimeTarget(Predictor(model, backend="openvino", threads=threads)))


def _tensorrt(name: str, ckpt: Path, workdir: Path, precision: str, calib_dir: Path | None,
              calib_images: Sequence[Path]) -> Target:
    reason = gpu_unavailable_reason()
    if reason:
        raise _Skip(reason)
    from pfpn.runtime.predictor import Predictor

    if precision == "int8" and calib_dir is None:  # build_engine.py calibrates from a folder
        calib_dir = copy_images(calib_images, workdir / "calib")
    engine = engine_file(ckpt, workdir, precision, calib_dir)
    return Target(name, "ok", model_file=engine, predictor=RuntimeTarget(Predictor(engine)))


def checked_cli_inputs(ckpt: str, backends: str) -> tuple[Path, list[str]]:
    """The benchmark scripts' ``--ckpt`` and ``--backends``, checked; ValueError names the problem."""
    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (run `make demo` first, or pass --ckpt)")
    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return path, names


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def copy_images(paths: Sequence[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder


def default_images(count: int, size: tuple[int, int] | None, folder: Path | None = None) -> list:
    """Synthetic images: the demo's val split when it exists and no size is asked, else generated
    (deterministic) at ``size``."""
    from pfpn.training.data.synthetic import make_synthetic_sample

    if folder is not None:
        from pfpn.runtime.images import list_images

        return list_images(folder, count=count)
    h, w = size or (192, 256)
    return [make_synthetic_sample(np.random.default_rng(1000 + i), h, w)[0] for i in range(count)]


def benchmark_parser(doc: str | None, *, count: int, count_help: str):
    """The argument parser of a benchmark script with the arguments they share: --ckpt, --images,
    --size, --count, --calib-count, --workdir (read them with :func:`benchmark_images`)."""
    import argparse

    from pfpn.benchmarks.fps import DEFAULT_CKPT, DEFAULT_IMAGES

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help=f"checkpoint (default {DEFAULT_CKPT})")
    p.add_argument("--images", help=f"folder of images (default {DEFAULT_IMAGES} when it exists and no --size)")
    p.add_argument("--size", help="generate synthetic images of this HxW instead")
    p.add_argument("--count", type=int, default=count, help=f"{count_help} (default {count})")
    p.add_argument("--calib-count", type=int, default=16, help="calibration images for the int8 backends")
    p.add_argument("--workdir", help="model cache (default <ckpt dir>/deploy, as fps.py)")
    return p


def benchmark_images(*, images: str | None, size: tuple[int, int] | None, count: int) -> list[np.ndarray]:
    """The images of a benchmark script as BGR arrays: ``images`` (a folder), else the demo's val
    split when it exists and no ``size`` is asked, else generated synthetic images of ``size``."""
    from pfpn.benchmarks.fps import DEFAULT_IMAGES
    from pfpn.runtime.images import read_image

    folder = Path(images) if images else (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() and not size else None)
    return [read_image(im) if isinstance(im, Path) else im for im in default_images(count, size, folder)]


def env_threads(threads: int) -> None:
    """Apply the thread count to this process's libraries: the OpenMP/BLAS variables for those
    that have not started their threads yet, and OpenCV's pool (resize, pasting) directly, as it
    is already loaded by the time the arguments are parsed. Torch, ONNX Runtime and OpenVINO get
    it through their own settings (make_target)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2

    cv2.setNumThreads(threads)
