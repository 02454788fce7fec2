"""One prepared command that checks the GPU half of the project on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out gpu_report.json            # all checks, < 5 minutes
    python benchmarks/gpu_check.py --out gpu_report.json --quick    # 2 images per image check
    python benchmarks/gpu_check.py --out r.json --only plugin_kernels,amp_training_step

On a machine where this checkout is copied but not installed (a lent GPU machine), install it
first, without touching the machine's packages; the two-line device command is:

    pip install --no-deps --no-build-isolation -e .
    python benchmarks/gpu_check.py --out gpu_report.json

(without the install, ``import pfpn`` fails and the script prints that one-line instruction).

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
   (``runtime.gpu.device_fusion.GpuPostprocessor``) against the numpy post-processing
   (``runtime.fusion.postprocess_single_image``) on the export graph's outputs computed by
   PyTorch on CUDA (small demo model; random "firing" R-50 at 800x1333, ~100 detections):
   identical label maps required; time per image of both.
3. ``plugin_kernels``: the TensorRT plugins' kernels as an engine runs them (the AOT PTX of
   ``plugins/triton_kernels.compile_kernel`` for this GPU, loaded by the driver, launched with
   exactly the plugin's arguments) on CUDA tensors, against ``plugins/reference.py``.
4. ``torch_cuda_vs_cpu``: the export graph on CUDA vs on the CPU (detections matched by IoU,
   relative error of the semantic logits; TF32 off); fails only on a gross mismatch.
5. ``amp_training_step``: mixed-precision (fp16 autocast + GradScaler) training steps of the
   small model on CUDA: finite loss, weights changed.
6. ``ort_cuda_providers``: ONNX Runtime's CUDA execution provider (onnxruntime-gpu, else skipped):
   ``runtime.Predictor(small ort export, providers=("cuda", "cpu"))`` vs ``providers=("cpu",)`` on
   the same images: ``predictor.providers`` must include "cuda"; ms per image of both, identical
   panoptic ids on >= 99.9% of the pixels, whether the segments match.
7. TensorRT only (else skipped with the import error): ``trt_uint8_input``, ``trt_plugins_alone``,
   ``trt_engine_reload`` (build with ``runtime/build_engine.py``'s ``build_engine``, run in a
   fresh subprocess that never imports ``plugins``), ``trt_end_to_end`` (``runtime.Predictor`` on the
   engine vs ONNX Runtime: identical panoptic ids on >= 99.9% of the pixels).

The whole run keeps to a time budget (``--budget``, default 270 s): image loops stop early and
later checks are skipped when it is spent, and the report says so.

Other code calls :func:`run_gpu_check`; each check is a plain function ``check_<name>(ctx)``:
the environment here, the others in gpu_check_models.py (2, 4), gpu_check_kernels.py (3),
gpu_check_training.py (5), gpu_check_ort.py (6) and gpu_check_trt.py (7); what they share is in
gpu_check_common.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

INSTALL_HINT = ("error: the project is not installed here (import pfpn failed); from the checkout's root run: "
                "pip install --no-deps --no-build-isolation -e .")
try:
    import pfpn  # noqa: F401
except ImportError:
    print(INSTALL_HINT, file=sys.stderr)
    sys.exit(2)

from pfpn.benchmarks.gpu_check_common import (IMAGES_QUICK, STATUSES, Budget, CheckContext, SkipCheck,  # noqa: E402
                                              check_result, format_check_line, format_summary, jsonable, one_line)
from pfpn.benchmarks.gpu_check_kernels import check_plugin_kernels  # noqa: E402, F401 - run_one looks checks up here
from pfpn.benchmarks.gpu_check_models import (check_postprocess_kernels_r50,  # noqa: E402, F401
                                              check_postprocess_kernels_small, check_torch_cuda_vs_cpu)
from pfpn.benchmarks.gpu_check_ort import check_ort_cuda_providers  # noqa: E402, F401
from pfpn.benchmarks.gpu_check_training import check_amp_training_step  # noqa: E402, F401
from pfpn.benchmarks.gpu_check_trt import (check_trt_end_to_end, check_trt_engine_reload,  # noqa: E402, F401
                                           check_trt_plugins_alone, check_trt_uint8_input)

DEFAULT_BUDGET_S = 270.0
CHECK_NAMES = ("environment", "postprocess_kernels_small", "postprocess_kernels_r50", "plugin_kernels",
               "torch_cuda_vs_cpu", "amp_training_step", "ort_cuda_providers", "trt_uint8_input",
               "trt_plugins_alone", "trt_engine_reload", "trt_end_to_end")


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
