"""The Triton kernels of the TensorRT plugins (plugins/triton_kernels.py) against the numpy
reference (plugins/reference.py), executed on the CPU by the Triton interpreter, and compiled
ahead of time for every GPU TensorRT 10 supports (PTX assembled with ptxas) without a GPU.

The interpreter needs TRITON_INTERPRET=1 before triton is imported, compilation needs it unset:
the interpreter runs happen in one child process (this file run as a script), which writes the
kernels' outputs for all cases; the assertions are made here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from pfpn.plugins import reference  # noqa: E402

# feature pyramid of a 128 x 160 input: P2..P5 at strides 4..32
LEVEL_SIZES = [(32, 40), (16, 20), (8, 10), (4, 5)]


def _feats(rng, batch, channels):
    return [rng.standard_normal((batch, channels, h, w)).astype(np.float32) for h, w in LEVEL_SIZES]


def _rois(batch_ids, boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.concatenate([np.asarray(batch_ids, np.float32).reshape(-1, 1), boxes], 1).astype(np.float32)


def roi_cases():
    rng = np.random.default_rng(1)
    cases = {}
    # random boxes of all sizes, two images, 7x7 bins
    xy = rng.uniform(-8, 150, (6, 2))
    wh = rng.uniform(1, 90, (6, 2))
    cases["random_7x7"] = dict(rois=_rois(rng.integers(0, 2, 6), np.concatenate([xy, xy + wh], 1)),
                               feats=_feats(rng, 2, 3), oh=7, ow=7, sampling=0)
    # one box per level, plus boxes exactly on the level boundaries sqrt(wh) = 112, 224, 448
    sides = [40.0, 111.9, 112.0, 130.0, 224.0, 300.0, 448.0, 600.0]
    boxes = [[2.0, 3.0, 2.0 + s, 3.0 + s] for s in sides]
    cases["all_levels"] = dict(rois=_rois([0] * len(sides), boxes), feats=_feats(rng, 1, 2), oh=2, ow=3, sampling=0)
    # borders: on the image edge, partly outside, far outside (samples < -1 or > H contribute 0)
    boxes = [[0, 0, 20, 20], [140, 110, 160, 128], [-30, -30, 10, 10], [150, 120, 190, 170],
             [-60, -60, -20, -20], [200, 200, 260, 260], [0, 0, 160, 128]]
    cases["borders"] = dict(rois=_rois([0, 1, 0, 1, 0, 1, 1], boxes), feats=_feats(rng, 2, 3), oh=3, ow=3, sampling=0)
    # degenerate: zero width, zero height, a point, inverted, a sub-pixel box
    boxes = [[10, 10, 10, 40], [10, 10, 40, 10], [17.5, 22.25, 17.5, 22.25], [40, 40, 20, 20], [5, 5, 5.5, 5.25]]
    cases["degenerate"] = dict(rois=_rois([0] * 5, boxes), feats=_feats(rng, 1, 2), oh=2, ow=2, sampling=0)
    # fixed sampling ratio, more channels than a channel block of the test's BLOCK_C
    xy = rng.uniform(0, 100, (3, 2))
    cases["sampling_2"] = dict(rois=_rois([0, 0, 0], np.concatenate([xy, xy + 30], 1)), feats=_feats(rng, 1, 5),
                               oh=2, ow=2, sampling=2)
    cases["empty"] = dict(rois=np.zeros((0, 5), np.float32), feats=_feats(rng, 1, 2), oh=7, ow=7, sampling=0)
    return cases


def nms_cases():
    rng = np.random.default_rng(2)
    cases = {}

    def boxes(b, n, scale=60.0, size=25.0):
        xy = rng.uniform(0, scale, (b, n, 2))
        wh = rng.uniform(0, size, (b, n, 2))
        return np.concatenate([xy, xy + wh], -1).astype(np.float32)

    b, n = 2, 70
    cases["grouped_multichunk"] = dict(boxes=boxes(b, n), scores=rng.uniform(0, 1, (b, n)).astype(np.float32),
                                       groups=rng.integers(0, 3, (b, n)), iou=0.5, thr=0.05, k=25, chunk=16)
    # heavy score ties (tie order: lower index first, as the reference)
    cases["ties"] = dict(boxes=boxes(b, 40, 30.0), scores=rng.choice([0.2, 0.5, 0.9], (b, 40)).astype(np.float32),
                         groups=np.zeros((b, 40), np.int64), iou=0.3, thr=0.1, k=40, chunk=8)
    # stops after K kept
    cases["k_reached"] = dict(boxes=boxes(1, 30, 200.0, 10.0), scores=rng.uniform(0, 1, (1, 30)).astype(np.float32),
                              groups=np.zeros((1, 30), np.int64), iou=0.5, thr=0.0, k=3, chunk=8)
    # nothing above the threshold; and an empty N
    cases["no_candidates"] = dict(boxes=boxes(2, 10), scores=np.full((2, 10), 0.3, np.float32),
                                  groups=np.zeros((2, 10), np.int64), iou=0.5, thr=0.6, k=5, chunk=8)
    cases["empty_n"] = dict(boxes=np.zeros((2, 0, 4), np.float32), scores=np.zeros((2, 0), np.float32),
                            groups=np.zeros((2, 0), np.int64), iou=0.5, thr=0.0, k=4, chunk=8)
    # degenerate and identical boxes (zero union -> IoU 0), boxes on a border, -0.0 vs 0.0 scores
    deg = np.array([[[0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 20], [5, 5, 5, 20], [0, 0, 10, 10], [0, 0, 10, 10],
                     [0, 0, 10, 10.0001], [10, 0, 20, 10], [-5, -5, 0, 0], [0, 0, 0, 0]]], np.float32)
    sc = np.array([[0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.6, -0.0, 0.0]], np.float32)
    cases["degenerate"] = dict(boxes=deg, scores=sc, groups=np.zeros((1, 10), np.int64), iou=0.5, thr=-0.5, k=10,
                               chunk=4)
    # the RPN's use: padding scores -1, per-level groups, threshold -0.5
    s = rng.uniform(0, 1, (1, 48)).astype(np.float32)
    s[0, ::5] = -1.0
    cases["rpn_like"] = dict(boxes=boxes(1, 48), scores=s, groups=np.repeat(np.arange(4), 12)[None], iou=0.7,
                             thr=-0.5, k=30, chunk=16)
    return cases


# ----------------------------------------------------------------------------------------------
# child process: run every case in the Triton interpreter

def _child(inp: str, out: str) -> None:
    import torch

    from pfpn.plugins import triton_kernels as tk

    data = np.load(inp, allow_pickle=True)
    results = {}
    for name, case in data["roi"].item().items():
        rois, feats = case["rois"], case["feats"]
        k, c = rois.shape[0], feats[0].shape[1]
        output = torch.zeros((k, c, case["oh"], case["ow"]), dtype=torch.float32)
        cx = tk.roi_align_constexprs(case["oh"], case["ow"], case["sampling"], 4, 56.0, block_c=4)
        args = [torch.from_numpy(rois)] + [torch.from_numpy(f) for f in feats] + [k, c]
        args += [v for f in feats for v in f.shape[2:]] + [output]
        tk.interpreted("roi_align_kernel")[(tk.roi_align_grid(k, case["oh"], case["ow"]),)](*args, **cx)
        results[f"roi/{name}"] = output.numpy()
    for name, case in data["nms"].item().items():
        b, n = case["scores"].shape
        sel = torch.full((b, case["k"]), 7, dtype=torch.int64)  # garbage: the kernel must write every entry
        cnt = torch.full((b,), 7, dtype=torch.int64)
        cx = tk.nms_constexprs(case["iou"], case["thr"], case["k"], chunk=case["chunk"])
        tk.interpreted("nms_kernel")[(b,)](torch.from_numpy(case["boxes"]), torch.from_numpy(case["scores"]),
                                           torch.from_numpy(case["groups"].astype(np.int64)), b, n, sel, cnt, **cx)
        results[f"nms/{name}/selected"] = sel.numpy()
        results[f"nms/{name}/count"] = cnt.numpy()
    np.savez(out, **results)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton_interp")
    inp, out = tmp / "cases.npz", tmp / "outputs.npz"
    np.savez(inp, roi=np.array(roi_cases(), dtype=object), nms=np.array(nms_cases(), dtype=object))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--interpret", str(inp), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("name", list(roi_cases()))
def test_roi_align_kernel_matches_reference(interpreted, name):
    case = roi_cases()[name]
    expected = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                              sampling_ratio=case["sampling"])
    got = interpreted[f"roi/{name}"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


def test_roi_align_cases_cover_every_level_and_zero_rows():
    levels = reference.roi_levels(roi_cases()["all_levels"]["rois"], 4)
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # 112, 224, 448 are level boundaries
    borders = roi_cases()["borders"]
    out = reference.multilevel_roi_align(borders["rois"], borders["feats"], output_size=(3, 3))
    assert np.all(out[4] == 0) and np.all(out[5] == 0) and np.any(out[0] != 0)  # far outside: zeros


@pytest.mark.parametrize("name", list(nms_cases()))
def test_nms_kernel_matches_reference(interpreted, name):
    case = nms_cases()[name]
    sel, cnt = reference.batched_nms(case["boxes"], case["scores"], case["groups"], iou_threshold=case["iou"],
                                     score_threshold=case["thr"], max_output_boxes=case["k"])
    # ties are ordered like the reference (lower index first), so the indices match exactly
    np.testing.assert_array_equal(interpreted[f"nms/{name}/count"], cnt)
    np.testing.assert_array_equal(interpreted[f"nms/{name}/selected"], sel)


def test_nms_cases_exercise_suppression_and_padding():
    c = nms_cases()
    sel, cnt = reference.batched_nms(c["grouped_multichunk"]["boxes"], c["grouped_multichunk"]["scores"],
                                     c["grouped_multichunk"]["groups"], iou_threshold=0.5, score_threshold=0.05,
                                     max_output_boxes=25)
    assert (cnt > c["grouped_multichunk"]["chunk"]).all()  # more kept than one chunk holds
    sel, cnt = reference.batched_nms(c["degenerate"]["boxes"], c["degenerate"]["scores"], None, iou_threshold=0.5,
                                     score_threshold=-0.5, max_output_boxes=10)
    assert 0 < cnt[0] < 10 and (sel[0, cnt[0]:] == -1).all()


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation (no GPU): what TensorRT's AOT plugins receive

def _production_constexprs(variant):
    from pfpn.plugins import triton_kernels as tk

    if variant == "roi_align_kernel":
        return tk.roi_align_constexprs(7, 7, 0, 4, 56.0)
    if variant == "roi_align_kernel/sampling2":
        return tk.roi_align_constexprs(14, 14, 2, 4, 56.0)
    return tk.nms_constexprs(0.7, -0.5, 1000)


def _expected_isa(arch):
    from pfpn.runtime.gpu.triton_aot import MIN_PTX_ISA

    isa = max(80, MIN_PTX_ISA[arch])  # 8.0 (CUDA 12.0 drivers) unless the target needs more
    return f"{isa // 10}.{isa % 10}"


@pytest.mark.parametrize("arch", [75, 80, 86, 87, 89, 90, 100, 120])
@pytest.mark.parametrize("variant", ["roi_align_kernel", "nms_kernel"])
def test_aot_compile_and_assemble_for_every_tensorrt10_gpu(tmp_path, arch, variant):
    """The plugin kernels as an engine build on each GPU generation compiles them: TensorRT's
    argument list exactly, a plain (not arch-specific) target, the PTX ISA the target needs
    (sm_100: 8.6, sm_120: 8.7; ISA 8.0 there aborts LLVM), and ptxas assembles it."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: triton cannot compile in this process")
    from pfpn.plugins import triton_kernels as tk
    from pfpn.runtime.gpu.triton_aot import assemble, entry_param_names

    name = variant.split("/")[0]
    kernel = tk.compile_kernel(name, arch, _production_constexprs(variant))
    params = entry_param_names(kernel.ptx, kernel.entry)
    assert len(params) == len(tk.SIGNATURES[name]) == len(kernel.param_types)  # TensorRT's arguments exactly
    assert kernel.hidden == ()
    assert kernel.target == f"sm_{arch}"  # never sm_90a / sm_100a / sm_120a
    assert kernel.shared < 48 * 1024  # no opt-in dynamic shared memory needed
    assert kernel.num_warps == tk.NUM_WARPS[name]
    assert kernel.ptx_isa == _expected_isa(arch)
    assert ".loc" not in kernel.ptx and str(Path.home()) not in kernel.ptx and str(ROOT) not in kernel.ptx
    (tmp_path / "k.ptx").write_text(kernel.ptx)
    result = assemble(tmp_path / "k.ptx", arch, tmp_path / "k.cubin")
    assert result.returncode == 0, result.log
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_aot_compile_second_roi_align_variant(tmp_path):
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: triton cannot compile in this process")
    from pfpn.plugins import triton_kernels as tk
    from pfpn.runtime.gpu.triton_aot import assemble

    kernel = tk.compile_kernel("roi_align_kernel", 87, _production_constexprs("roi_align_kernel/sampling2"))
    (tmp_path / "k.ptx").write_text(kernel.ptx)
    assert assemble(tmp_path / "k.ptx", 87, tmp_path / "k.cubin").returncode == 0


