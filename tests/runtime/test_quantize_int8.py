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
    # random weights biased to detect give ~100 near-tied detections, so compare the network's
    # semantic output (argmax of the logits) rather than instance numbering
    from runtime.preprocess import prepare_batch

    agree = []
    for image in sorted((synthetic_root / "val2017").iterdir())[:3]:
        import cv2

        batch, sizes, _ = prepare_batch([cv2.imread(str(image))], 256, 192, 32)
        a = fp32.backend.run(batch, sizes)["semantic_logits"].argmax(1)
        b = int8.backend.run(batch, sizes)["semantic_logits"].argmax(1)
        agree.append(float(np.mean(a == b)))
        assert int8.predict(image).id_map.shape == fp32.predict(image).id_map.shape
    assert np.mean(agree) > 0.9, agree


def test_quantize_errors(tmp_path, synthetic_root, tiny_onnx):
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "quantize_int8.py"), "--onnx", str(tiny_onnx),
                           "--calib-images", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "calibration folder not found" in proc.stderr
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", [])
