"""export/graph.py: running the mask head on the detected rows only (the ort flavor) gives the
same outputs as running it on all max_detections rows (the trt flavor), for a batch whose
images keep different numbers of detections, down to none; and the ort export really is
data-dependent there."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from pfpn.export.graph import ExportablePanopticFPN
from pfpn.training.config import tiny_synthetic
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


def test_ort_flavor_is_data_dependent(tiny_onnx):
    graph = onnx.load(str(tiny_onnx)).graph
    ops = [n.op_type for n in graph.node]
    assert "ScatterElements" in ops and ops.count("ReduceMax") >= 1
