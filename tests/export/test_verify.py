"""The parity bookkeeping: thresholds, edge rows (the IoU matching: tests/runtime/test_detection_matching.py)."""
from pfpn.export.verify import ImageParity, format_parity, passed


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
