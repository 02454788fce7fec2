"""The ``mmcv._ext`` stand-in: its NMS against a literal, element-by-element transcription of
mmcv 2.1.0's ``nms_cpu`` loop, its RoIAlign against ``plugins/reference.py``, its use through
mmcv-lite's own Python wrappers, and -- where a compiled mmcv 2.1.0 is present
(``MMCV_FULL_PYTHON``: a Python that imports it) -- bitwise against the compiled operators."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pfpn.plugins.reference import roi_align_single
from tests.reference import mmcv_ext_standin as standin
from tests.reference.reference_env import ensure_installed, reference_environment

HERE = Path(__file__).resolve().parent


def literal_nms_cpu(boxes: np.ndarray, order: np.ndarray, iou_threshold: float, offset: int) -> list[int]:
    """mmcv 2.1.0 ``nms_cpu`` line by line on float32 scalars, visiting boxes in ``order``."""
    f = np.float32
    x1, y1, x2, y2 = (boxes[:, k].astype(f) for k in range(4))
    areas = [f(f(x2[i] - x1[i] + f(offset)) * f(y2[i] - y1[i] + f(offset))) for i in range(len(boxes))]
    thr = f(iou_threshold)
    select = [True] * len(boxes)
    for _i in range(len(boxes)):
        if not select[_i]:
            continue
        i = order[_i]
        for _j in range(_i + 1, len(boxes)):
            if not select[_j]:
                continue
            j = order[_j]
            xx1 = x1[j] if x1[i] < x1[j] else x1[i]
            yy1 = y1[j] if y1[i] < y1[j] else y1[i]
            xx2 = x2[j] if x2[j] < x2[i] else x2[i]
            yy2 = y2[j] if y2[j] < y2[i] else y2[i]
            dw, dh = f(f(xx2 - xx1) + f(offset)), f(f(yy2 - yy1) + f(offset))
            w = dw if f(0) < dw else f(0)
            h = dh if f(0) < dh else f(0)
            inter = f(w * h)
            ovr = f(inter / f(f(areas[i] + areas[j]) - inter))
            if ovr > thr:
                select[_j] = False
    return [int(order[k]) for k in range(len(boxes)) if select[k]]


def boxes_and_scores(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 1
    if kind == "ties":  # few distinct scores and many repeated boxes: the tie order decides
        scores = torch.randint(0, 4, (n,), generator=g).float() / 4
        xy[n // 2:] = xy[: n - n // 2]
        wh[n // 2:] = wh[: n - n // 2]
    else:
        scores = torch.rand(n, generator=g)
    return torch.cat([xy, xy + wh], 1), scores


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_nms_matches_the_literal_loop(kind, offset, threshold):
    boxes, scores = boxes_and_scores(kind, 300, seed=offset * 10 + int(threshold * 10))
    keep = standin.nms(boxes, scores, iou_threshold=threshold, offset=offset)
    order = scores.sort(0, descending=True)[1].numpy()  # nms_cpu's own call: ATen's default sort
    expected = literal_nms_cpu(boxes.numpy(), order, threshold, offset)
    assert keep.dtype == torch.int64
    assert keep.tolist() == expected
    assert 0 < len(expected) < 300


def test_nms_empty_and_single():
    assert standin.nms(torch.zeros(0, 4), torch.zeros(0), iou_threshold=0.5, offset=0).tolist() == []
    assert standin.nms(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.3]), iou_threshold=0.5, offset=0).tolist() == [0]


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_the_reference(sampling_ratio):
    g = torch.Generator().manual_seed(sampling_ratio)
    feat = torch.randn(2, 3, 24, 30, generator=g)
    rois = torch.tensor([[0, 4.0, 6.0, 60.0, 50.0],  # inside
                         [1, -10.0, -8.0, 30.0, 20.0],  # partly outside
                         [0, 100.0, 80.0, 125.0, 100.0],  # at the far border
                         [1, 33.0, 33.0, 33.0, 33.0]])  # zero size
    out = torch.zeros(4, 3, 7, 7)
    standin.roi_align_forward(feat, rois, out, torch.zeros(0), torch.zeros(0), aligned_height=7, aligned_width=7,
                              spatial_scale=0.25, sampling_ratio=sampling_ratio, pool_mode=1, aligned=True)
    for k, roi in enumerate(rois.numpy()):
        expected = roi_align_single(feat[int(roi[0])].numpy(), roi[1:], scale=0.25, output_size=(7, 7),
                                    sampling_ratio=sampling_ratio)
        np.testing.assert_allclose(out[k].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_roi_align_edge_cases():
    feat = torch.randn(1, 2, 8, 8)
    out = torch.full((0, 2, 7, 7), 5.0)
    standin.roi_align_forward(feat, torch.zeros(0, 5), out, torch.zeros(0), torch.zeros(0), aligned_height=7,
                              aligned_width=7, spatial_scale=1.0, sampling_ratio=0, pool_mode=1, aligned=True)
    with pytest.raises(RuntimeError, match="non-negative size"):
        standin.roi_align_forward(feat, torch.tensor([[0, 5.0, 5.0, 2.0, 6.0]]), torch.zeros(1, 2, 7, 7),
                                  torch.zeros(0), torch.zeros(0), aligned_height=7, aligned_width=7, spatial_scale=1.0,
                                  sampling_ratio=0, pool_mode=1, aligned=True)
    with pytest.raises(NotImplementedError, match="pool_mode=1"):
        standin.roi_align_forward(feat, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]]), torch.zeros(1, 2, 7, 7),
                                  torch.zeros(1, 2, 7, 7), torch.zeros(1, 2, 7, 7), aligned_height=7, aligned_width=7,
                                  spatial_scale=1.0, sampling_ratio=0, pool_mode=0, aligned=True)


def test_through_mmcv_lite_wrappers():
    """mmcv-lite's own mmcv.ops.nms / batched_nms / RoIAlign run on the stand-in; other ops say
    that they are not supplied."""
    site = ensure_installed()
    code = textwrap.dedent("""
        import torch, mmcv_ext_standin
        mmcv_ext_standin.install()
        from mmcv.ops import RoIAlign, batched_nms, nms, sigmoid_focal_loss
        boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
        scores = torch.tensor([0.9, 0.8, 0.7])
        dets, keep = nms(boxes, scores, 0.5)
        assert keep.tolist() == [0, 2], keep
        dets, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))
        assert keep.tolist() == [0, 1, 2], keep
        out = RoIAlign(7, 0.5, 0, aligned=True)(torch.ones(1, 4, 16, 16), torch.tensor([[0., 2, 2, 20, 20]]))
        assert out.shape == (1, 4, 7, 7) and torch.allclose(out, torch.ones_like(out))
        try:
            sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2.0, 0.25)
        except NotImplementedError as e:
            assert "not supplied" in str(e), e
        else:
            raise AssertionError("an op the stand-in lacks ran")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=reference_environment(site))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-3000:]


