"""The GPU post-processing kernels (runtime/gpu/kernels.py), run on the CPU with Triton's
interpreter through the same launch plan as GpuPostprocessor (runtime.gpu.postprocess.launch_plan),
give the PyTorch reference's label map (training/predictor.py:label_map_single_image) exactly.

The interpreter executes each kernel's Python source with numpy, program by program. One
fidelity fix is applied here: the interpreter evaluates ``tl.fma(x, y, z)`` as ``x * y + z``
(two roundings) while the GPU's ``fma.rn.f32`` rounds once; the kernels use fma deliberately to
reproduce the reference's fused CPU arithmetic, so the interpreter's fma is replaced by an exact
float32 fma (float64 product + error-free sum + tie correction; checked below).

Process layout: the interpreter needs TRITON_INTERPRET=1 before triton is imported, while other
tests compile with Triton in the same pytest process. The checks (``check_*``) therefore run in
one child pytest of this file with TRITON_INTERPRET=1; the parametrized ``test_interpreted``
reports each check's outcome here.
"""
from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pfpn.runtime.gpu.postprocess import (  # torch-free, triton-free
    SPECS_BY_NAME, Buf, FusionConfig, ImageGeometry, Launch, Memset, WorkspaceLayout, launch_plan, read_back)
from pfpn.runtime.torch_sort import fusion_order, std_sort  # the numpy runtime's emulation of torch's CPU sort

ROOT = Path(__file__).resolve().parents[3]
CHILD_FLAG = "GPU_KERNELS_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"


# ----------------------------------------------------------------------------------------------
# This process (pytest): the interpreter needs TRITON_INTERPRET=1 before triton is imported,
# while other tests compile with Triton in this process and need it unset. So every ``check_*``
# below runs in one child pytest (this file, TRITON_INTERPRET=1); each test here reports one
# check's outcome.


def _check_names() -> list[str]:
    import ast

    tree = ast.parse(Path(__file__).read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("check_")]


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict:
    """Run all checks once in a child process; -> {check name: [(case id, outcome, message)]}."""
    if IN_CHILD:
        pytest.skip("child process")
    report = tmp_path_factory.mktemp("interp") / "junit.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env[CHILD_FLAG] = "1"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                           "-p", "no:xdist", "-o", "python_functions=check_*", "-s", f"--junitxml={report}",
                           str(Path(__file__))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
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


@pytest.mark.parametrize("check", _check_names())
def test_interpreted(child_results, check):
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
    from pfpn.training.config import FusionConfig as TorchFusionConfig
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


def run_interpreted(inputs: dict, config: FusionConfig, geometry: ImageGeometry, *, programs: int = 3,
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


def run_reference(inputs: dict, config: FusionConfig, geometry: ImageGeometry) -> tuple[np.ndarray, list[int]]:
    n = int(inputs["num_detections"][0])
    det = Detections(inputs["boxes"][:n], inputs["scores"][:n], inputs["labels"][:n], inputs["mask_probs"][:n])
    model_config = ModelConfig(
        num_thing_classes=config.num_thing_classes, num_stuff_classes=config.num_stuff_classes,
        mask_head=MaskHeadConfig(mask_threshold=config.mask_threshold),
        fusion=TorchFusionConfig(mask_overlap_threshold=config.mask_overlap_threshold,
                                 stuff_area_limit=config.stuff_area_limit, instance_offset=config.instance_offset))
    pred = label_map_single_image(det, inputs["semantic_logits"], model_config, padded_size=geometry.padded_size,
                                  resized_size=geometry.resized_size, original_size=geometry.original_size,
                                  scale_factor=geometry.scale_factor)
    return pred.label_map.numpy(), pred.kept


def compare(inputs: dict, config: FusionConfig, geometry: ImageGeometry, *, programs: int = 3) -> tuple[float, int]:
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
CFG = FusionConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=8, stuff_area_limit=50)
FULL = np.ones((28, 28), np.float32)


def run_case(inputs, config=CFG, geometry=GEOM, programs=3):
    got, kept = run_interpreted(inputs, config, geometry, programs=programs)
    ref, ref_kept = run_reference(inputs, config, geometry)
    np.testing.assert_array_equal(got, ref)
    assert kept.tolist() == list(ref_kept)
    return got, kept


# ----------------------------------------------------------------------------------------------
# tests


