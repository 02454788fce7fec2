"""Static INT8 quantization for CPU inference with ONNX Runtime: the whole network (backbone, FPN,
RPN, box / mask / semantic heads) runs as int8 QLinearConv / QGemm / QLinearAdd chains,
calibrated on N images with the runtime's own pre-processing.

    python runtime/quantize_int8.py --onnx model_ort.onnx --calib-images data/synthetic/train2017 --out model_int8.onnx

Everything after the network heads (proposal decoding, NMS, RoIAlign, softmax, box decoding)
stays float32. Torch-free. The same file runs on OpenVINO (``Predictor(path, backend="openvino")``,
which turns the Q/DQ pairs into its own int8 kernels): one calibration for both backends. On the
R-50 stand-in at 800x1333 (2 threads) OpenVINO's network took 0.90 s against ONNX Runtime's 1.10 s,
mostly its RoIAlign and the float parts between the int8 convolutions.

The graph is prepared before ``quantize_static`` and fixed up after it (untied initializers, every
consumer of a quantized tensor reading it quantized, the mask head's upsampling as 1x1
convolutions, the semantic head's level sum as Adds, U8S8, QDQ format): why, and what each
measured, in runtime/int8_rewrites.py. The calibration feed is the one of every calibration
(runtime/trt/calibration.py: the predictor's resize and padding, batches of 1).

Measured (R-50 random-weight export, 800x1333, 2 threads, median of 5, benchmarks/int8_speed.py):
PyTorch eager 5.42 s; ONNX Runtime fp32 3.24 s end to end (network 3.19 s); int8 1.13 s (network
1.07 s): 4.8x PyTorch, 2.9x fp32. What is left in the int8 network: QLinearConv 0.69 s (about
300 GMAC at ~440 GMAC/s), float RoIAlign 0.19 s (sampling_ratio=0 on 1000 box RoIs), the
DequantizeLinear of the FPN levels for RoIAlign, ScatterND, Resize. PQ on the trained tiny demo
model (synthetic val): fp32 88.46, int8 88.29.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from pfpn.runtime.int8_rewrites import (DEFAULT_OP_TYPES, QUANTIZED_MODULES, network_nodes, prepare_for_int8,
                                        route_float_consumers)


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib_images: Sequence[str | os.PathLike],
                  *, op_types: Sequence[str] = DEFAULT_OP_TYPES, per_channel: bool = True,
                  method: str = "minmax") -> Path:
    """Write a QDQ int8 model calibrated on ``calib_images``; returns ``out_path``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from pfpn.runtime.backends import read_model_metadata
    from pfpn.runtime.files import atomic_output
    from pfpn.runtime.trt.calibration import calibration_feeds

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    metadata = read_model_metadata(onnx_path)
    if metadata.flavor != "ort":
        raise ValueError(f"{onnx_path}: quantize the ort flavor (standard ONNX ops); this file is {metadata.flavor!r}")
    if not calib_images:
        raise ValueError("no calibration images")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = calibration_feeds(calib_images, max_long_side=metadata.max_long_side,
                                           max_short_side=metadata.max_short_side,
                                           size_divisor=metadata.size_divisor)

        def get_next(self):
            return next(self.feeds, None)

    model = onnx.load(str(onnx_path))
    prepare_for_int8(model)
    nodes = network_nodes(model, op_types)
    if not nodes:
        raise ValueError(f"{onnx_path}: found no network layers to quantize (expected node names under "
                         f"{QUANTIZED_MODULES})")
    with atomic_output(out_path) as tmp:
        with tempfile.TemporaryDirectory() as work:
            prepared = os.path.join(work, "prepared.onnx")
            onnx.save(model, prepared)
            del model
            quantize_static(prepared, tmp, Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), nodes_to_quantize=nodes, per_channel=per_channel,
                            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                           "CalibTensorRangeSymmetric": False, "DedicatedQDQPair": True,
                                           "CalibStridedMinMax": None, "CalibIntermediateOutputPath": work})
        model = onnx.load(tmp)
        route_float_consumers(model)
        # keep the contract metadata (flavor stays "ort": standard ONNX ops), note the precision
        props = {p.key: p.value for p in model.metadata_props}
        props["source"] = f"{props.get('source', '')} int8 ({method}, {len(calib_images)} images)".strip()
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
    return out_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="ort-flavor model exported by export/to_onnx.py")
    p.add_argument("--calib-images", required=True, help="folder of calibration images (.jpg/.png)")
    p.add_argument("--calib-count", type=int, default=32, help="number of calibration images (default 32)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weight scales")
    p.add_argument("--out", help="output path (default: <model>_int8.onnx)")
    args = p.parse_args(argv)
    from pfpn.runtime.images import ImageError, list_images

    try:
        images = list_images(args.calib_images, count=args.calib_count, what="--calib-images")
    except (FileNotFoundError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.onnx).with_name(Path(args.onnx).stem + "_int8.onnx")
    t0 = time.perf_counter()
    try:
        quantize_int8(args.onnx, out, images, per_channel=not args.per_tensor, method=args.method)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {len(images)} calibration images "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
