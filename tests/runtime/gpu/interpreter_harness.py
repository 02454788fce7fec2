"""The GPU post-processing kernels (runtime/gpu/kernels.py), run on the CPU with Triton's
interpreter through the same launch plan as GpuPostprocessor (runtime.gpu.device_fusion.launch_plan),
give the PyTorch reference's label map (training/predictor.py:label_map_single_image) exactly.

The interpreter executes each kernel's Python source with numpy, program by program. One
fidelity fix is applied here: the interpreter evaluates ``tl.fma(x, y, z)`` as ``x * y + z``
(two roundings) while the GPU's ``fma.rn.f32`` rounds once; the kernels use fma deliberately to
reproduce the reference's fused CPU arithmetic, so the interpreter's fma is replaced by an exact
float32 fma (float64 product + error-free sum + tie correction; checked below).

Process layout: the interpreter needs TRITON_INTERPRET=1 before triton is imported, while other
tests compile with Triton in the same pytest process. The checks (``check_*``) of each file therefore
run in one child pytest of that file with TRITON_INTERPRET=1; the parametrized ``test_interpreted``
reports each check's outcome there.

This module is what the three test files share (test_kernels_interpreter.py: hand-built fusion
cases; _sort.py: the sort kernel and tie order; _random.py: random cases and GpuPostprocessor on
an interpreter-backed driver): running a file's checks in the child, the interpreter set-up (in
the child only), the CPU-side driver of the launch plan, the PyTorch reference and the case
builders.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pfpn.runtime.gpu.device_fusion import (  # torch-free, triton-free
    SPECS_BY_NAME, Buf, ImageGeometry, KernelConfig, Launch, Memset, WorkspaceLayout, launch_plan, read_back)
from pfpn.runtime.contract import FusionConfig

ROOT = Path(__file__).resolve().parents[3]
CHILD_FLAG = "GPU_KERNELS_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"

# ----------------------------------------------------------------------------------------------
# This process (pytest): the interpreter needs TRITON_INTERPRET=1 before triton is imported,
# while other tests compile with Triton in this process and need it unset. So every ``check_*``
# of a test file runs in one child pytest (that file, TRITON_INTERPRET=1); each test there
# reports one check's outcome.


def check_names(test_file: str | Path) -> list[str]:
    """The ``check_*`` functions of ``test_file``, in order."""
    import ast

    tree = ast.parse(Path(test_file).read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("check_")]


def run_checks_in_child(test_file: str | Path, tmp_path_factory) -> dict:
    """Run all checks of ``test_file`` once in a child process; -> {check name: [(case id, outcome, message)]}."""
    if IN_CHILD:
        pytest.skip("child process")
    report = tmp_path_factory.mktemp("interp") / "junit.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env[CHILD_FLAG] = "1"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                           "-p", "no:xdist", "-o", "python_functions=check_*", "-s", f"--junitxml={report}",
                           str(Path(test_file))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if not report.exists():
        raise AssertionError(f"interpreter child process failed (rc {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results: dict = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = tag
                message = (node.get("message") or "") + "\n" + (node.text or "")
        results.setdefault(name.split("[")[0], []).append((name, outcome, message))
    print(f"interpreter child: {elapsed:.1f} s; " + proc.stdout.strip().splitlines()[-1])
    for line in proc.stdout.splitlines():
        if line.startswith("INFO "):
            print(line)
    return results


def assert_check_passed(child_results: dict, check: str) -> None:
    """One check's outcome in the child: failed cases fail here, all skipped skips."""
    cases = child_results.get(check)
    assert cases, f"{check} did not run in the interpreter child process"
    failed = [(n, m) for n, o, m in cases if o in ("failure", "error")]
    assert not failed, "\n\n".join(f"{n}:\n{m[-2500:]}" for n, m in failed)
    if all(o == "skipped" for _, o, _ in cases):
        pytest.skip(cases[0][2].strip()[:200])


# ----------------------------------------------------------------------------------------------
# The child process: interpreter set-up

if IN_CHILD:
    assert os.environ.get("TRITON_INTERPRET") == "1" and "triton" not in sys.modules
    import torch
    import triton.runtime.interpreter as triton_interpreter

    from pfpn.runtime.gpu import kernels as K
    from pfpn.training.config import MaskHeadConfig, ModelConfig
    from pfpn.training.model.panoptic_fpn import Detections
    from pfpn.training.predictor import label_map_single_image

    assert type(K.semantic_kernel).__name__ == "InterpretedFunction"