def check_exact_fma_emulation():
    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal(100000).astype(np.float32) * 10 for _ in range(3))
    r = exact_fma_f32(x, y, z)
    ref = np.array([np.float32(float(np.float64(a) * np.float64(b) + np.float64(c))) for a, b, c in
                    zip(x[:2000], y[:2000], z[:2000])])  # double rounding is fine at these magnitudes
    np.testing.assert_array_equal(r[:2000], ref)
    # a tie case: p exactly halfway between two float32, z tiny breaks the tie
    a = np.float32(1 + 2**-12)  # a * a = 1 + 2**-11 + 2**-24: exactly a float32 tie
    assert exact_fma_f32(a, a, np.float32(2**-60)) == np.float32(1 + 2**-11 + 2**-23)
    assert exact_fma_f32(a, a, np.float32(-(2**-60))) == np.float32(1 + 2**-11)
    if hasattr(math, "fma"):  # Python >= 3.13
        for a, b, c in zip(x[:1000], y[:1000], z[:1000]):
            assert exact_fma_f32(a, b, c) == np.float32(math.fma(float(a), float(b), float(c)))


def check_launch_sequence():
    trace = []
    inputs = make_inputs(d=CFG.max_detections, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    run_interpreted(inputs, CFG, GEOM, trace=trace)
    d = CFG.max_detections
    assert trace == (["fusion_sort_kernel"] + ["instance_stats_kernel", "instance_write_kernel"] * d
                     + ["semantic_kernel", "small_stuff_kernel"])


def check_no_detections_stuff_and_void():
    # left half stuff 1, right half the things channel (-> VOID), a small patch of stuff 3
    def region(y, x):
        if 4 <= y < 7 and 2 <= x < 5:
            return 3
        return 1 if x < 12 else S
    logits = stuff_logits(GEOM, region)
    inputs = make_inputs(d=CFG.max_detections, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)),
                         logits=logits)
    got, kept = run_case(inputs)
    assert len(kept) == 0
    assert set(np.unique(got)) <= {T + 1, T + 3, VOID}
    assert (got == VOID).any() and (got == T + 1).any()


def check_stuff_area_limit():
    # stuff 3 patch small (-> VOID), stuff 2 patch large enough to stay
    def region(y, x):
        if 4 <= y < 6 and 2 <= x < 4:
            return 3  # ~8x8 px region -> < 100
        if y >= 8:
            return 2
        return 0
    cfg = FusionConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=4, stuff_area_limit=100)
    inputs = make_inputs(d=4, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)), logits=stuff_logits(GEOM, region))
    got, _ = run_case(inputs, cfg)
    assert not (got == T + 3).any() and (got == T + 2).any() and (got == VOID).any()


def check_overlap_skip_and_occlusion_order():
    # A (score .9) and B (.8) overlap by less than half of B: B keeps its free pixels only;
    # C (.7) lies mostly inside A: skipped; D (.95) is first even though listed last
    boxes = [[10, 10, 40, 40], [30, 10, 60, 40], [12, 12, 30, 30], [50, 40, 75, 58]]
    scores = [0.9, 0.8, 0.7, 0.95]
    labels = [1, 2, 3, 4]
    probs = np.stack([FULL] * 4)
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=scores, labels=labels, probs=probs,
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    got, kept = run_case(inputs)
    assert kept.tolist() == [3, 0, 1]  # D, A, B; C skipped
    assert got[20, 20] == 1 + 2 * 1000 and got[20, 50] == 2 + 3 * 1000 and got[50, 60] == 4 + 1 * 1000
    assert got[20, 35] == 1 + 2 * 1000  # overlap: the earlier instance keeps it


def _box_mask_area(box, geometry=GEOM):
    """Pixels of a full-probability box mask as the reference pastes it (for building exact cases)."""
    from pfpn.training.model.postprocess import paste_masks

    m = paste_masks(torch.ones(1, 28, 28), torch.tensor([box], dtype=torch.float32), geometry.original_size)[0]
    return m


