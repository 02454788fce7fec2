"""The parity bookkeeping: matching by IoU (not by index), thresholds, edge rows."""
import torch

from pfpn.export.verify import ImageParity, format_parity, match_detections, passed


def test_matching_ignores_order_and_requires_same_label():
    a = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    la = torch.tensor([0, 1, 2])
    b = torch.tensor([[20.0, 20, 30, 31], [0, 0, 10, 10]])
    lb = torch.tensor([1, 0])
    pairs = match_detections(a, la, b, lb)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]  # a[2] has label 2: unmatched
    iou = {(i, j): v for i, j, v in pairs}
    assert iou[(0, 1)] == 1.0 and abs(iou[(1, 0)] - 100 / 110) < 1e-9


def _row(**kw):
    base = dict(name="x", size=(10, 10), num_torch=2, num_onnx=2, num_matched=2, min_iou=1.0, max_score_diff=0.0,
                mask_mad=0.0, semantic_rel_err=0.0, panoptic_agreement=1.0)
    return ImageParity(**{**base, **kw})


def test_thresholds_and_edge_rows():
    assert _row().ok
    assert not _row(min_iou=0.98).ok and not _row(max_score_diff=2e-4).ok and not _row(num_onnx=3).ok
    assert not _row(panoptic_agreement=0.998).ok and not _row(semantic_rel_err=1e-3).ok
    edge = _row(min_iou=0.95, borderline="float64 PyTorch agrees")
    assert not edge.ok and passed([_row(), edge]) and not passed([_row(), _row(min_iou=0.5)])
    text = format_parity([_row(), edge])
    assert "1/2 images within thresholds" in text and "edge: float64 PyTorch agrees" in text
