"""ONNX Runtime adapters for the ``trt``-flavor custom nodes: the numpy reference implementations
registered as onnxruntime-extensions Python ops (domain ``ai.onnx.contrib``), so that the exact
graph TensorRT receives runs, slowly, on any CPU. Torch-free.

    from pfpn.plugins.ort_ops import session_options
    sess = onnxruntime.InferenceSession("model_trt.onnx", session_options(), providers=["CPUExecutionProvider"])
"""
from __future__ import annotations

import numpy as np

from pfpn.plugins import reference
from pfpn.plugins.names import NMS_NAME, ROI_ALIGN_NAME

_registered = False


def register() -> None:
    """Register the Python custom ops with onnxruntime-extensions (once per process)."""
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("running trt-flavor models on ONNX Runtime needs onnxruntime-extensions "
                          "(pip install onnxruntime-extensions)") from e

    f, i64, s = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_string
    common = {"plugin_namespace": s, "plugin_version": s}

    @onnx_op(op_type=ROI_ALIGN_NAME, inputs=[f, f, f, f, f], outputs=[f],
             attrs={"output_height": i64, "output_width": i64, "sampling_ratio": i64, "base_stride": i64,
                    "finest_scale": f, **common})
    def _multilevel_roi_align(rois, p2, p3, p4, p5, **attrs):
        return reference.multilevel_roi_align(
            rois, [p2, p3, p4, p5], output_size=(int(attrs["output_height"]), int(attrs["output_width"])),
            sampling_ratio=int(attrs["sampling_ratio"]), base_stride=int(attrs["base_stride"]),
            finest_scale=float(attrs["finest_scale"]))

    @onnx_op(op_type=NMS_NAME, inputs=[f, f, i64], outputs=[i64, i64],
             attrs={"iou_threshold": f, "score_threshold": f, "max_output_boxes": i64, **common})
    def _batched_nms(boxes, scores, groups, **attrs):
        selected, counts = reference.batched_nms(
            boxes, scores, groups, iou_threshold=float(attrs["iou_threshold"]),
            score_threshold=float(attrs["score_threshold"]), max_output_boxes=int(attrs["max_output_boxes"]))
        return selected.astype(np.int64), counts.astype(np.int64)

    _registered = True


def session_options():
    """onnxruntime.SessionOptions with the custom-op library (and our Python ops) registered."""
    import onnxruntime
    from onnxruntime_extensions import get_library_path

    register()
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options
