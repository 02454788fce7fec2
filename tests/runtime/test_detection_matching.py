"""The one detection matcher (runtime/detection_matching.py): by IoU, not by index, same label only."""
import numpy as np
import torch

from pfpn.runtime.detection_matching import box_iou_matrix, match_detections


def test_matching_ignores_order_and_requires_same_label():
    a = np.array([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    b = np.array([[20.0, 20, 30, 31], [0, 0, 10, 10]])
    pairs = match_detections(a, [0, 1, 2], b, [1, 0])
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]  # a[2] has label 2: unmatched
    iou = {(i, j): v for i, j, v in pairs}
    assert iou[(0, 1)] == 1.0 and abs(iou[(1, 0)] - 100 / 110) < 1e-12
    # CPU tensors work as they are (export verification passes the PyTorch detections)
    assert match_detections(torch.from_numpy(a), torch.tensor([0, 1, 2]), torch.from_numpy(b),
                            torch.tensor([1, 0])) == pairs


def test_greedy_best_first_threshold_and_empty():
    # a[0] overlaps b[0] (IoU 0.5) and b[1] (IoU 1); the best pair goes first, then a[1] takes b[0]
    a = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10]])
    b = np.array([[5.0, 0, 15, 10], [0, 0, 10, 10]])
    assert match_detections(a, [0, 0], b, [0, 0]) == [(0, 1, 1.0), (1, 0, 1.0)]
    shifted = a + np.array([5.0, 0, 5, 0])  # IoU 1/3 with the originals
    np.testing.assert_allclose(box_iou_matrix(a[:1], shifted[:1]), [[50 / 150]])
    assert match_detections(a[:1], [0], shifted[:1], [0], iou_threshold=0.5) == []
    assert match_detections(a[:0], [], b, [0, 0]) == [] and match_detections(a, [0, 0], b[:0], []) == []
    # degenerate boxes: zero area, empty union -> IoU 0, never matched
    point = np.array([[3.0, 3, 3, 3]])
    assert box_iou_matrix(point, point)[0, 0] == 0.0 and match_detections(point, [0], point, [0]) == []
