"""INT8 CPU quantization: Q/DQ convolutions, runs in ONNX Runtime, stays close to fp32."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime import Predictor
from runtime.quantize_int8 import quantize_int8

ROOT = Path(__file__).resolve().parents[2]


def test_quantize_and_run(tiny_onnx, synthetic_root, tmp_path):
    calib = sorted((synthetic_root / "train2017").iterdir())[:8]
    out = quantize_int8(tiny_onnx, tmp_path / "int8.onnx", calib)
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    convs_quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert convs_quantized > 20
    fp32, int8 = Predictor(tiny_onnx, threads=1), Predictor(out, threads=1)
    assert int8.metadata.categories == fp32.metadata.categories and "int8" in int8.metadata.source
    agree = []
    for image in sorted((synthetic_root / "val2017").iterdir())[:3]:
        a, b = fp32.predict(image), int8.predict(image)
        agree.append(float(np.mean(a.id_map == b.id_map)))
    assert np.mean(agree) > 0.8, agree  # random weights: int8 stays close, not identical


def test_quantize_errors(tmp_path, synthetic_root, tiny_onnx):
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "quantize_int8.py"), "--onnx", str(tiny_onnx),
                           "--calib-images", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "calibration folder not found" in proc.stderr
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", [])
