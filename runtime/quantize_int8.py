"""Static INT8 quantization for CPU inference: Q/DQ on the convolutions (and the box-head
fully-connected layers), calibrated on N images with the runtime's own pre-processing.

    python runtime/quantize_int8.py --onnx model_ort.onnx --calib-images data/synthetic/train2017 --out model_int8.onnx

ONNX Runtime runs the result on the CPU (int8 convolutions where the CPU has them); everything
after the network heads (NMS, RoIAlign, softmax, box decoding) stays float32. Torch-free.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "Resize")
# Only the network's layers are quantized (node names carry the module path of the exporter);
# pre-processing, box decoding, NMS, RoIAlign and softmax stay float32. Quantizing the Adds,
# ReLUs, pools and resizes between convolutions is what lets ONNX Runtime run whole int8 chains
# (QLinearConv / QLinearAdd); a Conv with quantized inputs but a float output would run as
# DequantizeLinear + float Conv, slower than plain float32.
QUANTIZED_MODULES = ("backbone", "neck", "rpn_head", "bbox_head", "mask_head", "semantic_head")


def network_nodes(model, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes to quantize: ``op_types`` inside the network's modules."""
    names = []
    for node in model.graph.node:
        parts = node.name.split("/")
        if node.op_type in op_types and len(parts) > 2 and parts[1] in QUANTIZED_MODULES:
            names.append(node.name)
    return names


def calibration_feeds(image_paths: Sequence[str | os.PathLike], metadata) -> Iterator[dict[str, np.ndarray]]:
    """One contract feed (batch of 1, resized + padded exactly like the predictor) per image."""
    from runtime.images import read_image
    from runtime.preprocess import prepare_batch

    for path in image_paths:
        batch, sizes, _ = prepare_batch([read_image(path)], metadata.max_long_side, metadata.max_short_side,
                                        metadata.size_divisor)
        yield {"images": batch, "image_sizes": sizes}


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib_images: Sequence[str | os.PathLike],
                  *, op_types: Sequence[str] = DEFAULT_OP_TYPES, per_channel: bool = True,
                  method: str = "minmax") -> Path:
    """Write a QDQ int8 model calibrated on ``calib_images``; returns ``out_path``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from runtime.backends import _read_onnx_metadata
    from runtime.panoptic_io import temporary_sibling

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    metadata = _read_onnx_metadata(onnx_path)
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
            self.feeds = calibration_feeds(calib_images, metadata)

        def get_next(self):
            return next(self.feeds, None)

    nodes = network_nodes(onnx.load(str(onnx_path), load_external_data=False), op_types)
    if not nodes:
        raise ValueError(f"{onnx_path}: found no network layers to quantize (expected node names under "
                         f"{QUANTIZED_MODULES})")
    tmp = temporary_sibling(out_path)
    try:
        with tempfile.TemporaryDirectory() as work:
            quantize_static(str(onnx_path), tmp, Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), nodes_to_quantize=nodes, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True,
                                           "DedicatedQDQPair": True,
                                           "CalibStridedMinMax": None, "CalibIntermediateOutputPath": work})
        model = onnx.load(tmp)
        # keep the contract metadata (flavor stays "ort": standard ONNX ops), note the precision
        props = {p.key: p.value for p in model.metadata_props}
        props["source"] = f"{props.get('source', '')} int8 ({method}, {len(calib_images)} images)".strip()
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
    folder = Path(args.calib_images)
    if not folder.is_dir():
        print(f"error: calibration folder not found: {folder}", file=sys.stderr)
        return 2
    images = sorted(q for q in folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.calib_count]
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
