"""What TensorRT's ONNX parser (onnx-tensorrt, TensorRT 10.x and 11.x) would reject or change in an
ONNX file, checked without TensorRT or a GPU: ``check_onnx(model) -> ConformanceReport``, and
``python runtime/build_engine.py --onnx M --check`` on the exact graph the parser receives.

Severities:

* ``error``: the parser or builder refuses it, or TensorRT silently computes something else;
* ``warning``: TensorRT accepts it, and results differ from ONNX Runtime in a documented case;
* ``note``: a documented conversion that cannot change results here (int64 indices narrowed to
  int32, TensorRT's plugin library needed).

Rule sources (each finding names its own):

* [ops] onnx-tensorrt ``docs/operators.md``: the 10.1-GA branch (TensorRT 10.0/10.1), the
  TensorRT 10.15 and the 11.1 versions, whose type columns agree for every op listed here. Opset
  9..20 on 10.0/10.1, 9..24 on 10.15 and 11.1.
* [importer] onnx-tensorrt 10.1-GA ``onnxOpImporters.cpp`` / ``onnxOpCheckers.cpp`` /
  ``ModelImporter.cpp``: RoiAlign's ``attrs.get("sampling_ratio", 1)`` (ONNX's default is 0,
  adaptive), Range only int32/int64/float, Mod with ``fmod=0`` only for integers, UINT8 only as a
  network input/output ("TensorRT does not support UINT8 types for intermediate tensors"), custom
  nodes through the fallback plugin importer (plugin name = op_type, ``plugin_version`` /
  ``plugin_namespace`` string attributes; INT attributes become kINT32 fields, FLOAT kFLOAT32;
  TENSOR / GRAPH attributes refused), RoiAlign batch indices and NMS ``max_output_boxes`` cast to
  int32.
* [uint8] NvInferRuntimeBase.h ``DataType::kUINT8`` (10.0 .. 11.1): UINT8 network tensors convert
  only to/from FLOAT / HALF; NVIDIA/TensorRT issue 3985: a UINT8 input may feed nothing but a Cast.
* [NvInfer.h] ``ITopKLayer``: K <= 3840, reduction over one of the last four axes;
  ``INMSLayer``: only the top 5000 boxes by score (2000 on SM 5.3/6.2) per image are considered.
* [plugins] this project's TensorRT plugins (``plugins/trt_plugins.py``): names, namespace,
  version, attribute names and types.

Constants: an input is "build-time constant" when it is an initializer or a ``Constant`` node's
output (the parser turns both into weights).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

SEVERITIES = ("error", "warning", "note")
SRC_OPS = "onnx-tensorrt docs/operators.md (10.1-GA, 10.15, 11.1)"
SRC_IMPORTER = "onnx-tensorrt 10.1-GA onnxOpImporters.cpp"
SRC_UINT8 = "NvInferRuntimeBase.h DataType::kUINT8 (10.0-11.1); NVIDIA/TensorRT issue 3985"
SRC_TOPK = "NvInfer.h ITopKLayer (10.0-11.1)"
SRC_NMS = "NvInfer.h INMSLayer (10.0-11.1)"
SRC_PLUGINS = "plugins/trt_plugins.py"

OPSET_MIN = 9
OPSET_MAX_EARLY = 20  # TensorRT 10.0 / 10.1
OPSET_MAX = 24  # TensorRT 10.15, 11.1
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
_AXES_INPUT = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13, "ReduceMax": 18, "ReduceMin": 18, "ReduceMean": 18,
               "ReduceProd": 18, "CumSum": 1}
_RESIZE_CTM = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
_ONNX_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL",
               "FLOAT8E4M3FN", "FLOAT4E2M1")


@dataclass(frozen=True)
class PluginSpec:
    """A TensorRT plugin the ONNX parser must find for a custom node."""

    name: str
    namespace: str
    version: str
    attributes: Mapping[str, str]  # attribute name -> "INT" / "FLOAT" (ONNX AttributeProto type)
    input_types: tuple[str, ...]


def project_plugins() -> dict[str, PluginSpec]:
    """The plugins this project registers (plugins/trt_plugins.py), by node op_type."""
    from pfpn.plugins.trt_plugins import PLUGIN_SPECS

    return {spec["name"]: PluginSpec(name=spec["name"], namespace=spec["namespace"], version=spec["version"],
                                     attributes=dict(spec["attributes"]), input_types=tuple(spec["input_types"]))
            for spec in PLUGIN_SPECS}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" / "warning" / "note"
    rule: str  # short id, e.g. "uint8-input"
    node: str  # node name (or tensor / "model")
    op: str  # op_type ("" for model-level findings)
    message: str
    source: str

    def format(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity:7s} {self.rule:22s} {where}: {self.message} [{self.source}]"


@dataclass
class ConformanceReport:
    findings: list[Finding] = field(default_factory=list)
    nodes: int = 0
    opset: int = 0

    def of(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of("error")

    @property
    def warnings(self) -> list[Finding]:
        return self.of("warning")

    def rules(self, severity: str | None = None) -> set[str]:
        return {f.rule for f in self.findings if severity is None or f.severity == severity}

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of(s))} {s}{'s' if len(self.of(s)) != 1 else ''}" for s in SEVERITIES)
        return f"TensorRT 10.x/11.x ONNX parser conformance: {self.nodes} nodes, opset {self.opset}: {counts}"

    def format(self, *, notes: bool = True) -> str:
        lines = [self.summary()]
        for severity in SEVERITIES:
            if severity == "note" and not notes:
                continue
            grouped: dict[tuple[str, str], list[Finding]] = defaultdict(list)
            for f in self.of(severity):
                grouped[(f.rule, f.message)].append(f)
            for (rule, message), items in grouped.items():
                first = items[0]
                more = f" (and {len(items) - 1} more nodes like it)" if len(items) > 1 else ""
                lines.append("  " + first.format() + more)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

class _Graph:
    """Types, producers, consumers and constants of a (shape-inferred) ONNX graph."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import shape_inference

        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # inference is a help, not a requirement
            inferred = model
        self.model = inferred
        g = inferred.graph
        self.dtype: dict[str, str] = {}
        self.shape: dict[str, list[int | None]] = {}
        for v in list(g.input) + list(g.output) + list(g.value_info):
            tt = v.type.tensor_type
            self.dtype[v.name] = onnx.TensorProto.DataType.Name(tt.elem_type)
            if tt.HasField("shape"):
                self.shape[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        self.const: dict[str, Any] = {}
        for init in g.initializer:
            self.dtype[init.name] = onnx.TensorProto.DataType.Name(init.data_type)
            self.shape[init.name] = list(init.dims)
            self.const[init.name] = init
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.const[n.output[0]] = a.t
                        self.dtype.setdefault(n.output[0], onnx.TensorProto.DataType.Name(a.t.data_type))
        self.inputs = {i.name for i in g.input} - {init.name for init in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.opset = max((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), default=0)

    def value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        t = self.const.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def is_const(self, name: str) -> bool:
        return name in self.const


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _name(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def check_onnx(model: Any, *, plugins: Mapping[str, PluginSpec] | None = None) -> ConformanceReport:
    """Every rule of the module docstring on ``model`` (an ``onnx.ModelProto``).

    plugins: the TensorRT plugins custom-domain nodes must map to (default: this project's)."""
    graph = _Graph(model)
    plugins = project_plugins() if plugins is None else plugins
    report = ConformanceReport(nodes=len(graph.model.graph.node), opset=graph.opset)
    add = report.findings.append

    # model-level
    if not OPSET_MIN <= graph.opset <= OPSET_MAX:
        add(Finding("error", "opset", "model", "", f"opset {graph.opset} is outside TensorRT's {OPSET_MIN}..{OPSET_MAX}",
                    SRC_OPS))
    elif graph.opset > OPSET_MAX_EARLY:
        add(Finding("warning", "opset", "model", "", f"opset {graph.opset}: TensorRT 10.0/10.1 parse only up to "
                    f"{OPSET_MAX_EARLY}", SRC_OPS))
    for name, dtype in graph.dtype.items():
        if dtype not in _ONNX_TYPES and dtype != "UNDEFINED":
            add(Finding("error", "dtype", name, "", f"data type {dtype} is not one TensorRT supports", SRC_OPS))
        elif dtype == "DOUBLE":
            add(Finding("warning", "double", name, "", "DOUBLE is cast down to FLOAT (clamped to +-FLT_MAX)", SRC_OPS))

    # UINT8: network inputs/outputs only, and an input feeds nothing but Casts to FLOAT/FLOAT16
    for name in sorted(graph.inputs):
        if graph.dtype.get(name) != "UINT8":
            continue
        for consumer in graph.consumers.get(name, []):
            to = _attrs(consumer).get("to")
            if consumer.op_type != "Cast":
                add(Finding("error", "uint8-input", consumer.name or name, consumer.op_type,
                            f"UINT8 input {name!r} feeds a {consumer.op_type}: TensorRT accepts a UINT8 network input "
                            f"only when it goes straight into a Cast", SRC_UINT8))
            elif to not in (1, 10):  # FLOAT, FLOAT16
                add(Finding("error", "uint8-input", consumer.name or name, "Cast",
                            f"UINT8 input {name!r} is cast to type {to}: UINT8 converts only to FLOAT or FLOAT16",
                            SRC_UINT8))
    for name, dtype in graph.dtype.items():
        if dtype == "UINT8" and name not in graph.inputs and name not in graph.outputs and not graph.is_const(name):
            producer = graph.producer.get(name)
            add(Finding("error", "uint8-intermediate", producer.name if producer is not None else name,
                        producer.op_type if producer is not None else "",
                        f"UINT8 tensor {name!r} inside the network: TensorRT supports UINT8 only for network "
                        f"inputs and outputs", SRC_IMPORTER))

    for index, node in enumerate(graph.model.graph.node):
        where = _name(node, index)
        if node.domain not in ("", "ai.onnx"):
            _check_custom(node, where, graph, plugins, add)
            continue
        op = node.op_type
        if op not in OPERATOR_TYPES:
            add(Finding("error", "unsupported-op", where, op, f"{op} is not in TensorRT's ONNX operator table", SRC_OPS))
            continue
        allowed = OPERATOR_TYPES[op]
        for i in TYPED_INPUTS.get(op, tuple(range(len(node.input)))):
            if i < len(node.input) and node.input[i]:
                in_type = graph.dtype.get(node.input[i])
                if in_type and in_type != "UNDEFINED" and in_type not in allowed:
                    add(Finding("error", "input-type", where, op, f"input {i} is {in_type}; TensorRT's {op} takes "
                                f"{', '.join(allowed)}", SRC_OPS))
        attrs = _attrs(node)
        _check_node(node, where, attrs, graph, add)
    return report


def _check_node(node: Any, where: str, attrs: dict[str, Any], graph: _Graph, add: Any) -> None:
    op = node.op_type
    axes_opset = _AXES_INPUT.get(op)
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


def _check_custom(node: Any, where: str, graph: _Graph, plugins: Mapping[str, PluginSpec], add: Any) -> None:
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
    values = _attrs(node)
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
