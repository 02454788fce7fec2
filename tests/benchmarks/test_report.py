"""The report's targets table, computed from hand-made results files: every measured number in a
row equals the one computed by hand here, and a met and a missed target each say so (a missed one
by how much)."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pfpn.benchmarks.report import write_report


def _fps_row(name, median, network, post, **extra):
    return {"backend": name, "status": "ok", "median_ms": median, "network_ms": network, "postprocess_ms": post,
            "preprocess_ms": 1.0, "p90_ms": median, "fps": 1000 / median, "file_mb": 1.0, "reason": "", **extra}


def _write(tmp_path, r50_rows, pq_rows=None):
    bench = tmp_path / "bench"
    (bench / "r50").mkdir(parents=True)
    (bench / "r50" / "fps.json").write_text(json.dumps({"what": "R-50", "rows": r50_rows}))
    (bench / "r50" / "fps.md").write_text("# fps\n\n| table |\n")
    if pq_rows is not None:
        (bench / "tiny").mkdir(parents=True)
        (bench / "tiny" / "pq_parity.json").write_text(json.dumps({"what": "tiny", "rows": pq_rows}))
        (bench / "tiny" / "pq_parity.md").write_text("# pq\n\n| table |\n")
    return SimpleNamespace(report=tmp_path / "report", bench=bench, eval=tmp_path / "none.json",
                           tiny=tmp_path / "tiny", deploy=tmp_path / "deploy")


def targets_table(text: str) -> dict[str, list[str]]:
    """The rows of the report's targets table: first cell -> the other cells."""
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("target", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def numbers(cell: str) -> list[float]:
    """The numbers of a cell, not the digits in names (ort_fp32, int8)."""
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", cell)]


def test_targets_met_and_missed(tmp_path):
    rows = [_fps_row("pytorch", 6100, 5000, 900), _fps_row("ort_fp32", 2900, 2700, 47.3),
            _fps_row("ort_int8", 1300, 1150, 55.5, agreement={"ort_fp32": {"pq": 97.25, "pixels": 0.99125}}),
            _fps_row("openvino", 2800, 2650, 45, peak_pct=86.5, achieved_gops=173.0),
            {"backend": "openvino_int8", "status": "skipped", "reason": "OpenVINO is not installed"},
            {"backend": "trt_fp16", "status": "skipped", "reason": "no CUDA GPU found"}]
    rows[1].update(peak_pct=80.0, achieved_gops=160.0)
    pq = [{"backend": "ort_fp32", "status": "ok", "pq": 88.4}, {"backend": "ort_int8", "status": "ok", "pq": 87.65},
          {"backend": "openvino_int8", "status": "ok", "pq": 86.9}]
    paths = _write(tmp_path, rows, pq)
    text = Path(write_report(paths, {"train": 600.0, "fps": 42.4})).read_text()
    table = targets_table(text)

    # ort_fp32: 6100 / 2900 = 2.1034x >= 1.5x: met
    measured, met, why = table["ort_fp32 >= 1.5x PyTorch eager (R-50, 800x1333, 2 threads)"]
    assert numbers(measured) == [pytest.approx(2.10), 2900, 6100] and met == "yes" and why == ""
    # ort_int8 (the only int8 row that ran): 6100 / 1300 = 4.6923x < 5x: short by 5 / 4.6923 = 1.0656x
    measured, met, why = table["ort_int8 >= 5.0x PyTorch eager (R-50, 800x1333, 2 threads)"]
    assert numbers(measured) == [pytest.approx(4.69), 1300, 6100] and met == "NO"
    assert numbers(why)[:3] == [pytest.approx(1.07), 1150, 5000]  # short by, network ms of int8 and PyTorch
    # best float32 peak: openvino's 86.5 % (not ort_fp32's 80 %) >= 85 %
    measured, met, _ = table["best float32 backend >= 85% of the float32 GEMM peak (network time)"]
    assert measured.startswith("openvino ") and numbers(measured) == [86.5, 173] and met == "yes"
    # post-processing: ort_fp32 47.3 ms <= 50 (met), ort_int8 55.5 ms: over by 5.5 ms
    measured, met, why = table["post-processing <= 50 ms (random-weight R-50, ort_fp32 outputs)"]
    assert numbers(measured) == [47.3] and met == "yes" and why == ""
    measured, met, why = table["post-processing <= 50 ms (random-weight R-50, ort_int8 outputs)"]
    assert numbers(measured) == [55.5] and met == "NO" and numbers(why) == [pytest.approx(5.5)]
    # int8 post-processing share: 55.5 / 1300 = 4.27 % <= 5 %
    measured, met, _ = table["post-processing <= 5% of int8 end to end (R-50)"]
    assert numbers(measured) == [pytest.approx(4.3), 56, 1300] and met == "yes"  # 55.5 printed as %.0f: 56
    measured, met, _ = table["ort_int8 vs ort_fp32 on the R-50 images (reported)"]
    assert numbers(measured) == [97.25, pytest.approx(99.12, abs=0.006)] and met == "-"
    # PQ drops: 88.40 - 87.65 = 0.75 <= 1 (met); 88.40 - 86.90 = 1.50 (missed)
    measured, met, _ = table["ort_int8 PQ drop <= 1.0 (synthetic val, trained small model)"]
    assert numbers(measured) == [pytest.approx(0.75), 88.4, 87.65] and met == "yes"
    measured, met, _ = table["openvino_int8 PQ drop <= 1.0 (synthetic val, trained small model)"]
    assert numbers(measured) == [pytest.approx(1.5), 88.4, 86.9] and met == "NO"
    assert len(table) == 9
    steps = text.split("## Step times", 1)[1]
    assert "| train | 600 |" in steps and "| fps | 42 |" in steps and "| total | 642 |" in steps  # 600 + 42.4


def test_the_faster_int8_backend_is_held_to_the_int8_target(tmp_path):
    rows = [_fps_row("pytorch", 6000, 5000, 900), _fps_row("ort_fp32", 4800, 4600, 45, peak_pct=80.0,
                                                           achieved_gops=160.0),
            _fps_row("ort_int8", 2000, 1900, 40), _fps_row("openvino_int8", 1100, 930, 40)]
    text = Path(write_report(_write(tmp_path, rows), {})).read_text()
    table = targets_table(text)
    # openvino_int8: 6000 / 1100 = 5.4545x >= 5x; ort_int8 (slower) is not held to it
    measured, met, _ = table["openvino_int8 >= 5.0x PyTorch eager (R-50, 800x1333, 2 threads)"]
    assert numbers(measured) == [pytest.approx(5.45), 1100, 6000] and met == "yes"
    assert not any(key.startswith("ort_int8 >=") for key in table)
    # ort_fp32: 6000 / 4800 = 1.25x < 1.5x: short by 1.5 / 1.25 = 1.20x
    measured, met, why = table["ort_fp32 >= 1.5x PyTorch eager (R-50, 800x1333, 2 threads)"]
    assert numbers(measured) == [pytest.approx(1.25), 4800, 6000] and met == "NO"
    assert numbers(why)[:5] == [pytest.approx(1.2), 4600, 5000, 45, 900]
    # the only float row with a peak: 80 % < 85 %: short by 5.0 points
    measured, met, why = table["best float32 backend >= 85% of the float32 GEMM peak (network time)"]
    assert numbers(measured) == [80.0, 160] and met == "NO" and numbers(why) == [5.0]
    # the share is openvino_int8's: 40 / 1100 = 3.64 %
    measured, met, _ = table["post-processing <= 5% of int8 end to end (R-50)"]
    assert numbers(measured) == [pytest.approx(3.6), 40, 1100] and met == "yes"
    assert "## Step times" not in text


def test_targets_not_measured_say_why(tmp_path):
    rows = [_fps_row("pytorch", 6000, 5000, 900),
            {"backend": "ort_fp32", "status": "failed", "reason": "RuntimeError: export (ort) failed"}]
    table = targets_table(Path(write_report(_write(tmp_path, rows), {})).read_text())
    measured, met, why = table["ort_fp32 >= 1.5x PyTorch eager (R-50, 800x1333, 2 threads)"]
    assert (measured, met, why) == ("not measured", "-", "RuntimeError: export (ort) failed")
    assert table["ort_int8 >= 5.0x PyTorch eager (R-50, 800x1333, 2 threads)"][:2] == ["not measured", "-"]
