"""The per-node rules of runtime/trt/conformance.py: TensorRT's ONNX operator table (the types
each op takes), the attribute / input rules of the ops this project exports (:func:`check_node`)
and the custom nodes the plugin importer must map to this project's plugins
(:func:`check_custom_node`). Each rule adds a Finding naming its source."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pfpn.runtime.trt.conformance_report import (SRC_IMPORTER, SRC_NMS, SRC_OPS, SRC_PLUGINS, SRC_TOPK, Finding,
                                                 OnnxGraph, PluginSpec, node_attributes)

TOPK_MAX_K = 3840
NMS_MAX_BOXES = 5000

_F = ("FLOAT", "FLOAT16", "BFLOAT16")
_FI = _F + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)
# onnx-tensorrt docs/operators.md "Supported Types" (10.1-GA; the same in 10.15 and 11.1)
OPERATOR_TYPES: dict[str, tuple[str, ...]] = {
    **{op: _FI for op in ("Abs", "Add", "Sub", "Mul", "Div", "Min", "Max", "Neg", "Sign", "Mod", "Equal", "Less",
                          "LessOrEqual", "Greater", "GreaterOrEqual", "Relu", "ArgMax", "ArgMin", "Range",
                          "ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "Pad",
                          "ScatterElements", "ScatterND", "TopK")},
    **{op: _F for op in ("Ceil", "Floor", "Round", "Exp", "Log", "Sqrt", "Erf", "Reciprocal", "Sigmoid", "Tanh",
                         "Softmax", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "Gemm", "MatMul",
                         "InstanceNormalization", "GroupNormalization", "LayerNormalization",
                         "BatchNormalization", "Resize", "Clip", "CumSum", "Pow", "QuantizeLinear")},
    **{op: _FIB for op in ("Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "GatherElements",
                           "GatherND", "Identity", "Reshape", "Shape", "Slice", "Split", "Squeeze", "Unsqueeze",
                           "Tile", "Transpose", "Where", "OneHot")},
    "Cast": _FIB + ("UINT8",),
    "And": ("BOOL",), "Or": ("BOOL",), "Not": ("BOOL",),
    "NonMaxSuppression": ("FLOAT", "FLOAT16"),
    "NonZero": ("FLOAT", "FLOAT16"),
    "RoiAlign": ("FLOAT", "FLOAT16"),
    "DequantizeLinear": ("INT8", "FLOAT8E4M3FN", "INT4"),
}
# which inputs the type column applies to (others are indices, shapes, axes, conditions)
TYPED_INPUTS: dict[str, tuple[int, ...]] = {
    "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "ScatterElements": (0, 2), "ScatterND": (0, 2),
    "Reshape": (0,), "Expand": (0,), "Slice": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Pad": (0, 2),
    "TopK": (0,), "Resize": (0,), "Tile": (0,), "Split": (0,), "ReduceMax": (0,), "ReduceMin": (0,),
    "ReduceMean": (0,), "ReduceSum": (0,), "ReduceProd": (0,), "CumSum": (0,), "Where": (1, 2),
    "RoiAlign": (0, 1), "NonMaxSuppression": (0, 1), "Clip": (0,), "QuantizeLinear": (0,),
    "DequantizeLinear": (0,), "OneHot": (2,), "ConstantOfShape": (), "Constant": (), "Shape": (0,),
}
# the ops whose axes (input 1 at these opsets) must be build-time constants
AXES_INPUT = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13, "ReduceMax": 18, "ReduceMin": 18, "ReduceMean": 18,
               "ReduceProd": 18, "CumSum": 1}
_RESIZE_CTM = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


def check_node(node: Any, where: str, attrs: dict[str, Any], graph: OnnxGraph, add: Any) -> None:
    op = node.op_type
    axes_opset = AXES_INPUT.get(op)
    if axes_opset is not None and graph.opset >= axes_opset and len(node.input) > 1 and node.input[1] \
            and not graph.is_const(node.input[1]):
        add(Finding("error", "constant-axes", where, op, f"{op}'s axes must be a build-time constant", SRC_OPS))
    if op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
        add(Finding("error", "constant-value", where, op, "sparse / string Constant values are unsupported", SRC_OPS))
    elif op == "Resize":
        mode = attrs.get("mode", "nearest")
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        if mode not in ("nearest", "linear"):
            add(Finding("error" if mode != "cubic" else "warning", "resize-mode", where, op,
                        f"mode {mode!r}: TensorRT documents nearest and linear only", SRC_OPS))
        if ctm not in _RESIZE_CTM:
            add(Finding("error", "resize-coordinates", where, op, f"coordinate_transformation_mode {ctm!r} is "
                        f"unsupported", SRC_OPS))
        if mode == "nearest" and attrs.get("nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
            add(Finding("error", "resize-nearest", where, op, f"nearest_mode {attrs['nearest_mode']!r} is unsupported",
                        SRC_OPS))
        if attrs.get("antialias", 0):
            add(Finding("error", "resize-antialias", where, op, "antialiasing is unsupported", SRC_OPS))
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            add(Finding("error", "resize-aspect", where, op, "keep_aspect_ratio_policy must be stretch", SRC_OPS))
        scales = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if mode == "linear" and scales is not None and scales.size and np.any(scales[:-3] != 1):
            add(Finding("error", "resize-linear-axes", where, op, "linear resizing only on the last 3 axes",
                        SRC_IMPORTER))
    elif op == "RoiAlign":
        if "sampling_ratio" not in attrs:
            add(Finding("error", "roialign-sampling", where, op, "sampling_ratio is not set: TensorRT's importer uses 1, "
                        "ONNX's default is 0 (adaptive), so results would differ; set it explicitly", SRC_IMPORTER))
        elif attrs["sampling_ratio"] < 0:
            add(Finding("error", "roialign-sampling", where, op, "sampling_ratio must be >= 0", SRC_IMPORTER))
        if attrs.get("mode", "avg") not in ("avg", "max"):
            add(Finding("error", "roialign-mode", where, op, f"mode {attrs['mode']!r} is unsupported", SRC_IMPORTER))
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        if graph.opset >= 16 and ctm not in ("half_pixel", "output_half_pixel"):
            add(Finding("error", "roialign-coordinates", where, op, f"coordinate_transformation_mode {ctm!r}",
                        SRC_IMPORTER))
        add(Finding("note", "plugin-library", where, op, "imported as TensorRT's ROIAlign_TRT plugin: the engine "
                    "needs TensorRT's plugin library (initLibNvInferPlugins) at build and load", SRC_IMPORTER))
        if len(node.input) > 2 and graph.dtype.get(node.input[2]) == "INT64":
            add(Finding("note", "int64-narrowed", where, op, "batch_indices int64 -> int32 (batch indices < 2^31)",
                        SRC_IMPORTER))
    elif op == "TopK":
        if attrs.get("sorted", 1) != 1:
            add(Finding("error", "topk-sorted", where, op, "sorted must be 1", SRC_OPS))
        k = graph.value(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            add(Finding("warning", "topk-k", where, op, f"K is computed at run time: TensorRT fails at run time "
                        f"when it exceeds {TOPK_MAX_K}", SRC_TOPK))
        elif int(k.reshape(-1)[0]) > TOPK_MAX_K:
            add(Finding("error", "topk-k", where, op, f"K = {int(k.reshape(-1)[0])} exceeds TensorRT's {TOPK_MAX_K}",
                        SRC_TOPK))
        rank = len(graph.shape.get(node.input[0], [])) or None
        axis = attrs.get("axis", -1)
        if rank is not None and not rank - 4 <= (axis % rank) <= rank - 1:
            add(Finding("error", "topk-axis", where, op, "TopK reduces over one of the last four axes only", SRC_TOPK))
    elif op == "NonMaxSuppression":
        if attrs.get("center_point_box", 0) not in (0, 1):
            add(Finding("error", "nms-box-format", where, op, "center_point_box must be 0 or 1", SRC_IMPORTER))
        boxes = graph.shape.get(node.input[0])
        scores = graph.shape.get(node.input[1]) if len(node.input) > 1 else None
        if boxes is not None and len(boxes) != 3 or scores is not None and len(scores) != 3:
            add(Finding("error", "nms-rank", where, op, "boxes and scores must be 3-D", SRC_IMPORTER))
        candidates = None
        if boxes and scores and boxes[1] is not None and scores[1] is not None:
            candidates = boxes[1] * scores[1]
        if candidates is None or candidates > NMS_MAX_BOXES:
            size = "an unknown number of" if candidates is None else f"{candidates}"
            add(Finding("warning", "nms-box-limit", where, op, f"{size} candidate boxes per image: TensorRT's NMS "
                        f"layer considers only the {NMS_MAX_BOXES} highest-scoring ones, so results change when "
                        f"more than {NMS_MAX_BOXES} score above the threshold", SRC_NMS))
        if len(node.input) > 2 and node.input[2]:
            add(Finding("note", "int64-narrowed", where, op, "max_output_boxes_per_class int64 -> int32 "
                        "(a constant far below 2^31)", SRC_IMPORTER))
    elif op == "Mod":
        dtype = graph.dtype.get(node.input[0], "")
        if attrs.get("fmod", 0) == 0 and dtype in _F:
            add(Finding("error", "mod-fmod", where, op, "fmod=0 needs integer inputs", SRC_IMPORTER))
    elif op == "MaxPool":
        if len([o for o in node.output if o]) > 1:
            add(Finding("error", "maxpool-indices", where, op, "the Indices output is unsupported", SRC_OPS))
        if any(d != 1 for d in attrs.get("dilations", [])):
            add(Finding("error", "maxpool-dilations", where, op, "dilations must be all ones", SRC_OPS))
        if len(attrs.get("kernel_shape", [0, 0])) not in (2, 3):
            add(Finding("error", "maxpool-rank", where, op, "2-D or 3-D pooling only", SRC_OPS))
    elif op == "ScatterND" and attrs.get("reduction", "none") != "none":
        add(Finding("error", "scatternd-reduction", where, op, "reduction is unsupported", SRC_OPS))
    elif op == "ScatterElements" and attrs.get("reduction", "none") != "none":
        add(Finding("warning", "scatter-plugin", where, op, "a reduction runs as TensorRT's ScatterElements plugin "
                    "(int64 indices only; needs the plugin library)", SRC_IMPORTER))
    elif op == "Range":
        types = {graph.dtype.get(i) for i in node.input if i}
        if len(types) > 1 or not types <= {"INT32", "INT64", "FLOAT"}:
            add(Finding("error", "range-type", where, op, f"inputs {sorted(t or '?' for t in types)}: TensorRT's Range "
                        f"takes one type of INT32, INT64 or FLOAT", SRC_IMPORTER))
    elif op == "GatherElements" and graph.dtype.get(node.input[0]) != "INT64" \
            and graph.dtype.get(node.input[1]) == "INT64":
        add(Finding("note", "int64-narrowed", where, op, "indices int64 -> int32 (indices < 2^31)", SRC_IMPORTER))
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zero = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and zero is None:
            add(Finding("error", "qdq-zero-point", where, op, "the zero point must be a constant 0", SRC_OPS))
        elif zero is not None and np.any(zero != 0):
            add(Finding("error", "qdq-zero-point", where, op, "the zero point must be 0", SRC_OPS))
        if zero is not None and zero.dtype == np.uint8:
            add(Finding("error", "qdq-uint8", where, op, "UINT8 quantization (asymmetric) is DLA-only; use INT8",
                        SRC_IMPORTER))
    if op not in ("QuantizeLinear", "DequantizeLinear"):
        for i, name in enumerate(node.input):
            if name and graph.dtype.get(name) in ("INT8", "INT4", "FLOAT8E4M3FN") and not graph.is_const(name):
                add(Finding("error", "quantized-type", where, op, f"input {i} is {graph.dtype[name]}: quantized types "
                            f"only through QuantizeLinear / DequantizeLinear", SRC_OPS))


def check_custom_node(node: Any, where: str, graph: OnnxGraph, plugins: Mapping[str, PluginSpec], add: Any) -> None:
    from onnx import AttributeProto

    op = node.op_type
    if op in OPERATOR_TYPES:
        add(Finding("error", "plugin-shadowed", where, op, f"custom op {node.domain}::{op} has an ONNX op's name: the "
                    f"parser imports it as ONNX {op}", SRC_IMPORTER))
        return
    spec = plugins.get(op)
    if spec is None:
        add(Finding("error", "plugin-unknown", where, op, f"no plugin named {op!r} is registered (the parser looks "
                    f"the plugin up by op_type)", SRC_PLUGINS))
        return
    types = {a.name: a.type for a in node.attribute}
    values = node_attributes(node)
    for key, want in (("plugin_version", spec.version), ("plugin_namespace", spec.namespace)):
        if types.get(key) != AttributeProto.STRING:
            add(Finding("error", "plugin-identity", where, op, f"{key} must be a STRING attribute ({want!r}); the "
                        f"parser's default would be {'1' if key == 'plugin_version' else 'the empty namespace'}",
                        SRC_IMPORTER))
        elif values[key] != want:
            add(Finding("error", "plugin-identity", where, op, f"{key} {values[key]!r}, the plugin has {want!r}",
                        SRC_PLUGINS))
    fields = {k: t for k, t in types.items() if k not in ("plugin_version", "plugin_namespace")}
    for name, want in spec.attributes.items():
        got = fields.get(name)
        if got is None:
            add(Finding("error", "plugin-attribute", where, op, f"attribute {name!r} missing", SRC_PLUGINS))
        elif AttributeProto.AttributeType.Name(got) != want:
            add(Finding("error", "plugin-attribute", where, op, f"attribute {name!r} is "
                        f"{AttributeProto.AttributeType.Name(got)}, the plugin declares {want}", SRC_PLUGINS))
    for name, got in fields.items():
        if name not in spec.attributes:
            add(Finding("warning", "plugin-attribute", where, op, f"attribute {name!r} is not a field of the plugin "
                        f"(ignored)", SRC_PLUGINS))
        if got not in (AttributeProto.INT, AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.INTS,
                       AttributeProto.FLOATS, AttributeProto.STRINGS, AttributeProto.TENSOR):
            add(Finding("error", "plugin-attribute", where, op, f"attribute {name!r} of type "
                        f"{AttributeProto.AttributeType.Name(got)} cannot be a plugin field", SRC_IMPORTER))
        if got == AttributeProto.INT and not -2**31 <= values[name] < 2**31:
            add(Finding("error", "plugin-attribute", where, op, f"attribute {name!r} = {values[name]} does not fit "
                        f"the int32 field the parser makes", SRC_IMPORTER))
    inputs = [graph.dtype.get(i, "?") for i in node.input]
    if len(inputs) != len(spec.input_types) or any(a != b for a, b in zip(inputs, spec.input_types) if a != "?"):
        add(Finding("error", "plugin-inputs", where, op, f"inputs {inputs}, the plugin takes {list(spec.input_types)}",
                    SRC_PLUGINS))
    add(Finding("note", "plugin-fields", where, op, f"INT / FLOAT attributes arrive as int32 / float32 fields of "
                f"{spec.namespace}::{spec.name} v{spec.version}", SRC_IMPORTER))
