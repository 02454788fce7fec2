"""fp16 conversion of an ONNX graph for TensorRT's strongly typed networks (TensorRT 11 has no
FP16 builder flag: precision must be in the graph).

Which nodes run in fp16 is decided by region growing, not by converting everything:

1. *seeds*: the compute-heavy ops (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``) with a float
   input, unless kept in fp32;
2. *followers*: layout and cheap elementwise ops (``Relu``, ``MaxPool``, ``Resize``, ``Add``,
   ``Reshape``, ``Concat``...) join when every non-constant float input comes from the fp16
   region (the FPN's top-down ``Add`` joins; box-decoding arithmetic, whose inputs are fp32, does
   not).

Everything else stays fp32: graph inputs/outputs, the input normalisation (it precedes the first
convolution), softmax / sigmoid / exp and what feeds them through layout ops back to the
producing layer (:func:`sensitive_producers`: the classifier / box-regression / mask-logit
layers), the custom plugin nodes (their specs are fp32), NMS inputs, GroupNorm statistics
(``InstanceNormalization``) and every op not listed above. Casts are inserted at the region's
boundaries; float constants used inside the region get an fp16 copy.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16

SEED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FOLLOW_OPS = frozenset({
    "Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample",
    "Add", "Sub", "Mul", "Sum", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Pad",
    "Slice", "Split", "Identity", "ReduceSum", "BatchNormalization", "Clip",
})
# op types kept in fp32 by default (on top of everything that is neither a seed nor a follower)
DEFAULT_KEEP_OP_TYPES = frozenset({"InstanceNormalization", "Softmax", "Sigmoid", "Exp", "Log", "TopK",
                                   "NonMaxSuppression", "RoiAlign"})
# ops whose outputs must be computed from fp32 inputs: what feeds them is kept fp32 back to its layer
SENSITIVE_OPS = frozenset({"Softmax", "Sigmoid", "Exp", "Log", "LogSoftmax"})
# ops a sensitive input is traced back through, looking for the layer that produced it
_TRACE_THROUGH = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
                            "GatherElements", "GatherND", "Concat", "Split", "Identity", "Clip", "Pad", "Expand",
                            "Mul", "Add", "Sub", "Div", "Where", "Cast"})
# float inputs that are not data of type T (left untouched), per op type
_NON_DATA_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24


@dataclass
class Fp16Report:
    fp16_nodes: list[str] = field(default_factory=list)
    kept_nodes: list[str] = field(default_factory=list)  # seeds kept fp32 (explicit or sensitive)
    casts_to_fp16: int = 0
    casts_to_fp32: int = 0
    constants_converted: int = 0
    overflowed_values: int = 0  # |x| > 65504 in converted constants (clipped to +-65504)
    underflowed_values: int = 0  # 0 < |x| < 2^-24 in converted constants (became 0)

    def summary(self) -> str:
        return (f"fp16: {len(self.fp16_nodes)} nodes, {len(self.kept_nodes)} compute nodes kept fp32, "
                f"{self.casts_to_fp16 + self.casts_to_fp32} casts, {self.constants_converted} constants converted"
                + (f", {self.overflowed_values} values clipped to +-65504" if self.overflowed_values else "")
                + (f", {self.underflowed_values} tiny values flushed to 0" if self.underflowed_values else ""))


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (shape inference, plus what the file declares)."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # custom domains etc.: fall back to what the file says
        inferred = model
    types: dict[str, int] = {}
    graph = inferred.graph
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def constant_tensors(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Tensors with a value known from the file: initializers, Constant outputs, and Identity
    outputs of those (the exporter writes shared weights as Identity of one initializer)."""
    consts = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
        elif node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


_constants = constant_tensors


def _node_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}__fp16pass"
        seen.add(node.name)