def test_ptx_isa_choice():
    from pfpn.runtime.gpu.triton_aot import PtxError, nearest_target, ptx_isa_for

    assert ptx_isa_for(75) == 80 and ptx_isa_for(90) == 80
    assert ptx_isa_for(100) == 86 and ptx_isa_for(120) == 87
    assert ptx_isa_for(90, 85) == 85
    with pytest.raises(PtxError, match="needs PTX ISA >= 8.7"):
        ptx_isa_for(120, 80)
    with pytest.raises(PtxError, match="not a target"):
        ptx_isa_for(70)
    assert nearest_target(103) == 100 and nearest_target(121) == 120 and nearest_target(89) == 89
    with pytest.raises(PtxError, match="older than every target"):
        nearest_target(70)


def test_strip_hidden_params():
    from pfpn.runtime.gpu.triton_aot import PtxError, entry_param_names, ptx_isa_version, ptx_target, strip_hidden_params

    ptx = (".version 8.8\n.target sm_90a\n.address_size 64\n.visible .entry k(\n\t.param .u64 k_param_0,\n"
           "\t.param .u32 k_param_1,\n\t.param .u64 k_param_2,\n\t.param .u64 k_param_3\n)\n{\n"
           "\tld.param.b64 %rd1, [k_param_0];\n\tret;\n}\n")
    stripped = strip_hidden_params(ptx, "k", 2)
    assert entry_param_names(stripped, "k") == ["k_param_0", "k_param_1"]
    assert ptx_target(stripped) == "sm_90a" and ptx_isa_version(stripped) == "8.8"
    used = ptx.replace("ret;", "ld.param.b64 %rd2, [k_param_3];\n\tret;")
    with pytest.raises(PtxError, match="used by the kernel"):
        strip_hidden_params(used, "k", 2)
    with pytest.raises(PtxError, match="no .entry"):
        strip_hidden_params(ptx, "other", 2)


def test_launch_configuration_validation():
    from pfpn.plugins import triton_kernels as tk

    assert tk.nms_constexprs(0.5, 0.6, 100)["BLOCK_K"] == 128
    assert tk.nms_constexprs(0.5, 0.6, 3)["BLOCK_K"] == 16
    assert tk.roi_align_grid(0, 7, 7) == 1  # never an empty grid
    with pytest.raises(ValueError, match="exceeds"):
        tk.nms_constexprs(0.5, 0.6, tk.NMS_MAX_OUTPUT_BOXES + 1)
    with pytest.raises(ValueError, match="power of two"):
        tk.nms_constexprs(0.5, 0.6, 10, chunk=24)
    with pytest.raises(ValueError, match="positive"):
        tk.roi_align_constexprs(0, 7, 0, 4, 56.0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--interpret":
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: test_triton_kernels.py --interpret CASES.npz OUTPUTS.npz")
