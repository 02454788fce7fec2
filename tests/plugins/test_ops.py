"""Each custom op against its numpy reference: the PyTorch op, the ONNX Runtime lowering (ort
flavor) and the custom node run through onnxruntime-extensions (trt flavor); over random
shapes, empty inputs, boxes on borders, degenerate boxes and all four FPN levels."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import pfpn.plugins.torch_ops  # noqa: F401
from pfpn.plugins import reference
from pfpn.plugins.ort_ops import session_options
from pfpn.plugins.torch_ops import export_flavor

STRIDES = (4, 8, 16, 32)


# ----------------------------------------------------------------------------------------------
# helpers: one-op ONNX models of each flavor

class _RoIAlignOp(torch.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, rois, p2, p3, p4, p5):
        return torch.ops.pfpn.multilevel_roi_align(rois, p2, p3, p4, p5, self.size, 0, 56.0)


class _NMSOp(torch.nn.Module):
    def __init__(self, iou, thr, k, grouped):
        super().__init__()
        self.iou, self.thr, self.k, self.grouped = iou, thr, k, grouped

    def forward(self, boxes, scores, groups):
        return torch.ops.pfpn.batched_nms(boxes, scores, groups if self.grouped else None, self.iou, self.thr, self.k)


def _session(module, args, names, dynamic, flavor, tmp_path):
    path = tmp_path / f"{type(module).__name__}_{flavor}.onnx"
    with export_flavor(flavor), torch.no_grad():
        torch.onnx.export(module, args, path, dynamo=False, opset_version=17, input_names=names,
                          dynamic_axes=dynamic)
    onnx.checker.check_model(str(path), full_check=True)
    options = session_options() if flavor == "trt" else ort.SessionOptions()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feats(rng, batch, channels, height, width):
    return [rng.standard_normal((batch, channels, height // s, width // s)).astype(np.float32) for s in STRIDES]


def _rois(rng, k, batch, height, width):
    xy = rng.uniform(-30, max(height, width) + 10, (k, 2))
    wh = rng.uniform(0, max(height, width), (k, 2))
    r = np.concatenate([rng.integers(0, batch, (k, 1)), xy, xy + wh], 1).astype(np.float32)
    return r


def _edge_rois(batch, height, width):
    """On borders, degenerate (zero width / height / both), covering everything, one per level."""
    b = batch - 1
    return np.array([
        [0, 0, 0, width, height],              # whole image (level 3 at 1024 px)
        [b, 0, 0, 8, 8],                       # top-left corner
        [0, width - 8, height - 8, width, height],  # bottom-right corner
        [0, 10, 10, 10, 40],                   # zero width
        [b, 10, 10, 40, 10],                   # zero height
        [0, 20, 20, 20, 20],                   # a point
        [0, -50, -50, 300, 300],               # partly outside
        [0, 0, 0, 56, 56], [0, 0, 0, 112, 112], [0, 0, 0, 224, 224], [0, 0, 0, 448, 448],  # levels 0..3
    ], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# MultiLevelRoIAlign

def test_reference_level_rule_covers_all_levels():
    rois = _edge_rois(1, 1024, 1024)
    levels = reference.roi_levels(rois, 4)
    assert levels[-4:].tolist() == [0, 1, 2, 3]
    assert set(levels.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("seed,batch,channels,height,width,k,size", [
    (0, 1, 3, 64, 96, 40, 7), (1, 2, 5, 128, 64, 60, 14), (2, 2, 2, 96, 160, 1, 7), (3, 1, 4, 1024, 1024, 30, 7)])
def test_roi_align_torch_op_matches_reference(seed, batch, channels, height, width, k, size):
    rng = np.random.default_rng(seed)
    feats = _feats(rng, batch, channels, height, width)
    rois = np.concatenate([_rois(rng, k, batch, height, width), _edge_rois(batch, height, width)])
    ref = reference.multilevel_roi_align(rois, feats, output_size=(size, size))
    got = torch.ops.pfpn.multilevel_roi_align(torch.from_numpy(rois), *map(torch.from_numpy, feats), size, 0, 56.0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("flavor", ["ort", "trt"])
def test_roi_align_onnx_matches_reference(flavor, tmp_path):
    rng = np.random.default_rng(5)
    batch, channels, height, width = 2, 3, 256, 320
    feats = _feats(rng, batch, channels, height, width)
    module = _RoIAlignOp(7)
    names = ["rois", "p2", "p3", "p4", "p5"]
    dynamic = {"rois": {0: "k"}, **{n: {0: "b", 2: f"h{n}", 3: f"w{n}"} for n in names[1:]}}
    args = (torch.from_numpy(_rois(rng, 5, batch, height, width)), *map(torch.from_numpy, feats))
    sess = _session(module, args, names, dynamic, flavor, tmp_path)
    # run at another size, with another number of rois, edge cases included
    feats = _feats(rng, batch, channels, 192, 448)
    rois = np.concatenate([_rois(rng, 50, batch, 192, 448), _edge_rois(batch, 192, 448)])
    got = sess.run(None, dict(zip(names, [rois, *feats])))[0]
    ref = reference.multilevel_roi_align(rois, feats, output_size=(7, 7))
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)
    # no rois at all
    empty = sess.run(None, dict(zip(names, [np.zeros((0, 5), np.float32), *feats])))[0]
    assert empty.shape == (0, channels, 7, 7)


def test_half_pixel_convention_across_backends(tmp_path):
    """P2 cell x holds its centre's pixel coordinate: f[y, x] = (x + 0.5) * 4. A box [0, 16]
    maps to feature coordinates [0 / 4 - 0.5, 16 / 4 - 0.5] = [-0.5, 3.5]; two bins of two
    adaptive samples each sample at feature x = 0, 1 | 2, 3, exactly the cell centres, reading
    2, 6 | 10, 14 -> bin averages 4 and 12. (Without the half-pixel shift the samples would sit
    at 0.5, 1.5 | 2.5, 3.5 and give 6 and 14.) Same answer from PyTorch, the reference and ONNX
    Runtime."""
    w = 16
    ramp = ((np.arange(w, dtype=np.float32) + 0.5) * 4)[None, None, None, :].repeat(w, 2)
    feats = [ramp] + [np.zeros((1, 1, w // 2**i, w // 2**i), np.float32) for i in range(1, 4)]
    rois = np.array([[0, 0, 0, 16, 16]], np.float32)  # sqrt(area) 16 -> level 0
    expected = np.array([[4.0, 12.0], [4.0, 12.0]], np.float32)
    ref = reference.multilevel_roi_align(rois, feats, output_size=(2, 2))[0, 0]
    pt = torch.ops.pfpn.multilevel_roi_align(torch.from_numpy(rois), *map(torch.from_numpy, feats), 2, 0, 56.0)
    names = ["rois", "p2", "p3", "p4", "p5"]
    sess = _session(_RoIAlignOp(2), (torch.from_numpy(rois), *map(torch.from_numpy, feats)), names, {}, "ort",
                    tmp_path)
    onnx_out = sess.run(None, dict(zip(names, [rois, *feats])))[0][0, 0]
    for got in (ref, pt[0, 0].numpy(), onnx_out):
        np.testing.assert_allclose(got, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# BatchedNMS

def _nms_inputs(rng, batch, n, distinct=True):
    xy = rng.uniform(0, 200, (batch, n, 2)).astype(np.float32)
    wh = rng.uniform(0, 60, (batch, n, 2)).astype(np.float32)
    wh[:, ::17] = 0  # degenerate boxes
    boxes = np.concatenate([xy, xy + wh], -1)
    if distinct:
        scores = np.stack([rng.permutation(n) for _ in range(batch)]).astype(np.float32) / n
    else:
        scores = rng.integers(0, 5, (batch, n)).astype(np.float32) / 5
    groups = rng.integers(0, 5, (batch, n)).astype(np.int64)
    return boxes, scores, groups


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("seed,batch,n,k,thr", [(0, 1, 50, 10, 0.0), (1, 3, 300, 40, 0.3), (2, 2, 200, 500, -1.0)])
def test_nms_torch_op_matches_reference(grouped, seed, batch, n, k, thr):
    rng = np.random.default_rng(seed)
    boxes, scores, groups = _nms_inputs(rng, batch, n)
    g = groups if grouped else None
    ref_sel, ref_num = reference.batched_nms(boxes, scores, g, iou_threshold=0.5, score_threshold=thr,
                                             max_output_boxes=k)
    sel, num = torch.ops.pfpn.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                          None if g is None else torch.from_numpy(g), 0.5, thr, k)
    np.testing.assert_array_equal(sel.numpy(), ref_sel)
    np.testing.assert_array_equal(num.numpy(), ref_num)


def test_nms_reference_hand_built():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [5, 5, 5, 9]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.95]], np.float32)
    groups = np.array([[0, 0, 1, 0, 0]])
    sel, num = reference.batched_nms(boxes, scores, groups, iou_threshold=0.5, score_threshold=0.65,
                                     max_output_boxes=4)
    # 4 (degenerate, never suppresses), 0, 1 suppressed by 0 (IoU 90/110), 2 other group, 3 below threshold
    assert sel.tolist() == [[4, 0, 2, -1]] and num.tolist() == [3]
    sel, num = reference.batched_nms(boxes, scores, None, iou_threshold=0.5, score_threshold=0.0, max_output_boxes=2)
    assert sel.tolist() == [[4, 0]] and num.tolist() == [2]


@pytest.mark.parametrize("flavor", ["ort", "trt"])
@pytest.mark.parametrize("grouped", [True, False])
def test_nms_onnx_matches_reference(flavor, grouped, tmp_path):
    rng = np.random.default_rng(7)
    boxes, scores, groups = _nms_inputs(rng, 2, 40)
    module = _NMSOp(0.6, 0.1, 25, grouped)
    names = ["boxes", "scores", "groups"]
    dynamic = {"boxes": {0: "b", 1: "n"}, "scores": {0: "b", 1: "n"}, "groups": {0: "b", 1: "n"}}
    sess = _session(module, tuple(map(torch.from_numpy, (boxes, scores, groups))), names, dynamic, flavor, tmp_path)
    feeds = sess.get_inputs()
    for seed, batch, n in [(8, 3, 300), (9, 1, 1), (10, 2, 0)]:
        boxes, scores, groups = _nms_inputs(np.random.default_rng(seed), batch, n)
        feed = {i.name: v for i, v in zip(feeds, (boxes, scores, groups)) if i.name in names}
        sel, num = sess.run(None, feed)
        ref_sel, ref_num = reference.batched_nms(boxes, scores, groups if grouped else None, iou_threshold=0.6,
                                                 score_threshold=0.1, max_output_boxes=25)
        np.testing.assert_array_equal(num, ref_num)
        np.testing.assert_array_equal(sel, ref_sel)


def test_nms_with_ties_keeps_the_same_boxes_up_to_tie_order():
    """Equal scores: implementations may order ties differently; the kept *set* agrees whenever
    tied boxes do not overlap each other (here: grid boxes that never overlap)."""
    n = 64
    xy = np.stack(np.meshgrid(np.arange(8) * 20.0, np.arange(8) * 20.0), -1).reshape(1, n, 2).astype(np.float32)
    boxes = np.concatenate([xy, xy + 10], -1)
    scores = np.repeat(np.array([[0.5, 0.7]], np.float32), n // 2, axis=1)
    ref_sel, ref_num = reference.batched_nms(boxes, scores, None, iou_threshold=0.5, score_threshold=0.0,
                                             max_output_boxes=n)
    sel, num = torch.ops.pfpn.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), None, 0.5, 0.0, n)
    assert int(num[0]) == int(ref_num[0]) == n
    assert sorted(sel[0].tolist()) == sorted(ref_sel[0].tolist())
    # descending scores in both
    assert np.all(np.diff(scores[0][ref_sel[0]]) <= 0) and np.all(np.diff(scores[0][sel[0].numpy()]) <= 0)
