"""What this machine's cores can do, and what the network asks of them: the yardsticks
``benchmarks/fps.py`` reports every backend against.

* :func:`gemm_peak` runs one large matrix product in ONNX Runtime, the engine of the CPU backends,
  with the same thread count: float32 ``MatMul`` (GFLOP/s), and u8 x s8 -> s32 ``MatMulInteger``
  (GOP/s), the form int8 QLinearConv / QLinearMatMul reduce to (MLAS picks AVX-512 VNNI / AVX2
  kernels by itself). The best of ``repeats`` timed runs after a warm-up is the peak.
* :func:`network_flops` counts the network's floating-point operations once for a model and an
  input, with PyTorch's FLOP counter on the PyTorch model (a multiply-add counts 2; the counter
  covers convolutions, matrix products and RoIAlign-free layers, i.e. the work a GEMM peak bounds).

Achieved GFLOP/s of a backend = network FLOPs / its network time; % of peak against the float32
or int8 peak that matches its arithmetic.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PEAK_SIZE = 1536  # n x n x n: large enough to run at the kernels' steady rate, short enough to repeat


@dataclass(frozen=True)
class GemmPeak:
    kind: str  # "fp32" (GFLOP/s) or "int8" (GOP/s, u8 x s8)
    size: int
    threads: int
    best_per_s: float  # G(FL)OP/s of the fastest run
    median_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _gemm_session(kind: str, n: int, threads: int) -> tuple[Any, dict]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        feed = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    elif kind == "int8":
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                  helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])]
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}
    else:
        raise ValueError(f"unknown GEMM kind {kind!r} (fp32 or int8)")
    model = helper.make_model(helper.make_graph([node], "gemm", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, feed


def gemm_peak(kind: str, *, threads: int, size: int = PEAK_SIZE, repeats: int = 5) -> GemmPeak:
    """The machine's n x n x n GEMM rate in ONNX Runtime with ``threads`` threads."""
    session, feed = _gemm_session(kind, size, threads)
    session.run(None, feed)  # warm-up: packing buffers, thread pool
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    ops = 2.0 * size ** 3 / 1e9
    return GemmPeak(kind=kind, size=size, threads=int(threads), best_per_s=ops / min(times),
                    median_per_s=ops / float(np.median(times)))


def busier(before: GemmPeak, after: GemmPeak, tolerance: float = 0.15) -> str | None:
    """A one-line warning when the peak moved by more than ``tolerance`` between two
    measurements of the same kind (the machine got busier or freer during the run), else None."""
    change = after.best_per_s / before.best_per_s - 1.0
    if abs(change) <= tolerance:
        return None
    direction = "slower" if change < 0 else "faster"
    return (f"the {before.kind} GEMM peak was {abs(change):.0%} {direction} after the backends than before "
            f"({before.best_per_s:.0f} -> {after.best_per_s:.0f} G/s): the machine's load changed during the run")


def network_flops(model: Any, images: Any, image_sizes: Any) -> dict[str, float]:
    """GFLOP of one forward pass of a PyTorch Panoptic FPN (``training.model.panoptic_fpn``) on a
    prepared batch: {"total": ..., "<top-level module>": ...}. Multiply-adds count 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=2)
    with torch.no_grad(), counter:
        model(images, image_sizes)
    out = {"total": counter.get_total_flops() / 1e9}
    for module, counts in counter.get_flop_counts().items():
        parts = module.split(".")
        if len(parts) == 2:  # "<model class>.<top-level module>"
            out[parts[1]] = sum(counts.values()) / 1e9
    # what ran outside the modules' forward calls (the RoI heads are called through their methods)
    out["roi_heads_and_other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


def percent_of_peak(gflop: float | None, network_ms: float | None, peak: GemmPeak | None) -> tuple[float | None,
                                                                                                  float | None]:
    """(achieved G(FL)OP/s, % of the peak) for a network of ``gflop`` run in ``network_ms``."""
    if not gflop or not network_ms or peak is None:
        return None, None
    achieved = gflop / (network_ms / 1000.0)
    return achieved, 100.0 * achieved / peak.best_per_s


def provenance() -> dict:
    """Where a measurement comes from: commit (``+dirty`` with uncommitted changes), UTC date,
    CPU model and cores, Python and the libraries the backends run on."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("torch", "onnxruntime", "openvino", "numpy", "cv2"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except Exception:
            versions[module] = None
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def describe_machine(prov: dict) -> str:
    """One line: cores, CPU, Python and library versions of a :func:`provenance` record."""
    libs = ", ".join(f"{k} {v}" if v else f"{k} (not installed)" for k, v in prov["versions"].items())
    return f"{prov['cores']} CPU cores ({prov['cpu']}), Python {prov['python']}, {libs}"