def check_exactly_half_covered_is_kept_and_more_is_skipped():
    # B's mask is exactly twice the overlap with A: covered / (area + 1e-5) < 0.5 -> kept.
    a_box = [10.0, 10.0, 30.0, 30.0]
    ma = _box_mask_area(a_box)
    # search a B box whose mask overlaps A's by exactly half of B's area
    found = None
    for x1 in np.arange(15.0, 30.0, 0.25):
        for x2 in np.arange(x1 + 4, 60.0, 0.25):
            b_box = [float(x1), 10.0, float(x2), 30.0]
            mb = _box_mask_area(b_box)
            area, cov = int(mb.sum()), int((mb & ma).sum())
            if area and 2 * cov == area:
                found = b_box
                break
        if found:
            break
    assert found is not None
    inputs = make_inputs(d=4, boxes=[a_box, found], scores=[0.9, 0.8], labels=[0, 1], probs=np.stack([FULL] * 2),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    cfg = FusionConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=4, stuff_area_limit=50)
    _, kept = run_case(inputs, cfg)
    assert kept.tolist() == [0, 1]
    # one more column of overlap -> more than half covered -> skipped
    shifted = [found[0] - 1.0, found[1], found[2] - 1.0, found[3]]
    mb = _box_mask_area(shifted)
    assert 2 * int((mb & ma).sum()) > int(mb.sum())
    inputs = make_inputs(d=4, boxes=[a_box, shifted], scores=[0.9, 0.8], labels=[0, 1], probs=np.stack([FULL] * 2),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    _, kept = run_case(inputs, cfg)
    assert kept.tolist() == [0]


def check_empty_masks_and_degenerate_boxes():
    zero = np.zeros((28, 28), np.float32)
    boxes = [[10, 10, 40, 40],  # probabilities all 0 -> area 0 -> skipped
             [20, 20, 20, 30],  # zero width (division by zero -> inf/NaN grid)
             [70, 50, 70.5, 50.25],  # tiny box near the corner
             [0, 0, 0, 0],  # empty box at the corner (the network clips boxes to the image;
             # the reference cannot paste boxes lying entirely outside it)
             [5, 5, 70, 55]]  # real one
    probs = np.stack([zero, FULL, FULL, FULL, FULL])
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=[0.99, 0.98, 0.97, 0.96, 0.5],
                         labels=[0, 1, 2, 3, 4], probs=probs, logits=stuff_logits(GEOM, lambda y, x: 2))
    got, kept = run_case(inputs)
    assert 0 not in kept.tolist()


def check_things_channel_is_void_where_no_instance():
    def region(y, x):
        return S if 5 <= x < 15 else 4
    inputs = make_inputs(d=CFG.max_detections, boxes=[[30, 5, 45, 40]], scores=[0.9], labels=[5],
                         probs=FULL[None], logits=stuff_logits(GEOM, region))
    got, kept = run_case(inputs)
    assert kept.tolist() == [0] and (got == VOID).any() and (got == 5 + 1000).any()


def check_scale_factor_and_padding_crop():
    # resized 90x120 inside a 96x128 padded input, original 60x80: boxes in resized pixels
    geometry = ImageGeometry(original_size=(60, 80), resized_size=(90, 120), padded_size=(96, 128),
                             scale_factor=(120 / 80, 90 / 60))
    rng = np.random.default_rng(5)
    lh, lw = geometry.logits
    logits = rng.standard_normal((S + 1, lh, lw)).astype(np.float32) * 3
    logits[:, :, 26:] = 50.0 * (np.arange(S + 1) == 0)[:, None, None]  # padding area: must be cropped away
    boxes = [[15.3, 20.7, 70.2, 80.9], [60.5, 10.1, 118.4, 60.6]]
    probs = rng.random((2, 28, 28)).astype(np.float32)
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=[0.9, 0.8], labels=[1, 2], probs=probs,
                         logits=logits)
    run_case(inputs, geometry=geometry)


def check_tied_scores_follow_torch_unstable_sort():
    # 20 overlapping detections with only 3 distinct scores: the instance order (and so which
    # one is skipped) follows torch.argsort(-scores) on the CPU (std::sort), not a stable sort
    rng = np.random.default_rng(11)
    d = 24
    n = 20
    scores = np.array([0.9, 0.8, 0.8, 0.9, 0.7] * 4, np.float32)
    boxes = []
    for i in range(n):
        x, y = rng.uniform(0, 50), rng.uniform(0, 35)
        boxes.append([x, y, x + rng.uniform(8, 30), y + rng.uniform(8, 25)])
    probs = rng.random((n, 28, 28)).astype(np.float32) * 0.6 + 0.2
    cfg = FusionConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=d, stuff_area_limit=50)
    inputs = make_inputs(d=d, boxes=boxes, scores=scores, labels=rng.integers(0, T, n), probs=probs,
                         logits=rng.standard_normal((S + 1, *GEOM.logits)).astype(np.float32))
    run_case(inputs, cfg)
    order = torch.argsort(-torch.from_numpy(scores)).tolist()
    assert order != sorted(range(n), key=lambda i: -scores[i])  # the case really exercises tie order