def sensitive_producers(model: onnx.ModelProto) -> set[str]:
    """Names of the seed nodes (Conv/Gemm/...) whose output reaches a softmax / sigmoid / exp / log
    only through layout or elementwise ops: the logit, box-delta and mask-logit layers."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    consts = _constants(model)
    found: set[str] = set()
    seen: set[str] = set()
    stack = [node.input[0] for node in model.graph.node if node.op_type in SENSITIVE_OPS and node.input]
    while stack:
        name = stack.pop()
        if name in seen or name in consts:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None:
            continue
        if node.op_type in SEED_OPS:
            found.add(node.name)
        elif node.op_type in _TRACE_THROUGH and node.domain in ("", "ai.onnx"):
            inputs = list(node.input)
            if node.op_type in ("Gather", "GatherElements", "GatherND"):
                inputs = inputs[:1]
            elif node.op_type == "Where":
                inputs = inputs[1:]
            stack.extend(i for i in inputs if i)
    return found


def select_fp16_nodes(model: onnx.ModelProto, *, keep_nodes: Iterable[str] = (),
                      keep_op_types: Iterable[str] = DEFAULT_KEEP_OP_TYPES, keep_sensitive: bool = True,
                      types: dict[str, int] | None = None) -> tuple[set[str], set[str]]:
    """-> (names of the nodes that will run in fp16, names of seed nodes kept in fp32)."""
    types = tensor_types(model) if types is None else types
    consts = _constants(model)
    keep = set(keep_nodes)
    keep_types = set(keep_op_types)
    if keep_sensitive:
        keep |= sensitive_producers(model)
    region: set[str] = set()
    region_tensors: set[str] = set()
    kept_seeds: set[str] = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in keep_types:
            continue
        non_data = _NON_DATA_INPUTS.get(node.op_type, set())
        float_inputs = [name for i, name in enumerate(node.input)
                        if name and i not in non_data and types.get(name) == FLOAT]
        if not float_inputs:
            continue
        if node.op_type in SEED_OPS:
            if node.name in keep:
                kept_seeds.add(node.name)
                continue
            join = True
        elif node.op_type in FOLLOW_OPS:
            dynamic = [name for name in float_inputs if name not in consts]
            join = bool(dynamic) and all(name in region_tensors for name in dynamic) and node.name not in keep
        else:
            join = False
        if join:
            region.add(node.name)
            region_tensors.update(out for out in node.output if out and types.get(out) == FLOAT)
    return region, kept_seeds


def convert_to_fp16(model: onnx.ModelProto, *, keep_nodes: Iterable[str] = (),
                    keep_op_types: Iterable[str] = DEFAULT_KEEP_OP_TYPES,
                    keep_sensitive: bool = True) -> tuple[onnx.ModelProto, Fp16Report]:
    """A converted copy of ``model`` and what was done. Graph inputs and outputs keep their names
    and types."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _node_names(out)
    graph = out.graph
    types = tensor_types(out)
    region, kept_seeds = select_fp16_nodes(out, keep_nodes=keep_nodes, keep_op_types=keep_op_types,
                                           keep_sensitive=keep_sensitive, types=types)
    report = Fp16Report(kept_nodes=sorted(kept_seeds))
    consts = _constants(out)
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)

    # region outputs: renamed X -> X__fp16; a Cast back to X where fp32 consumers or outputs need it
    renamed: dict[str, str] = {}
    needs_fp32: set[str] = set()
    for node in graph.node:
        if node.name not in region:
            continue
        for i, name in enumerate(node.output):
            if name and types.get(name) == FLOAT:
                renamed[name] = f"{name}__fp16"
                node.output[i] = renamed[name]
                if name in graph_outputs or any(c.name not in region for c in consumers[name]):
                    needs_fp32.add(name)

    fp16_consts: dict[str, str] = {}
    new_inits: list[TensorProto] = []
    to_fp16: dict[str, str] = {}  # fp32 tensor -> name of its fp16 cast
    new_nodes: list[onnx.NodeProto] = []
    emitted_casts: set[str] = set()
    for node in graph.node:
        if node.name in region:
            non_data = _NON_DATA_INPUTS.get(node.op_type, set())
            for i, name in enumerate(node.input):
                if not name or i in non_data:
                    continue
                if name in renamed:
                    node.input[i] = renamed[name]
                elif types.get(name) == FLOAT and name in consts:
                    if name not in fp16_consts:
                        fp16_consts[name] = f"{name}__fp16"
                        new_inits.append(_to_fp16_tensor(consts[name], fp16_consts[name], report))
                    node.input[i] = fp16_consts[name]
                elif types.get(name) == FLOAT:
                    if name not in to_fp16:
                        to_fp16[name] = f"{name}__to_fp16"
                    if name not in emitted_casts:
                        new_nodes.append(helper.make_node("Cast", [name], [to_fp16[name]], to=FLOAT16,
                                                          name=f"{name}__cast_fp16"))
                        emitted_casts.add(name)
                        report.casts_to_fp16 += 1
                    node.input[i] = to_fp16[name]
            new_nodes.append(node)
            report.fp16_nodes.append(node.name)
            for original, fp16_name in renamed.items():
                if fp16_name in node.output and original in needs_fp32:
                    new_nodes.append(helper.make_node("Cast", [fp16_name], [original], to=FLOAT,
                                                      name=f"{original}__cast_fp32"))
                    report.casts_to_fp32 += 1
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _add_value_info(graph, renamed, to_fp16)
    _prune_unused_constants(graph)
    return out, report


def _to_fp16_tensor(tensor: TensorProto, name: str, report: Fp16Report) -> TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    finite = np.isfinite(values)
    report.overflowed_values += int(np.count_nonzero(finite & (np.abs(values) > FP16_MAX)))
    report.underflowed_values += int(np.count_nonzero((values != 0) & (np.abs(values) < FP16_TINY)))
    clipped = np.where(finite, np.clip(values, -FP16_MAX, FP16_MAX), values)
    report.constants_converted += 1
    return numpy_helper.from_array(clipped.astype(np.float16), name)


def _add_value_info(graph: onnx.GraphProto, renamed: dict[str, str], to_fp16: dict[str, str]) -> None:
    shapes = {vi.name: vi for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    for original, new in list(renamed.items()) + list(to_fp16.items()):
        source = shapes.get(original)
        if source is None or not source.type.tensor_type.HasField("shape"):
            continue  # value_info is optional; one without a shape would not pass the checker
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(source)
        vi.name = new
        vi.type.tensor_type.elem_type = FLOAT16
        graph.value_info.append(vi)


def _prune_unused_constants(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep_inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def fp16_dtype_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializers of each element type (for reports and tests)."""
    counts: dict[str, int] = defaultdict(int)
    for init in model.graph.initializer:
        counts[TensorProto.DataType.Name(init.data_type)] += 1
    return dict(counts)
