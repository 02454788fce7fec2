"""The model's RoI level assignment and half-pixel multi-level RoIAlign (training/model/roi_align.py)
on hand-built cases and against the numpy reference."""
import math

import numpy as np
import torch

from pfpn.plugins import reference

from pfpn.training.model.roi_align import boxes_to_rois, multilevel_roi_align, roi_levels


def _rois(sides):
    return torch.tensor([[0.0, 0.0, 0.0, s, s] for s in sides])


def test_roi_levels_hand_computed():
    # level = floor(log2(side / 56 + 1e-6)), clamped to 0..3
    sides = [10, 55.9, 56, 111.9, 112, 224, 447, 448, 2000]
    assert roi_levels(_rois(sides), 4).tolist() == [0, 0, 0, 0, 1, 2, 2, 3, 3]
    # rectangles use sqrt(w * h): 56 x 224 -> sqrt = 112 -> level 1
    assert roi_levels(torch.tensor([[0.0, 0.0, 0.0, 56.0, 224.0]]), 4).tolist() == [1]
    for side in sides:
        expected = min(max(math.floor(math.log2(side / 56 + 1e-6)), 0), 3)
        assert roi_levels(_rois([side]), 4).tolist() == [expected]


def test_half_pixel_convention():
    """The model's multilevel_roi_align on hand-computed values, and on the numpy reference of
    plugins/reference.py for random boxes on every level.

    P2 cell x holds its centre's pixel coordinate, f[y, x] = (x + 0.5) * 4. The box [0, 16] maps to
    feature coordinates [0 / 4 - 0.5, 16 / 4 - 0.5] = [-0.5, 3.5]; two bins of two adaptive samples
    sample feature x = 0, 1 | 2, 3 (the cell centres), reading 2, 6 | 10, 14: bin averages 4 and
    12. Without the half-pixel shift they would be 6 and 14."""
    w = 16
    ramp = ((torch.arange(w, dtype=torch.float32) + 0.5) * 4).view(1, 1, 1, w).expand(1, 1, w, w).contiguous()
    feats = [ramp] + [torch.zeros(1, 1, w // 2**i, w // 2**i) for i in range(1, 4)]
    out = multilevel_roi_align(feats, torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]]), output_size=2,
                               strides=[4, 8, 16, 32])
    torch.testing.assert_close(out[0, 0], torch.tensor([[4.0, 12.0], [4.0, 12.0]]))

    rng = np.random.default_rng(0)
    feats = [torch.from_numpy(rng.normal(size=(2, 3, 512 // s, 512 // s)).astype(np.float32)) for s in (4, 8, 16, 32)]
    xy = rng.uniform(-10, 300, (40, 2))
    wh = np.exp(rng.uniform(2, 6.5, (40, 1))) * rng.uniform(0.7, 1.4, (40, 2)) * (rng.random((40, 1)) > 0.1)  # some empty boxes
    rois = np.concatenate([rng.integers(0, 2, (40, 1)), xy, xy + wh], 1).astype(np.float32)
    got = multilevel_roi_align(feats, torch.from_numpy(rois), output_size=7, strides=[4, 8, 16, 32])
    expected = reference.multilevel_roi_align(rois, [f.numpy() for f in feats], output_size=(7, 7))
    assert len(set(reference.roi_levels(rois, 4, 56.0).tolist())) == 4  # every level is exercised
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_uses_each_rois_level():
    # four levels of a 1024 px input with constant maps 0, 1, 2, 3: the pooled value tells the level
    feats = [torch.full((1, 2, 1024 // s, 1024 // s), float(i)) for i, s in enumerate([4, 8, 16, 32])]
    rois = boxes_to_rois([torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 120.0, 120.0],
                                        [0.0, 0.0, 250.0, 250.0], [0.0, 0.0, 500.0, 500.0]])])
    out = multilevel_roi_align(feats, rois, output_size=2, strides=[4, 8, 16, 32])
    assert out.shape == (4, 2, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_multilevel_roi_align_empty():
    feats = [torch.zeros(1, 3, 8, 8)] * 4
    assert multilevel_roi_align(feats, torch.zeros(0, 5), output_size=7, strides=[4, 8, 16, 32]).shape == (0, 3, 7, 7)
