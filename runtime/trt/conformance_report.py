"""The findings of runtime/trt/conformance.py's TensorRT ONNX rules (one per broken or noted rule,
with its source), the report that groups them, and the graph view the rules read (types,
shapes, producers, consumers, build-time constants of the shape-inferred model)."""
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


class OnnxGraph:
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


def node_attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out
