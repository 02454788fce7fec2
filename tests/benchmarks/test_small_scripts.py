"""Smoke tests of the remaining scripts: int8_speed.py, bench_postprocess.py, random_checkpoint.py."""
import json
import subprocess
import sys
from pathlib import Path

from pfpn.runtime.quantize_int8 import quantize_int8
from pfpn.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_int8_speed(tiny_onnx, synthetic_root, tmp_path):
    calib = sorted((synthetic_root / "train2017").iterdir())[:4]
    int8 = quantize_int8(tiny_onnx, tmp_path / "int8.onnx", calib)
    image = sorted((synthetic_root / "val2017").iterdir())[0]
    proc = _run(ROOT / "benchmarks" / "int8_speed.py", "--fp32", tiny_onnx, "--int8", int8, "--image", image,
                "--threads", "1", "--runs", "1", "--warmup", "0", "--top", "3", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert {"ort fp32", "ort int8"} <= set(data["latency"]) and data["latency"]["ort int8"]["total"] > 0


def test_bench_postprocess():
    proc = _run(ROOT / "runtime" / "bench_postprocess.py", "--height", "120", "--width", "160", "--instances", "5",
                "--runs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "boundary pixels" in proc.stdout


def test_random_checkpoint(tmp_path):
    out = tmp_path / "r50.pth"
    proc = _run(ROOT / "training" / "random_checkpoint.py", "--out", out, "--firing", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.source == "mmdet" and ckpt.config.model.backbone.depth == 50
    assert float(ckpt.state_dict["roi_head.bbox_head.fc_cls.bias"][0]) == 8.0