def exact_fma_f32(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 fma(x, y, z): the float64 product of two float32 is exact; the
    float64 sum s = p + z is corrected when it lands exactly on a float32 rounding tie while the
    exact sum does not (its error term e, from TwoSum, breaks the tie)."""
    x64 = np.asarray(x, np.float32).astype(np.float64)
    y64 = np.asarray(y, np.float32).astype(np.float64)
    z64 = np.asarray(z, np.float32).astype(np.float64)
    p = x64 * y64
    s = p + z64
    bb = s - p
    e = (p - (s - bb)) + (z64 - bb)
    up = np.nextafter(s, np.inf).astype(np.float32)
    down = np.nextafter(s, -np.inf).astype(np.float32)
    tie = (up != down) & (e != 0)
    r = s.astype(np.float32)
    r = np.where(tie & (e > 0), up, np.where(tie & (e < 0), down, r))
    return np.asarray(r, dtype=np.float32)


if IN_CHILD:
    def _create_fma(self, x, y, z):
        data = exact_fma_f32(x.data, y.data, z.data) if z.data.dtype == np.float32 else x.data * y.data + z.data
        return triton_interpreter.TensorHandle(data, z.dtype.scalar)

    triton_interpreter.InterpreterBuilder.create_fma = _create_fma


# ----------------------------------------------------------------------------------------------
# CPU-side driver of the launch plan (mirrors GpuPostprocessor.enqueue/run)


def run_interpreted(inputs: dict, config: KernelConfig, geometry: ImageGeometry, *, programs: int = 3,
                    trace: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """inputs: torch CPU tensors (boxes [D, 4] f32, scores [D] f32, labels [D] i64,
    mask_probs [D, M, M] f32, num_detections [1] i64, semantic_logits [S + 1, LH, LW] f32)."""
    h, w = geometry.original_size
    ws = WorkspaceLayout.for_detections(config.max_detections)
    buffers = {name: t.contiguous().reshape(-1) for name, t in inputs.items()}
    # garbage first: the plan's memsets must initialise what the kernels rely on
    buffers["label_map"] = torch.full((h * w,), -7, dtype=torch.int32)
    buffers["workspace"] = torch.full((ws.size,), -7, dtype=torch.int32)
    for step in launch_plan(config, geometry, programs=programs):
        if isinstance(step, Memset):
            buffers[step.name][: step.count] = 0
            continue
        assert isinstance(step, Launch)
        spec = SPECS_BY_NAME[step.kernel]
        args = []
        for (pname, ptype), a in zip(spec.params, step.args):
            if isinstance(a, Buf):
                assert ptype.startswith("*")
                args.append(buffers[a.name][a.offset:])
            else:
                assert not ptype.startswith("*")
                args.append(float(a) if ptype == "fp32" else int(a))
        getattr(K, step.kernel)[step.grid](*args, **spec.constexprs)
        if trace is not None:
            trace.append(step.kernel)
    return read_back(buffers["label_map"].numpy().reshape(h, w).copy(), buffers["workspace"].numpy(), config)


def run_reference(inputs: dict, config: KernelConfig, geometry: ImageGeometry) -> tuple[np.ndarray, list[int]]:
    n = int(inputs["num_detections"][0])
    det = Detections(inputs["boxes"][:n], inputs["scores"][:n], inputs["labels"][:n], inputs["mask_probs"][:n])
    model_config = ModelConfig(
        num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
        mask_head=MaskHeadConfig(mask_threshold=config.mask_threshold),
        fusion=config.fusion)
    pred = label_map_single_image(det, inputs["semantic_logits"], model_config, padded_size=geometry.padded_size,
                                  resized_size=geometry.resized_size, original_size=geometry.original_size,
                                  scale_factor=geometry.scale_factor)
    return pred.label_map, pred.kept


def compare(inputs: dict, config: KernelConfig, geometry: ImageGeometry, *, programs: int = 3) -> tuple[float, int]:
    """-> (fraction of equal pixels, number of kept instances); asserts the kept lists agree."""
    got, kept = run_interpreted(inputs, config, geometry, programs=programs)
    ref, ref_kept = run_reference(inputs, config, geometry)
    assert got.shape == ref.shape
    assert kept.tolist() == list(ref_kept)
    return float((got == ref).mean()), len(ref_kept)


# ----------------------------------------------------------------------------------------------
# case builders

T, S = 6, 5  # small category counts for hand-built cases (VOID = 11)
VOID = T + S


def make_inputs(*, d: int, boxes, scores, labels, probs, logits, n: int | None = None) -> dict:
    """Pad detection rows to d like the contract (zeros beyond num_detections)."""
    n = len(scores) if n is None else n
    m = probs.shape[-1] if len(probs) else 28
    out = {
        "boxes": torch.zeros(d, 4), "scores": torch.zeros(d), "labels": torch.zeros(d, dtype=torch.int64),
        "mask_probs": torch.zeros(d, m, m), "num_detections": torch.tensor([n], dtype=torch.int64),
        "semantic_logits": torch.as_tensor(logits, dtype=torch.float32),
    }
    k = len(scores)
    if k:
        out["boxes"][:k] = torch.as_tensor(np.asarray(boxes, np.float32))
        out["scores"][:k] = torch.as_tensor(np.asarray(scores, np.float32))
        out["labels"][:k] = torch.as_tensor(np.asarray(labels, np.int64))
        out["mask_probs"][:k] = torch.as_tensor(np.asarray(probs, np.float32))
    return out


def stuff_logits(geometry: ImageGeometry, channel_of_region) -> np.ndarray:
    """Logits (S + 1, LH, LW) with a clear winner per stride-4 cell: channel_of_region(y, x)."""
    lh, lw = geometry.logits
    logits = np.zeros((S + 1, lh, lw), np.float32)
    for y in range(lh):
        for x in range(lw):
            logits[channel_of_region(y, x), y, x] = 5.0
    return logits


GEOM = ImageGeometry(original_size=(60, 80), resized_size=(60, 80), padded_size=(64, 96), scale_factor=(1.0, 1.0))
CFG = KernelConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=8, fusion=FusionConfig(stuff_area_limit=50))
FULL = np.ones((28, 28), np.float32)


def run_case(inputs, config=CFG, geometry=GEOM, programs=3):
    got, kept = run_interpreted(inputs, config, geometry, programs=programs)
    ref, ref_kept = run_reference(inputs, config, geometry)
    np.testing.assert_array_equal(got, ref)
    assert kept.tolist() == list(ref_kept)
    return got, kept


# ----------------------------------------------------------------------------------------------
# random cases


def smooth_field(rng, shape, cells=4):
    coarse = torch.from_numpy(rng.random((1, 1, cells, cells)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def random_case(rng, *, t: int, s: int, d: int, n: int, geometry: ImageGeometry, ties: bool):
    rh, rw = geometry.resized_size
    boxes = []
    for _ in range(n):
        w_ = rng.uniform(2, rw * 0.6)
        h_ = rng.uniform(2, rh * 0.6)
        x1 = rng.uniform(0, rw - w_)
        y1 = rng.uniform(0, rh - h_)
        boxes.append([x1, y1, x1 + w_, y1 + h_])
    if ties:
        scores = np.sort(rng.integers(5, 9, n) / 10)[::-1]
    else:
        scores = np.sort(rng.uniform(0.6, 1.0, n))[::-1]
    probs = []
    for i in range(n):
        kind = rng.integers(0, 3)
        if kind == 0:
            probs.append(rng.random((28, 28)))  # noisy, many values near the threshold
        elif kind == 1:
            probs.append(smooth_field(rng, (28, 28)))
        else:
            probs.append(np.full((28, 28), 0.5 if rng.random() < 0.5 else 0.49))
    probs = np.asarray(probs, np.float32).reshape(n, 28, 28)
    lh, lw = geometry.logits
    logits = rng.standard_normal((s + 1, lh, lw)).astype(np.float32) * 2
    logits[s] += 0.5
    return make_inputs(d=d, boxes=boxes, scores=scores.astype(np.float32), labels=rng.integers(0, t, n), probs=probs,
                       logits=logits)


RANDOM_GEOMETRIES = [
    ImageGeometry((60, 80), (60, 80), (64, 96), (1.0, 1.0)),
    ImageGeometry((60, 80), (90, 120), (96, 128), (120 / 80, 90 / 60)),  # upscaled, padded
    ImageGeometry((80, 60), (53, 40), (64, 64), (40 / 60, 53 / 80)),  # downscaled, odd factors
    ImageGeometry((61, 83), (100, 136), (128, 160), (136 / 83, 100 / 61)),  # non-round sizes
]


def interpreter_tests(test_file: str | Path):
    """The two pytest objects every interpreter test file needs, for its ``check_*`` functions:
    ``child_results, test_interpreted = interpreter_tests(__file__)`` (a module fixture that runs
    all checks once in the child, and one parametrized test per check)."""

    @pytest.fixture(scope="module")
    def child_results(tmp_path_factory) -> dict:
        return run_checks_in_child(test_file, tmp_path_factory)

    @pytest.mark.parametrize("check", check_names(test_file))
    def test_interpreted(child_results, check):
        assert_check_passed(child_results, check)

    return child_results, test_interpreted
