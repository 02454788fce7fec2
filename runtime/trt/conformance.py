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

The model-level rules are here (:func:`check_onnx`); the per-node ones and TensorRT's operator
table in conformance_rules.py; findings and the report in conformance_report.py.

Constants: an input is "build-time constant" when it is an initializer or a ``Constant`` node's
output (the parser turns both into weights).
"""

from __future__ import annotations

from typing import Any, Mapping

from pfpn.runtime.trt.conformance_report import (SRC_IMPORTER, SRC_OPS, SRC_UINT8, ConformanceReport, Finding,
                                                 OnnxGraph, PluginSpec, node_attributes, project_plugins)
from pfpn.runtime.trt.conformance_rules import OPERATOR_TYPES, TYPED_INPUTS, check_custom_node, check_node

OPSET_MIN = 9
OPSET_MAX_EARLY = 20  # TensorRT 10.0 / 10.1
OPSET_MAX = 24  # TensorRT 10.15, 11.1
_ONNX_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL",
               "FLOAT8E4M3FN", "FLOAT4E2M1")


def _name(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def check_onnx(model: Any, *, plugins: Mapping[str, PluginSpec] | None = None) -> ConformanceReport:
    """Every rule of the module docstring on ``model`` (an ``onnx.ModelProto``).

    plugins: the TensorRT plugins custom-domain nodes must map to (default: this project's)."""
    graph = OnnxGraph(model)
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
            to = node_attributes(consumer).get("to")
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
            check_custom_node(node, where, graph, plugins, add)
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
        attrs = node_attributes(node)
        check_node(node, where, attrs, graph, add)
    return report
