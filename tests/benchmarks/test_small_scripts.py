"""The remaining scripts, their outputs parsed and checked against values computed here:
int8_speed.py (benchmarks), bench_postprocess.py and random_checkpoint.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpn.benchmarks.int8_speed import main as int8_speed_main
from pfpn.benchmarks.int8_speed import run_int8_speed
from pfpn.runtime.predictor import Predictor
from pfpn.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=ROOT)


def _detections(model: Path, image: Path) -> int:
    """The network's detections on ``image``, from a Predictor of our own."""
    _, panoptic, _ = Predictor(model, threads=1).predict_detailed([image])[0]
    return len(panoptic.scores)


def test_int8_speed(tiny_onnx, tiny_checkpoint, synthetic_root, tmp_path, capsys):
    image = sorted((synthetic_root / "val2017").iterdir())[0]
    int8 = tmp_path / "int8.onnx"
    report = run_int8_speed(fp32=tiny_onnx, int8=int8, calib_images=synthetic_root / "train2017", calib_count=2,
                            torch_ckpt=tiny_checkpoint, image=image, threads=1, runs=1, warmup=0, top=3,
                            json_path=tmp_path / "r.json")
    printed = capsys.readouterr().out
    assert int8.is_file() and "with 2 images" in printed  # quantized first
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
    assert report["image"] == list(cv2.imread(str(image)).shape) and report["threads"] == 1
    latency = report["latency"]
    assert list(latency) == ["ort fp32", "ort int8", "pytorch eager"]
    for label, model in (("ort fp32", tiny_onnx), ("ort int8", int8)):
        r = latency[label]
        assert r["detections"] == _detections(model, image)
        assert 0 < r["preprocess"] + r["network"] + r["postprocess"] <= r["total"]  # the stages are inside
    assert set(latency["pytorch eager"]) == {"total"}
    # the printed table and ratios are the JSON's numbers
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^(ort fp32|ort int8|pytorch eager)\s+(.*)$",
                                                                printed, re.M)}
    fp32, q, torch_total = latency["ort fp32"], latency["ort int8"], latency["pytorch eager"]["total"]
    assert rows["ort fp32"] == [f"{fp32[k]:.3f}" for k in ("total", "preprocess", "network", "postprocess")] + [
        str(int(fp32["detections"]))]
    assert rows["pytorch eager"] == [f"{torch_total:.3f}"]
    assert f"int8 vs fp32: end to end x{fp32['total'] / q['total']:.2f}, network x{fp32['network'] / q['network']:.2f}" \
        in printed
    assert f"fp32 vs pytorch eager: end to end x{torch_total / fp32['total']:.2f}" in printed
    # the profile: the top 3 op types by kernel time, within the kernel total
    assert set(report["profile"]) == {"ort fp32", "ort int8"}
    for prof in report["profile"].values():
        seconds = [s for _, s in prof["op_types"]]
        assert len(seconds) == 3 and seconds == sorted(seconds, reverse=True)
        assert 0 < sum(seconds) <= prof["kernel_s"] + 1e-9 and len(prof["nodes"]) == 3
        assert prof["nodes"][0][2] <= seconds[0] + 1e-9  # one node of an op type takes at most that type's time


def test_int8_speed_refuses_missing_models(tiny_onnx, tmp_path, capsys):
    assert int8_speed_main(["--fp32", str(tmp_path / "missing.onnx")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert int8_speed_main(["--fp32", str(tiny_onnx), "--int8", str(tmp_path / "no_int8.onnx")]) == 2
    assert "no_int8.onnx" in capsys.readouterr().err


def test_bench_postprocess():
    from pfpn.runtime.bench_postprocess import synthetic_outputs
    from pfpn.runtime.fusion import postprocess_single_image

    proc = _run(ROOT / "runtime" / "bench_postprocess.py", "--height", "120", "--width", "160", "--instances", "5",
                "--runs", "1")
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.splitlines()[0]
    # 120x160 -> scale min(1333 / 160, 800 / 120) = 6.667 -> 800x1067; padded to 800x1088, stride 4: 200x272
    assert head.startswith("image 120x160 (resized 800x1067), logits (54, 200, 272), 5 detections")
    inputs = synthetic_outputs(120, 160, 5, 53)
    boxes = inputs["boxes"] / (1067 / 160)  # both factors are 1067 / 160 = 800 / 120 within a pixel
    area = float(np.sum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))) / (120 * 160)
    printed_area = float(re.search(r"summed box area ([\d.]+) x image", head).group(1))
    assert printed_area == pytest.approx(area, abs=0.006)
    out = postprocess_single_image(**inputs)
    assert f"({len(out.kept)} kept)" in head
    ms = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\S.*?)\s+([\d.]+) ms$", proc.stdout, re.M)}
    parts = ("semantic_grid", "masks_fusion", "semantic_boundary", "labels", "segments")
    assert set(parts) <= set(ms) and sum(ms[p] for p in parts) <= ms["total"] + 0.05  # 0.01 ms rounding each
    assert ms["total"] <= ms["postprocess + to_panoptic_result"] + 0.01
    boundary = int(re.search(r"boundary pixels evaluated in full: (\d+)", proc.stdout).group(1))
    assert boundary == out.boundary_pixels  # the same deterministic scene


def test_random_checkpoint(tmp_path):
    out = tmp_path / "r50.pth"
    proc = _run(ROOT / "training" / "random_checkpoint.py", "--out", out, "--firing", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.source == "mmdet" and ckpt.config.model.backbone.depth == 50
    assert float(ckpt.state_dict["roi_head.bbox_head.fc_cls.bias"][0]) == 8.0
