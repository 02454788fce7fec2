"""The report states every target with the measured value, and says by how much and why when
a target is missed."""
import json
from pathlib import Path
from types import SimpleNamespace

from benchmarks.report import write_report


def _fps_row(name, median, network, post):
    return {"backend": name, "status": "ok", "median_ms": median, "network_ms": network, "postprocess_ms": post,
            "preprocess_ms": 1.0, "p90_ms": median, "fps": 1000 / median, "file_mb": 1.0, "reason": ""}


def test_targets_met_and_missed(tmp_path):
    bench = tmp_path / "bench"
    for sub in ("r50", "tiny"):
        (bench / sub).mkdir(parents=True)
    rows = [_fps_row("pytorch", 6000, 5000, 900), _fps_row("ort_fp32", 3000, 2900, 90),
            _fps_row("ort_int8", 2000, 1900, 90),
            {"backend": "trt_fp16", "status": "skipped", "reason": "no CUDA GPU found"}]
    (bench / "r50" / "fps.json").write_text(json.dumps({"what": "R-50", "rows": rows}))
    (bench / "r50" / "fps.md").write_text("# fps\n\n| table |\n")
    (bench / "tiny" / "pq_parity.json").write_text(json.dumps({"what": "tiny", "rows": [
        {"backend": "ort_fp32", "status": "ok", "pq": 88.4}, {"backend": "ort_int8", "status": "ok", "pq": 86.9}]}))
    (bench / "tiny" / "pq_parity.md").write_text("# pq\n\n| table |\n")
    paths = SimpleNamespace(report=tmp_path / "report", bench=bench, eval=tmp_path / "none.json",
                            tiny=tmp_path / "tiny", deploy=tmp_path / "deploy")
    text = Path(write_report(paths, {"train": 600.0})).read_text()
    assert "| ort_fp32 >= 1.5x PyTorch eager" in text and "2.00x (3000 vs 6000 ms) | yes" in text
    assert "3.00x (2000 vs 6000 ms) | NO | short by 1.33x" in text  # 4x wanted
    assert "3.0% (90 of 3000 ms) | yes" in text  # post-processing share
    assert "int8 PQ drop <= 1.0" in text and "1.50 (88.40 -> 86.90) | NO" in text
    assert "| total | 600 |" in text
