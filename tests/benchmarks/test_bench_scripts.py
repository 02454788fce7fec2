"""Smoke runs of the benchmark scripts on the small config (seconds): table structure, JSON rows,
and that backends that cannot run here say why."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_fps_smoke(tiny_checkpoint, synthetic_root, tmp_path):
    proc = _run("fps.py", "--ckpt", tiny_checkpoint, "--images", synthetic_root / "val2017", "--count", "1",
                "--runs", "2", "--warmup", "0", "--threads", "1", "--backends",
                "pytorch,ort_fp32,openvino_int8,trt_fp16", "--calib-count", "4", "--workdir", tmp_path / "deploy",
                "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out" / "fps.json").read_text())
    rows = {r["backend"]: r for r in data["rows"]}
    assert set(rows) == {"pytorch", "ort_fp32", "openvino_int8", "trt_fp16"}
    # agreement with the PyTorch predictor's output on the same images (int8: also its float model's)
    assert set(rows["ort_fp32"]["agreement"]) == {"pytorch"}
    assert rows["ort_fp32"]["agreement"]["pytorch"]["pixels"] > 0.99
    if rows["openvino_int8"]["status"] == "ok":
        assert rows["openvino_int8"]["peak_kind"] == "int8"
        assert set(rows["openvino_int8"]["agreement"]) == {"pytorch"}  # the openvino float row was not run
    else:
        assert "OpenVINO" in rows["openvino_int8"]["reason"]
    for name in ("pytorch", "ort_fp32"):
        r = rows[name]
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["fps"] > 0
        assert abs(r["preprocess_ms"] + r["network_ms"] + r["postprocess_ms"] - r["median_ms"]) < 0.5 * r["median_ms"]
        assert r["file_mb"] > 0
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and len(r["round_median_ms"]) == 2  # interleaved rounds
        assert r["peak_kind"] == "fp32" and r["achieved_gops"] > 0 and 0 < r["peak_pct"]
        # achieved rate = counted GFLOP / network time, against the measured fp32 peak
        gflop, peak = data["network_gflop"]["total"], data["gemm_peak_before"]["fp32"]["best_per_s"]
        assert abs(r["achieved_gops"] - gflop / (r["network_ms"] / 1000)) < 1e-6 * r["achieved_gops"]
        assert abs(r["peak_pct"] - 100 * r["achieved_gops"] / peak) < 1e-6 * r["peak_pct"]
    assert set(data["gemm_peak_after"]) == {"fp32", "int8"} and data["network_gflop"]["total"] > 0
    per_round = data["speedup_per_round"]["ort_fp32"]
    assert per_round["min"] <= per_round["median"] <= per_round["max"]
    trt = rows["trt_fp16"]
    if trt["status"] == "skipped":  # no GPU / TensorRT here: the reason is given
        assert "TensorRT" in trt["reason"] or "GPU" in trt["reason"]
    assert "ort_fp32" in data["speedup"]
    md = (tmp_path / "out" / "fps.md").read_text()
    assert "| backend | status | file MB | median ms | min / max ms | p90 ms | fps |" in md and "skipped" in md
    assert "Machine limit" in md and "% of fp32" in md and "Agreement on these images" in md
    assert (tmp_path / "out" / "fps.png").stat().st_size > 1000


def test_pq_parity_smoke(tiny_checkpoint, synthetic_root, tmp_path):
    proc = _run("pq_parity.py", "--ckpt", tiny_checkpoint, "--data-root", synthetic_root, "--max-images", "2",
                "--threads", "1", "--backends", "ort_fp32,trt_int8", "--workdir", tmp_path / "deploy",
                "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out" / "pq_parity.json").read_text())
    rows = {r["backend"]: r for r in data["rows"]}
    assert list(rows) == ["pytorch", "ort_fp32", "trt_int8"]  # pytorch is added as the parity reference
    assert rows["pytorch"]["pq_vs_pytorch"] == 100.0 and rows["pytorch"]["pixels_vs_pytorch"] == 1.0
    assert rows["ort_fp32"]["status"] == "ok" and rows["ort_fp32"]["pixels_vs_pytorch"] >= 0.999
    assert 0 <= rows["ort_fp32"]["pq"] <= 100
    # box / mask AP of the detections: ONNX Runtime fp32 detects what PyTorch detects
    assert 0 <= rows["pytorch"]["box_ap"] <= 100 and 0 <= rows["pytorch"]["mask_ap"] <= 100
    assert rows["pytorch"]["box_ap_delta"] == rows["pytorch"]["mask_ap_delta"] == 0.0
    assert rows["ort_fp32"]["box_ap_delta"] == rows["ort_fp32"]["mask_ap_delta"] == 0.0
    assert rows["ort_fp32"]["mask_ap"] == rows["pytorch"]["mask_ap"]
    assert rows["trt_int8"]["status"] in ("skipped", "ok") and (rows["trt_int8"]["status"] == "ok"
                                                                or rows["trt_int8"]["reason"])
    assert "| backend | status | PQ | SQ | RQ | PQ things | PQ stuff | box AP | box AP delta | mask AP |" in \
        (tmp_path / "out" / "pq_parity.md").read_text()


def test_scripts_explain_themselves():
    for script in ("fps.py", "pq_parity.py", "main_job.py"):
        proc = _run(script, "--help")
        assert proc.returncode == 0 and "usage" in proc.stdout
    proc = _run("fps.py", "--ckpt", "/nonexistent.pt")
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    proc = _run("fps.py", "--backends", "pytorch,warp_drive", "--ckpt", __file__)
    assert proc.returncode == 2 and "unknown backend" in proc.stderr


def test_trt_int8_target_gets_a_calibration_folder(monkeypatch, tmp_path):
    """pq_parity passes calibration images but no folder; build_engine.py --int8 needs a folder."""
    import pfpn.benchmarks.targets as targets

    images = []
    for i in range(2):
        images.append(tmp_path / f"calib_{i}.png")
        images[-1].write_bytes(b"png")
    seen = {}

    def fake_engine_file(ckpt, workdir, precision, calib_dir):
        seen["calib_dir"] = calib_dir
        raise targets.TargetUnavailable("stop before building")

    monkeypatch.setattr(targets, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setattr(targets, "engine_file", fake_engine_file)
    target = targets.make_target("trt_int8", ckpt=tmp_path / "x.pt", workdir=tmp_path / "deploy", threads=1,
                                 calib_images=images)
    assert target.status == "skipped"
    assert sorted(p.name for p in seen["calib_dir"].iterdir()) == ["calib_0.png", "calib_1.png"]


def test_mmdet_target_needs_the_published_layout(tiny_checkpoint, tmp_path):
    import pfpn.benchmarks.targets as targets

    target = targets.make_target("mmdet", ckpt=tiny_checkpoint, workdir=tmp_path, threads=1, calib_images=[])
    assert target.status == "skipped"
    assert "not in the published layout" in target.reason or "reference environment" in target.reason


def test_mmdet_target_without_the_tests_folder_is_skipped(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """An installed wheel has no tests/reference: the mmdet row says so in one line, and the
    per-backend loop reports it and goes on."""
    import pfpn.benchmarks.targets as targets

    monkeypatch.setattr(targets, "ROOT", tmp_path)
    found = list(targets.open_targets(["mmdet", "nonsense"], ckpt=tiny_checkpoint, workdir=tmp_path / "deploy",
                                      threads=1, calib_images=[]))
    assert [(t.name, t.status) for t in found] == [("mmdet", "skipped"), ("nonsense", "failed")]
    assert "tests/reference" in found[0].reason and "\n" not in found[0].reason
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[mmdet] preparing ...", f"[mmdet] skipped: {found[0].reason}", "[nonsense] preparing ...",
                       f"[nonsense] failed: {found[1].reason}"]


@pytest.mark.slow
def test_fps_mmdet_row(r50_random_checkpoint, tmp_path):
    """The mmdetection row of fps.py, timed by mmdetection's own process (the parity tests'
    reference environment), next to our PyTorch predictor on the same image."""
    from pfpn.benchmarks.targets import load_reference_env

    load_reference_env().ensure_installed()
    proc = _run("fps.py", "--ckpt", r50_random_checkpoint, "--size", "64x96", "--count", "1", "--runs", "1",
                "--warmup", "0", "--threads", "2", "--backends", "pytorch,mmdet", "--workdir", tmp_path / "deploy",
                "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["backend"]: r for r in json.loads((tmp_path / "out" / "fps.json").read_text())["rows"]}
    mm = rows["mmdet"]
    assert mm["status"] == "ok", mm
    assert mm["network_ms"] > 100 and mm["preprocess_ms"] > 0 and mm["postprocess_ms"] == 0
    # same work, same machine: within a factor of 3 of our PyTorch predictor (both run the R-50 at 800x1200)
    assert 1 / 3 < mm["median_ms"] / rows["pytorch"]["median_ms"] < 3