def _sort_order(scores: np.ndarray, n: int) -> list[int]:
    d = len(scores)
    order = torch.full((d,), -1, dtype=torch.int32)
    K.fusion_sort_kernel[(1,)](torch.from_numpy(scores.astype(np.float32)), torch.tensor([n]), order, d,
                               **SPECS_BY_NAME["fusion_sort_kernel"].constexprs)
    assert (order[n:] == -1).all()
    return order[:n].tolist()


def check_sort_kernel_matches_torch_argsort():
    rng = np.random.default_rng(3)
    cases = [np.array([0.5, 0.7, 0.7, 0.6], np.float32), np.zeros(100, np.float32), np.linspace(1, 0, 100, dtype=np.float32)]
    for _ in range(2):
        d = int(rng.integers(17, 101))
        cases.append((rng.integers(0, int(rng.choice([2, 3, 8])), d) / 8).astype(np.float32))
        cases.append(np.sort(cases[-1])[::-1].copy())  # descending with ties, as the network gives them
    cases.append(np.array([np.nan, 0.5, np.nan, 0.7] * 5, np.float32))  # NaN sorts like torch
    for s in cases:
        n = len(s)
        assert _sort_order(s, n) == torch.argsort(-torch.from_numpy(s)).tolist()
    s = cases[4]
    assert _sort_order(s, 10) == torch.argsort(-torch.from_numpy(s[:10])).tolist()  # n < D
    assert _sort_order(s, 0) == []


def torch_cpu_argsort_desc(scores: np.ndarray) -> tuple[list[int], bool]:
    """torch.argsort(-scores) on the CPU, emulated with the runtime's std::sort (order, whether
    heap-sort ran); checked against torch itself below."""
    keys = (-scores.astype(np.float32)).tolist()

    def less(i, j):
        a, b = keys[i], keys[j]
        return (not math.isnan(a) and math.isnan(b)) or a < b

    return std_sort(list(range(len(keys))), less)


def median_of_3_killer(n: int) -> np.ndarray:
    """Scores on which the introsort exhausts its depth limit and heap-sorts: McIlroy's
    adversary ("A killer adversary for quicksort", 1999) run against the emulation."""
    gas = n
    val = [gas] * n
    state = {"solid": 0, "candidate": -1}

    def less(x, y):
        if val[x] == gas and val[y] == gas:
            z = x if x == state["candidate"] else y
            val[z] = state["solid"]
            state["solid"] += 1
        if val[x] == gas:
            state["candidate"] = x
        elif val[y] == gas:
            state["candidate"] = y
        return val[x] < val[y]

    std_sort(list(range(n)), less)
    return np.array(val, np.float32)  # sort keys (= -scores)


def check_sort_emulation_matches_torch():
    rng = np.random.default_rng(1)
    for _ in range(300):
        d = int(rng.integers(1, 101))
        s = (rng.integers(0, int(rng.choice([2, 3, 6, 50])), d) / 8).astype(np.float32)
        if rng.random() < 0.5:
            s = np.sort(s)[::-1].copy()
        assert torch_cpu_argsort_desc(s)[0] == torch.argsort(-torch.from_numpy(s)).tolist()


def check_sort_kernel_heap_sort_fallback():
    keys = median_of_3_killer(100)
    for scores in ((-keys / 100).astype(np.float32),
                   (-np.floor(keys / 2) / 100).astype(np.float32)):  # 51 distinct values: ties
        order, heap_sorted = torch_cpu_argsort_desc(scores)
        assert heap_sorted, "the adversarial input should reach the introsort depth limit"
        assert order == torch.argsort(-torch.from_numpy(scores)).tolist()
        assert _sort_order(scores, 100) == order
        assert fusion_order(scores).tolist() == order  # the runtime's (key, index) form of it
    stable = sorted(range(100), key=lambda i: -scores[i])
    assert order != stable  # heap sort is not stable: the tie order really comes from it


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


