"""Anchors, box coding, IoU and NMS on hand-computed values."""
import math

import pytest
import torch

from pfpn.training.model.anchors import base_anchors, grid_anchors
from pfpn.training.model.box_ops import (DELTA_WH_CLAMP, apply_deltas, box_iou, clip_boxes, decode_boxes, encode_boxes,
                                         grouped_nms, nms)


def test_base_anchors_hand_computed():
    # stride 4, scale 8 -> side 32; ratio r = h / w: w = 32 / sqrt(r), h = 32 * sqrt(r); centre (0, 0)
    a = base_anchors(4, 8.0, (0.5, 1.0, 2.0))
    s = 32 * math.sqrt(0.5)  # 22.627
    l = 32 / math.sqrt(0.5)  # 45.255
    expected = torch.tensor([[-l / 2, -s / 2, l / 2, s / 2], [-16, -16, 16, 16], [-s / 2, -l / 2, s / 2, l / 2]])
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-4)


def test_grid_anchor_order_and_centres():
    # 2 rows x 3 cols at stride 16, 3 anchors: index = (y * W + x) * A + a, centre = (16x, 16y)
    anchors = grid_anchors((2, 3), 16, 8.0, (0.5, 1.0, 2.0))
    assert anchors.shape == (2 * 3 * 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for y in range(2):
        for x in range(3):
            for a in range(3):
                torch.testing.assert_close(centres[(y * 3 + x) * 3 + a], torch.tensor([16.0 * x, 16.0 * y]))
    # the square anchor of cell (1, 2): side 128 around (32, 16)
    torch.testing.assert_close(anchors[(1 * 3 + 2) * 3 + 1], torch.tensor([32 - 64.0, 16 - 64.0, 32 + 64.0, 16 + 64.0]))


def test_decode_hand_computed_and_clipped():
    # roi centre (5, 10), size 10 x 20; dx 0.1 -> +1, dy -0.2 -> -4, dw log 2 -> width 20, dh 0 -> 20
    roi = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    torch.testing.assert_close(decode_boxes(roi, deltas), torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))
    # clipped to (h, w) = (15, 12)
    torch.testing.assert_close(decode_boxes(roi, deltas, max_shape=(15, 12)), torch.tensor([[0.0, 0.0, 12.0, 15.0]]))
    # stds scale the deltas: 1.0 * 0.1 = 0.1 etc.
    torch.testing.assert_close(decode_boxes(roi, torch.tensor([[1.0, -2.0, math.log(2.0) / 0.2, 0.0]]),
                                            stds=(0.1, 0.1, 0.2, 0.2)),
                               torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))


def test_decode_clamps_log_sizes():
    roi = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    big = decode_boxes(roi, torch.tensor([[0.0, 0.0, 50.0, -50.0]]))
    w, h = big[0, 2] - big[0, 0], big[0, 3] - big[0, 1]
    assert DELTA_WH_CLAMP == pytest.approx(math.log(1000 / 16))
    assert float(w) == pytest.approx(2 * 1000 / 16, rel=1e-5)
    assert float(h) == pytest.approx(2 * 16 / 1000, rel=1e-4)


def test_decode_several_boxes_per_roi():
    roi = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.1, -0.2, math.log(2.0), 0.0]])
    out = decode_boxes(roi, deltas)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 10.0, 20.0, -4.0, -4.0, 16.0, 16.0]]))


def test_batched_decode_and_per_image_clipping():
    # what the export graph runs: (B, P, 1, 4) boxes broadcast against (B, P, K, 4) deltas, each
    # image clipped to its own (h, w)
    roi = torch.tensor([[[[0.0, 0.0, 10.0, 20.0]]], [[[0.0, 0.0, 10.0, 20.0]]]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, -0.2, math.log(2.0), 0.0]]).expand(2, 1, 2, 4)
    boxes = apply_deltas(roi, deltas)
    assert boxes.shape == (2, 1, 2, 4)
    torch.testing.assert_close(boxes[1, 0], torch.tensor([[0.0, 0.0, 10.0, 20.0], [-4.0, -4.0, 16.0, 16.0]]))
    clipped = clip_boxes(boxes, torch.tensor([[15.0, 12.0], [100.0, 8.0]]))
    torch.testing.assert_close(clipped[0, 0], torch.tensor([[0.0, 0.0, 10.0, 15.0], [0.0, 0.0, 12.0, 15.0]]))
    torch.testing.assert_close(clipped[1, 0], torch.tensor([[0.0, 0.0, 8.0, 20.0], [0.0, 0.0, 8.0, 16.0]]))


def test_encode_inverts_decode():
    roi = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[-4.0, -4.0, 16.0, 16.0]])
    torch.testing.assert_close(encode_boxes(roi, gt), torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]]))
    torch.testing.assert_close(encode_boxes(roi, gt, stds=(0.1, 0.1, 0.2, 0.2)),
                               torch.tensor([[1.0, -2.0, math.log(2.0) / 0.2, 0.0]]))


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))


def _greedy_nms(boxes, scores, thr):
    """Independent reference: visit boxes in the default (unstable) descending sort order."""
    order = scores.sort(descending=True)[1].tolist()
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        for j in order:
            if j not in removed and j != i and j not in keep:
                if float(box_iou(boxes[i:i + 1], boxes[j:j + 1])) > thr:
                    removed.add(j)
    return keep


def test_nms_hand_built():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) first; box 0 IoU with it 0.5 -> kept at 0.5 (not >), box 1 IoU with box 0 = 90/110 -> removed
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    # at 0.4: box 0 (IoU 0.5 with box 3) is removed; box 1: IoU with box 3 = 45 / 105 = 0.43 -> removed
    assert nms(boxes, scores, 0.4).tolist() == [3, 2]


def test_nms_tie_order_matches_reference_greedy():
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 40, (300, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(5, 20, (300, 2), generator=g).float()], 1)
    scores = torch.randint(0, 4, (300,), generator=g).float() / 4  # heavy ties
    assert nms(boxes, scores, 0.5).tolist() == _greedy_nms(boxes, scores, 0.5)


def test_grouped_nms_groups_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    groups = torch.tensor([0, 1, 0])
    assert grouped_nms(boxes, scores, groups, 0.5).tolist() == [1, 2]


def test_nms_empty():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
