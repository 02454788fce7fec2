"""export/graph.py: running the mask head on the detected rows only (the ort flavor) gives the
same outputs as running it on all max_detections rows (the trt flavor), for a batch whose
images keep different numbers of detections, down to none; and the ort export really is
data-dependent there; the exported RPN stage against an independent numpy version of REFERENCE §3.4-§3.5's
anchor and box-decoding rule."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pfpn.export.graph import ExportablePanopticFPN
from pfpn.plugins.torch_ops import export_flavor
from pfpn.training.config import ProposalConfig, tiny_synthetic
from pfpn.training.data.synthetic import make_synthetic_sample
from pfpn.training.model.panoptic_fpn import build_model
from pfpn.training.random_checkpoint import make_firing


def _inputs():
    images = [make_synthetic_sample(np.random.default_rng(i), 192, 256)[0] for i in range(3)]
    return torch.from_numpy(np.stack(images)), torch.tensor([[192, 256], [192, 256], [160, 224]])


@pytest.mark.parametrize("score_threshold", [0.6, 0.645, 0.99])
def test_mask_head_on_detections_only_changes_nothing(score_threshold):
    config = tiny_synthetic(4, 3).model
    config = dataclasses.replace(config, box_head=dataclasses.replace(config.box_head,
                                                                        score_threshold=score_threshold))
    torch.manual_seed(0)
    model = make_firing(build_model(config)).eval()
    images, sizes = _inputs()
    with torch.no_grad():
        full = ExportablePanopticFPN(model, config).eval()(images, sizes)
        rows = ExportablePanopticFPN(model, config, mask_head_on_detections_only=True).eval()(images, sizes)
    num = full[4]
    if score_threshold == 0.645:  # the case this is about: different counts within one batch
        assert len(set(num.tolist())) > 1 and num.max() < 100, num
    if score_threshold == 0.99:
        assert num.sum() == 0
    for name, a, b in zip(("boxes", "scores", "labels", "mask_probs", "num", "semantic"), full, rows):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=name)
    assert torch.count_nonzero(rows[3][0, num[0]:]) == 0  # padding rows stay zero


class _GivenOutputs(nn.Module):
    """An RPN head whose outputs are its inputs: level l's "feature map" is objectness (A channels)
    and deltas (4A channels) stacked."""

    def forward(self, feats):
        return [f[:, :3] for f in feats], [f[:, 3:] for f in feats]


class _ProposalsOnly(nn.Module):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, p2, p3, p4, p5, p6, image_hw):
        return self.graph.proposals([p2, p3, p4, p5, p6], image_hw)


def _numpy_proposals(feats: list[np.ndarray], image_hw: tuple[float, float]) -> np.ndarray:
    """REFERENCE §3.4-§3.6, written out independently: level l (stride s) has 3 anchors per cell centred at
    (x * s, y * s), side 8s, ratio h / w in (0.5, 1, 2), in (y, x, anchor) order; deltas decode
    with means 0, stds 1 and dw, dh clamped at log(1000 / 16); boxes are clipped to the image and
    empty ones dropped. No NMS (the test's IoU threshold is 1). -> (N, 4) float64."""
    out = []
    for f, s in zip(feats, (4, 8, 16, 32, 64)):
        _, _, h, w = f.shape
        for y in range(h):
            for x in range(w):
                for a, r in enumerate((0.5, 1.0, 2.0)):
                    aw, ah = 8 * s / np.sqrt(r), 8 * s * np.sqrt(r)
                    dx, dy, dw, dh = (float(f[0, 3 + 4 * a + i, y, x]) for i in range(4))
                    cx, cy = x * s + dx * aw, y * s + dy * ah
                    bw = aw * np.exp(np.clip(dw, -np.log(1000 / 16), np.log(1000 / 16)))
                    bh = ah * np.exp(np.clip(dh, -np.log(1000 / 16), np.log(1000 / 16)))
                    box = np.clip([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 0,
                                  [image_hw[1], image_hw[0], image_hw[1], image_hw[0]])
                    if box[2] > box[0] and box[3] > box[1]:
                        out.append(box)
    return np.array(out)


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def test_exported_proposals_follow_the_anchor_and_decoding_rule(tmp_path):
    """The ort-flavor ONNX of the graph's RPN stage, traced at one size and run at another, gives
    the proposals of an independent numpy implementation (anchors, decoding, clamp, clipping)."""
    config = tiny_synthetic(4, 3).model
    config = dataclasses.replace(config, rpn=dataclasses.replace(config.rpn, nms_iou_threshold=1.0,
                                                                 test_proposals=ProposalConfig(1000, 1000)))
    model = build_model(config).eval()
    model.rpn_head = _GivenOutputs()
    wrapper = _ProposalsOnly(ExportablePanopticFPN(model, config)).eval()

    def inputs(h, w, seed):
        rng = np.random.default_rng(seed)
        feats = []
        for s in (4, 8, 16, 32, 64):
            cells = (-(-h // s), -(-w // s))
            objectness = rng.permutation(3 * cells[0] * cells[1]).reshape(1, 3, *cells) / 10  # no ties
            deltas = rng.uniform(-0.6, 0.6, (1, 12, *cells))
            deltas[:, 2::4] -= 1.5  # narrower boxes than the anchors: fewer of them cover the whole image
            deltas[:, 2, :, :1] = 6.0  # dw beyond the clamp
            feats.append(np.concatenate([objectness, deltas], axis=1).astype(np.float32))
        return feats

    path = tmp_path / "proposals.onnx"
    traced = [torch.from_numpy(f) for f in inputs(64, 96, 0)] + [torch.tensor([[64.0, 96.0]])]
    with export_flavor("ort"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(traced), str(path), dynamo=False, opset_version=17,
                          input_names=[f"p{i}" for i in range(2, 7)] + ["image_hw"], output_names=["boxes", "valid"],
                          dynamic_axes={f"p{i}": {2: f"h{i}", 3: f"w{i}"} for i in range(2, 7)})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats = inputs(30, 27, 1)  # another size: 8x7, 4x4, 2x2, 1x1, 1x1 cells
    boxes, valid = session.run(None, {**{f"p{i}": f for i, f in zip(range(2, 7), feats)},
                                      "image_hw": np.float32([[30, 27]])})
    expected = _numpy_proposals(feats, (30.0, 27.0))
    assert 100 < len(expected) < 3 * (56 + 16 + 4 + 1 + 1)  # some boxes fall outside the image
    np.testing.assert_allclose(_sorted_rows(boxes[0][valid[0]].astype(np.float64)), _sorted_rows(expected),
                               rtol=1e-5, atol=1e-4)


def test_only_the_ort_flavor_runs_the_mask_head_on_the_detections(tiny_onnx, tiny_trt_onnx):
    ort_ops = {n.op_type for n in onnx.load(str(tiny_onnx)).graph.node}
    trt_ops = {n.op_type for n in onnx.load(str(tiny_trt_onnx)).graph.node}
    assert "ScatterElements" in ort_ops and "ScatterElements" not in trt_ops
