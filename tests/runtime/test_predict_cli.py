"""Smoke test of runtime/predict.py."""
import json
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "runtime" / "predict.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_predict_cli(tiny_onnx, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "val2017").iterdir())[:2]
    out = tmp_path / "out"
    proc = _run("--model", str(tiny_onnx), *map(str, images), "--out", str(out), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    pred = json.loads((out / "panoptic_pred.json").read_text())
    assert len(pred["annotations"]) == 2
    for image in images:
        assert (out / "panoptic_pred" / f"{image.stem}.png").is_file()
        overlay = cv2.imread(str(out / "overlay" / f"{image.stem}.png"))
        assert overlay is not None and overlay.shape == cv2.imread(str(image)).shape


def test_predict_cli_errors(tiny_onnx, tmp_path):
    proc = _run("--model", str(tmp_path / "missing.onnx"), str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "error:" in proc.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    proc = _run("--model", str(tiny_onnx), str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "cannot decode" in proc.stderr
    assert _run("--help").returncode == 0
