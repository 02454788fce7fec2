"""benchmarks/throughput.py on the small model: configurations in fresh worker processes, images
counted once, rates and memory reported, bad layouts refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pfpn.benchmarks.throughput import parse_layouts

ROOT = Path(__file__).resolve().parents[2]


def test_parse_layouts():
    assert parse_layouts("1x2, 2x1") == [(1, 2), (2, 1)]
    for bad in ("2", "0x2", "ax1"):
        with pytest.raises(ValueError, match="layout"):
            parse_layouts(bad)


@pytest.mark.slow
def test_throughput_smoke(tiny_checkpoint, synthetic_root, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--ckpt", str(tiny_checkpoint),
                           "--images", str(synthetic_root / "val2017"), "--count", "3", "--backends", "ort_fp32",
                           "--batch-sizes", "1,2", "--layouts", "2x1", "--threads", "1", "--calib-count", "1",
                           "--workdir", str(tmp_path / "deploy"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out" / "throughput.json").read_text())
    configs = [(r["batch_size"], r["processes"], r["threads"]) for r in data["rows"]]
    assert configs == [(1, 1, 1), (2, 1, 1), (1, 2, 1)]
    for r in data["rows"]:
        assert r["images"] == 3  # the workers share the images: each is run once
        assert abs(r["images_per_s"] - r["images"] / r["seconds"]) < 1e-9 * r["images_per_s"]
        assert r["peak_rss_mb"] > 50 and r["total_rss_mb"] >= r["peak_rss_mb"]
    two = data["rows"][2]
    assert two["total_rss_mb"] >= 1.5 * two["peak_rss_mb"]  # two processes, each with its own model
    assert data["provenance"]["commit"] and "| ort_fp32 | 2 | 1x1 |" in (tmp_path / "out" / "throughput.md").read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--ckpt", str(tiny_checkpoint),
                          "--layouts", "two"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "layout 'two'" in bad.stderr
