"""RoI level assignment and the half-pixel RoIAlign convention on hand-built cases."""
import math

import torch

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
    # feature value = x coordinate of the cell centre in input pixels (stride 1): f[y, x] = x + 0.5
    # A box [0, 4] x [0, 4] pooled to 2x2 with one sample per bin samples at box coords 1 and 3,
    # i.e. halfway between cell centres 0.5/1.5 and 2.5/3.5 -> values 1.0 and 3.0.
    w = 8
    feat = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, 1, w).expand(1, 1, w, w).contiguous()
    from torchvision.ops import roi_align

    out = roi_align(feat, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]), 2, 1.0, 1, aligned=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 3.0], [1.0, 3.0]]))


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
