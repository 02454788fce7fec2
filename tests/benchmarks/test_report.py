"""The report states every target with the measured value, and says by how much and why when
a target is missed."""
import json
from pathlib import Path
from types import SimpleNamespace

from pfpn.benchmarks.report import write_report


def _fps_row(name, median, network, post):
    return {"backend": name, "status": "ok", "median_ms": median, "network_ms": network, "postprocess_ms": post,
            "preprocess_ms": 1.0, "p90_ms": median, "fps": 1000 / median, "file_mb": 1.0, "reason": ""}


def test_targets_met_and_missed(tmp_path):
    bench = tmp_path / "bench"
    for sub in ("r50", "tiny"):
        (bench / sub).mkdir(parents=True)
    rows = [_fps_row("pytorch", 6000, 5000, 900), _fps_row("ort_fp32", 3000, 2900, 45),
            _fps_row("ort_int8", 2000, 1900, 90), _fps_row("openvino", 2800, 2700, 45),
            {"backend": "trt_fp16", "status": "skipped", "reason": "no CUDA GPU found"}]
    rows[1].update(peak_pct=80.0, achieved_gops=160.0)
    rows[3].update(peak_pct=86.5, achieved_gops=173.0)
    rows[2]["agreement"] = {"ort_fp32": {"pq": 97.25, "pixels": 0.99125}}
    (bench / "r50" / "fps.json").write_text(json.dumps({"what": "R-50", "rows": rows}))
    (bench / "r50" / "fps.md").write_text("# fps\n\n| table |\n")
    (bench / "tiny" / "pq_parity.json").write_text(json.dumps({"what": "tiny", "rows": [
        {"backend": "ort_fp32", "status": "ok", "pq": 88.4}, {"backend": "ort_int8", "status": "ok", "pq": 86.9},
        {"backend": "openvino_int8", "status": "skipped", "reason": "OpenVINO is not installed"}]}))
    (bench / "tiny" / "pq_parity.md").write_text("# pq\n\n| table |\n")
    paths = SimpleNamespace(report=tmp_path / "report", bench=bench, eval=tmp_path / "none.json",
                            tiny=tmp_path / "tiny", deploy=tmp_path / "deploy")
    text = Path(write_report(paths, {"train": 600.0})).read_text()
    assert "| ort_fp32 >= 1.5x PyTorch eager" in text and "2.00x (3000 vs 6000 ms) | yes" in text
    assert "3.00x (2000 vs 6000 ms) | NO | short by 1.67x" in text  # 5x wanted
    assert "openvino 86.5% (173 GFLOP/s) | yes" in text  # the best float backend counts
    assert "(random-weight R-50, ort_fp32 outputs) | 45.0 ms | yes" in text
    assert "(random-weight R-50, ort_int8 outputs) | 90.0 ms | NO | over by 40.0 ms" in text
    assert "4.5% (90 of 2000 ms) | yes" in text  # post-processing share of int8
    assert "| ort_int8 vs ort_fp32 on the R-50 images (reported) | PQ 97.25, identical pixels 99.12%" in text
    assert "ort_int8 PQ drop <= 1.0" in text and "1.50 (88.40 -> 86.90) | NO" in text
    assert "| total | 600 |" in text


def test_the_faster_int8_backend_is_held_to_the_int8_target(tmp_path):
    bench = tmp_path / "bench"
    (bench / "r50").mkdir(parents=True)
    rows = [_fps_row("pytorch", 6000, 5000, 900), _fps_row("ort_fp32", 3000, 2900, 45),
            _fps_row("ort_int8", 2000, 1900, 40), _fps_row("openvino_int8", 1000, 930, 40)]
    (bench / "r50" / "fps.json").write_text(json.dumps({"what": "R-50", "rows": rows}))
    (bench / "r50" / "fps.md").write_text("# fps\n\n| table |\n")
    paths = SimpleNamespace(report=tmp_path / "report", bench=bench, eval=tmp_path / "none.json",
                            tiny=tmp_path / "tiny", deploy=tmp_path / "deploy")
    text = Path(write_report(paths, {})).read_text()
    assert "| openvino_int8 >= 5.0x PyTorch eager (R-50, 800x1333, 2 threads) | 6.00x (1000 vs 6000 ms) | yes" in text
    assert "| ort_int8 >= 5.0x" not in text
    assert "4.0% (40 of 1000 ms) | yes" in text
