"""benchmarks/machine_limits.py: GEMM peaks in ONNX Runtime, FLOP counts against a hand count, the
load-change flag and % of peak."""
from __future__ import annotations

import pytest

from pfpn.benchmarks.machine_limits import GemmPeak, busier, gemm_peak, network_flops, percent_of_peak


def test_gemm_peaks_run_in_onnx_runtime():
    for kind in ("fp32", "int8"):
        peak = gemm_peak(kind, threads=1, size=128, repeats=2)
        assert peak.kind == kind and peak.size == 128 and peak.best_per_s >= peak.median_per_s > 0
    with pytest.raises(ValueError, match="unknown GEMM kind"):
        gemm_peak("fp64", threads=1, size=8)


def test_network_flops_counts_multiply_adds_twice():
    import torch
    from torch import nn

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.head = nn.Linear(8, 5, bias=False)

        def forward(self, images, image_sizes):
            x = self.backbone(images)  # 2 * 8 * 3 * 9 * 100 = 43,200
            return self.head(x.mean(dim=(2, 3)))  # 2 * 8 * 5 = 80

    flops = network_flops(Toy(), torch.zeros(1, 3, 10, 10), torch.tensor([[10, 10]]))
    assert flops["total"] == pytest.approx(43_280 / 1e9)
    assert flops["backbone"] == pytest.approx(43_200 / 1e9) and flops["head"] == pytest.approx(80 / 1e9)
    assert flops["roi_heads_and_other"] == pytest.approx(0.0, abs=1e-15)


def test_busier_and_percent_of_peak():
    before = GemmPeak("fp32", 1536, 2, best_per_s=200.0, median_per_s=190.0)
    assert busier(before, GemmPeak("fp32", 1536, 2, 180.0, 175.0)) is None  # 10 %: within 15 %
    warning = busier(before, GemmPeak("fp32", 1536, 2, 150.0, 140.0))
    assert warning and "25% slower" in warning and "200 -> 150" in warning
    assert "faster" in busier(before, GemmPeak("fp32", 1536, 2, 260.0, 250.0))
    achieved, pct = percent_of_peak(600.0, 4000.0, before)  # 600 GFLOP in 4 s on a 200 GFLOP/s machine
    assert achieved == pytest.approx(150.0) and pct == pytest.approx(75.0)
    assert percent_of_peak(None, 4000.0, before) == (None, None)