@pytest.mark.parametrize("seed", range(8))
def check_random_cases_identical(seed):
    rng = np.random.default_rng(100 + seed)
    geometry = RANDOM_GEOMETRIES[seed % len(RANDOM_GEOMETRIES)]
    t, s = 8, 7
    d = 24
    n = int(rng.integers(0, d + 1))
    cfg = FusionConfig(num_thing_classes=t, num_stuff_classes=s, max_detections=d,
                       stuff_area_limit=int(rng.choice([0, 60, 300])))
    inputs = random_case(rng, t=t, s=s, d=d, n=n, geometry=geometry, ties=seed % 2 == 1)
    equal, kept = compare(inputs, cfg, geometry, programs=int(rng.choice([1, 2, 5, 1000])))
    assert equal == 1.0, f"seed {seed}: {equal:.6f} of the pixels agree ({kept} instances)"


def check_coco_sized_categories_and_100_detections():
    """T = 80, S = 53, D = 100 (the contract's defaults), a 61x83 original resized by 13/8."""
    rng = np.random.default_rng(7)
    geometry = ImageGeometry((61, 83), (99, 135), (128, 160), (135 / 83, 99 / 61))
    cfg = FusionConfig(num_thing_classes=80, num_stuff_classes=53, max_detections=100, stuff_area_limit=40)
    inputs = random_case(rng, t=80, s=53, d=100, n=40, geometry=geometry, ties=False)  # ties: tested above
    start = time.perf_counter()
    equal, kept = compare(inputs, cfg, geometry, programs=4)
    assert equal == 1.0 and kept > 3
    print(f"COCO-sized case: {kept} instances, interpreter + reference {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------------------------
# GpuPostprocessor itself, end to end, on a stand-in CUDA driver whose "device" is host memory and
# whose cuLaunchKernel runs the interpreted kernels (decoding the launcher's void** parameters)


class InterpreterDriver:
    """The cuda.bindings.driver calls runtime/cuda_driver.py and runtime/gpu/launcher.py make, backed by
    host memory."""

    class CUresult:
        CUDA_SUCCESS = 0

    CUdevice_attribute = type("A", (), {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": "major",
                                        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": "minor",
                                        "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT": "sms"})
    CUstream_flags = type("F", (), {"CU_STREAM_NON_BLOCKING": 1})
    CUfunction_attribute = type("FA", (), {"CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES": 8})

    def __init__(self, capability=(8, 7)):
        self.capability = capability
        self.allocations: dict[int, torch.Tensor] = {}
        self.calls: list[str] = []
        self.infos = None

    # context, device
    def cuInit(self, flags):
        return (0,)

    def cuDeviceGetCount(self):
        return 0, 1

    def cuDeviceGet(self, i):
        return 0, i

    def cuDevicePrimaryCtxRetain(self, dev):
        return 0, "ctx"

    def cuDevicePrimaryCtxRelease(self, dev):
        return (0,)

    def cuCtxSetCurrent(self, ctx):
        return (0,)

    def cuDeviceGetAttribute(self, attr, dev):
        return 0, {"major": self.capability[0], "minor": self.capability[1], "sms": 2}[attr]

    def cuDeviceGetName(self, size, dev):
        return 0, b"interpreter\0"

    def cuStreamCreate(self, flags):
        return 0, 1234

    def cuStreamSynchronize(self, stream):
        self.calls.append("sync")
        return (0,)

    def cuStreamDestroy(self, stream):
        return (0,)

    # memory
    def CUdeviceptr(self, ptr):
        return int(ptr)

    def cuMemAlloc(self, nbytes):
        t = torch.full((nbytes,), 0xAB, dtype=torch.uint8)  # garbage, like fresh device memory
        self.allocations[t.data_ptr()] = t
        return 0, t.data_ptr()

    def cuMemFree(self, ptr):
        del self.allocations[int(ptr)]
        return (0,)

    def _view(self, addr: int, dtype) -> torch.Tensor:
        for base, t in self.allocations.items():
            if base <= addr < base + t.numel():
                off = addr - base
                itemsize = torch.empty(0, dtype=dtype).element_size()
                assert off % itemsize == 0
                count = (t.numel() - off) // itemsize
                return t[off: off + count * itemsize].view(dtype)
        raise AssertionError(f"address {addr:#x} is not device memory")

    def cuMemsetD32Async(self, ptr, value, count, stream):
        self.calls.append("memset")
        self._view(int(ptr), torch.int32)[:count] = value
        return (0,)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        self.calls.append("copy_back")
        self._view(int(src), torch.uint8)  # must be device memory
        ctypes.memmove(dst, int(src), nbytes)
        return (0,)

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        self._view(int(dst), torch.uint8)
        ctypes.memmove(int(dst), src, nbytes)
        return (0,)

    # modules and launches
    def cuModuleLoadData(self, image):
        assert image.endswith(b"\0") and b".visible .entry" in image
        return 0, image

    def cuModuleGetFunction(self, module, name):
        return 0, name.decode()

    def cuModuleUnload(self, module):
        return (0,)

    def cuFuncSetAttribute(self, *args):
        return (0,)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        from pfpn.runtime.gpu import launcher

        info = next(i for i in self.infos.values() if i.entry == f)
        assert bx == 32 * info.num_warps and by == bz == 1 and shared == info.shared
        array = (ctypes.c_void_p * len(info.params)).from_address(params)
        dtypes = {"*fp32": torch.float32, "*i32": torch.int32, "*i64": torch.int64}
        args = []
        for (pname, ptype), addr in zip(info.params, array):
            if pname in info.scratch:
                assert ctypes.c_uint64.from_address(addr).value == 0  # no scratch: NULL
                continue
            if ptype.startswith("*"):
                args.append(self._view(ctypes.c_uint64.from_address(addr).value, dtypes[ptype]))
            else:
                value = launcher._SCALAR_CTYPES[ptype].from_address(addr).value
                args.append(float(np.float32(value)) if ptype == "fp32" else int(value))
        manifest_constexprs = next(k for k in self.manifest["kernels"] if k["entry"] == f and
                                   k["target"] == info.target)["constexprs"]
        getattr(K, info.name)[(gx, gy, gz)](*args, **manifest_constexprs)
        self.calls.append(info.name)
        return (0,)


def check_gpu_postprocessor_end_to_end_on_interpreter_driver(monkeypatch):
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.gpu import launcher
    from pfpn.runtime.gpu.postprocess import GpuPostprocessor

    drv = InterpreterDriver()
    monkeypatch.setattr(cuda_driver, "driver", lambda: drv)
    drv.manifest = launcher.read_manifest()
    post = GpuPostprocessor(num_thing_classes=8, num_stuff_classes=7, max_detections=12, stuff_area_limit=60)
    drv.infos = post.kernels.infos
    assert post.kernels.target == 75 and post.programs == 8  # the sm_75 PTX on an sm_87 device
    rng = np.random.default_rng(21)
    geometry = RANDOM_GEOMETRIES[1]
    inputs = random_case(rng, t=8, s=7, d=12, n=9, geometry=geometry, ties=True)
    device = {}
    for name, t in inputs.items():
        arr = np.ascontiguousarray(t.numpy())
        device[name] = cuda_driver.DeviceBuffer(arr.nbytes)
        cuda_driver.copy_to_device(device[name].ptr, arr, post.stream)
    drv.calls.clear()
    out = post.run(**{k: b.ptr for k, b in device.items()}, original_size=geometry.original_size,
                   resized_size=geometry.resized_size, padded_size=geometry.padded_size,
                   scale_factor=geometry.scale_factor)
    ref, ref_kept = run_reference(inputs, post.config, geometry)
    np.testing.assert_array_equal(out.label_map, ref)
    assert out.label_map.dtype == np.int32 and out.kept.tolist() == list(ref_kept)
    # nothing comes back before the end: memsets, launches, then the copies and one sync
    assert drv.calls[:2] == ["memset", "memset"]
    assert drv.calls[-3:] == ["copy_back", "copy_back", "sync"]
    assert "copy_back" not in drv.calls[:-3] and "sync" not in drv.calls[:-1]
    assert drv.calls.count("instance_write_kernel") == 12
    # a second image in the same buffers reuses the packed launches
    inputs = random_case(rng, t=8, s=7, d=12, n=12, geometry=geometry, ties=False)
    for name, t in inputs.items():
        cuda_driver.copy_to_device(device[name].ptr, np.ascontiguousarray(t.numpy()), post.stream)
    out = post.run(**{k: b.ptr for k, b in device.items()}, original_size=geometry.original_size,
                   resized_size=geometry.resized_size, padded_size=geometry.padded_size,
                   scale_factor=geometry.scale_factor)
    assert len(post._prepared) == 1
    ref, ref_kept = run_reference(inputs, post.config, geometry)
    np.testing.assert_array_equal(out.label_map, ref)
    assert out.kept.tolist() == list(ref_kept)
    for b in device.values():
        b.close()
    post.close()
