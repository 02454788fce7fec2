"""The README's machine-limit table says what its committed JSON says (benchmarks/results)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"PyTorch eager": "pytorch", "ONNX Runtime fp32": "ort_fp32", "ONNX Runtime int8": "ort_int8",
         "OpenVINO f32": "openvino", "OpenVINO int8": "openvino_int8"}


def _table_after(text: str, heading: str) -> list[list[str]]:
    rows, started = [], False
    for line in text[text.index(heading):].splitlines():
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    assert len(rows) > 2, heading
    return rows[2:]  # after the header and the separator


def test_machine_limit_table_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "benchmarks" / "results" / "fps_r50_limits.json").read_text())
    assert {"commit", "date", "cpu", "versions"} <= set(data["provenance"]) and data["command"]
    rows = {r["backend"]: r for r in data["rows"]}
    table = _table_after(readme, "**The machine's limit")
    assert [NAMES[cells[0]] for cells in table] == list(NAMES.values())
    for cells in table:
        r = rows[NAMES[cells[0]]]
        med, lo, hi = (float(v) for v in re.findall(r"[\d.]+", cells[1]))
        assert (med, lo, hi) == (round(r["median_ms"]), round(r["min_ms"]), round(r["max_ms"]))
        assert float(cells[2]) == round(r["network_ms"]) and float(cells[3]) == round(r["achieved_gops"])
        assert cells[4] == f"{round(r['peak_pct'])} % {r['peak_kind']}"
        assert float(cells[6]) == round(r["postprocess_ms"])
        if r["backend"] != "pytorch":
            ratios = data["speedup_per_round"][r["backend"]]
            assert cells[5] == f"{ratios['min']:.2f} / {ratios['median']:.2f} / {ratios['max']:.2f}x"
    peaks = data["gemm_peak_before"], data["gemm_peak_after"]
    assert f"float32 {peaks[0]['fp32']['best_per_s']:.0f} GFLOP/s" in readme
    assert f"u8 x s8 {peaks[0]['int8']['best_per_s']:.0f} / {peaks[1]['int8']['best_per_s']:.0f} GOP/s" in readme
    assert f"{data['network_gflop']['total']:.1f} GFLOP per image" in readme


def test_throughput_table_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "benchmarks" / "results" / "throughput_r50.json").read_text())
    assert {"commit", "date", "cpu", "versions"} <= set(data["provenance"]) and data["command"]
    table = _table_after(readme, "**Throughput**")
    assert len(table) == len(data["rows"])
    for cells, r in zip(table, data["rows"]):
        assert NAMES[cells[0]] == r["backend"] and int(cells[1]) == r["batch_size"]
        assert cells[2] == f"{r['processes']}x{r['threads']}" and cells[3] == f"{r['images_per_s']:.2f}"
        assert int(cells[4]) == round(r["peak_rss_mb"]) and int(cells[5]) == round(r["total_rss_mb"])


def test_mmdet_sentence_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "benchmarks" / "results" / "fps_r50_limits.json").read_text())  # the same run
    rows = {r["backend"]: r for r in data["rows"]}
    assert rows["mmdet"]["status"] == "ok" and data["provenance"]["commit"]
    assert (f"it took {rows['mmdet']['median_ms']:.0f} ms per image against our PyTorch predictor's "
            f"{rows['pytorch']['median_ms']:.0f} ms and ONNX Runtime int8's {rows['ort_int8']['median_ms']:.0f} ms"
            in " ".join(readme.split()))


def test_repeat_table_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "benchmarks" / "results" / "fps_r50_repeats.json").read_text())
    limits = json.loads((ROOT / "benchmarks" / "results" / "fps_r50_limits.json").read_text())
    assert data["runs"] == 3 and data["all_stable"] and data["tolerance_pct"] == 10.0
    assert data["commits"] == [limits["provenance"]["commit"]]  # the limits table is one of the three runs
    names = dict(NAMES, **{"mmdetection 3.3": "mmdet"})
    table = _table_after(readme, "**Three runs in a row**")
    assert {names[cells[0]] for cells in table} == set(data["ratios"]) - {"pytorch"}
    for cells in table:
        r = data["ratios"][names[cells[0]]]
        assert cells[1] == " / ".join(f"{v:.2f}" for v in r["per_run"]) and cells[2] == f"{r['median']:.2f}x"
        assert cells[3] == f"{r['max_deviation_pct']:.1f} %"
        assert limits["speedup"][names[cells[0]]] in r["per_run"]


def test_targets_table_matches_the_demo_run():
    readme = " ".join((ROOT / "README.md").read_text().split())
    data = json.loads((ROOT / "benchmarks" / "results" / "fps_r50_800x1333.json").read_text())
    pq = {r["backend"]: r for r in json.loads((ROOT / "benchmarks" / "results" / "pq_parity.json").read_text())["rows"]}
    rows = {r["backend"]: r for r in data["rows"]}
    base = rows["pytorch"]["median_ms"]
    assert f"**{base / rows['ort_fp32']['median_ms']:.2f}x** ({rows['ort_fp32']['median_ms']:.0f} vs {base:.0f} ms)" in readme
    assert f"**{base / rows['openvino_int8']['median_ms']:.2f}x** OpenVINO int8 ({rows['openvino_int8']['median_ms']:.0f} ms" in readme
    assert f"**{rows['openvino']['peak_pct']:.1f}%** OpenVINO f32" in readme
    assert f"**{rows['ort_fp32']['postprocess_ms']:.1f} ms** (fp32 outputs), **{rows['openvino_int8']['postprocess_ms']:.1f} ms**" in readme
    assert f"**{pq['ort_fp32']['pq'] - pq['ort_int8']['pq']:.2f}** ONNX Runtime int8" in readme
    for name, label in (("ort_fp32", "ONNX Runtime fp32"), ("openvino_int8", "OpenVINO int8")):
        assert f"| {label} | {pq[name]['pq']:.2f} |" in readme  # the PQ table of the same run


def test_ap_table_matches_its_run():
    readme = (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "benchmarks" / "results" / "pq_ap_c63ff8a.json").read_text())
    assert data["provenance"]["commit"] == "c63ff8a" and "pq_parity.py" in data["command"]
    labels = {"pytorch": "PyTorch eager", "ort_fp32": "ONNX Runtime fp32", "ort_int8": "ONNX Runtime int8",
              "openvino": "OpenVINO f32", "openvino_int8": "OpenVINO int8"}
    for r in data["rows"]:
        if r["status"] == "ok":
            assert (f"| {labels[r['backend']]} | {r['box_ap']:.2f} | {r['box_ap_delta']:+.2f} | {r['mask_ap']:.2f} | "
                    f"{r['mask_ap_delta']:+.2f} | {r['pq']:.2f} |") in readme, r["backend"]