COMPILED_MMCV_PYTHON = os.environ.get("MMCV_FULL_PYTHON", "")


@pytest.mark.skipif(not COMPILED_MMCV_PYTHON, reason="no compiled mmcv 2.1.0 here (set MMCV_FULL_PYTHON to a Python "
                                                     "that imports one, e.g. a source build with MMCV_WITH_OPS=1)")
def test_bitwise_against_compiled_mmcv():
    """Op by op, the stand-in against mmcv 2.1.0's compiled CPU kernels: identical bits."""
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(HERE)!r})
        import mmcv
        assert mmcv.__version__ == "2.1.0", mmcv.__version__
        from mmcv import _ext as compiled
        import mmcv_ext_standin as standin
        for seed in range(6):
            g = torch.Generator().manual_seed(seed)
            n = 500
            xy = torch.rand(n, 2, generator=g) * 300
            boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 90 + 1], 1)
            scores = torch.rand(n, generator=g) if seed % 2 else (torch.randint(0, 3, (n,), generator=g) / 3.0)
            for thr in (0.5, 0.7):
                for offset in (0, 1):
                    a = compiled.nms(boxes, scores, iou_threshold=thr, offset=offset)
                    b = standin.nms(boxes, scores, iou_threshold=thr, offset=offset)
                    assert torch.equal(a, b), (seed, thr, offset)
            feat = torch.randn(2, 16, 50, 70, generator=g)
            rois = torch.cat([torch.randint(0, 2, (64, 1), generator=g).float(), boxes[:64] * 0.9], 1)
            for ratio in (0, 2):
                for scale in (0.25, 0.125):
                    a = torch.zeros(64, 16, 7, 7); b = torch.zeros(64, 16, 7, 7); e = torch.zeros(0)
                    kw = dict(aligned_height=7, aligned_width=7, spatial_scale=scale, sampling_ratio=ratio,
                              pool_mode=1, aligned=True)
                    compiled.roi_align_forward(feat, rois, a, e, e, **kw)
                    standin.roi_align_forward(feat, rois, b, e, e, **kw)
                    assert torch.equal(a, b), (seed, ratio, scale)
        print("bitwise identical")
    """)
    proc = subprocess.run([COMPILED_MMCV_PYTHON, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "bitwise identical" in proc.stdout, proc.stdout + proc.stderr[-3000:]
