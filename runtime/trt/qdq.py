"""INT8 for TensorRT's strongly typed networks (TensorRT 11 has no INT8 flag and no calibrators):
QuantizeLinear / DequantizeLinear pairs inserted on convolution inputs and weights, from
calibration ranges collected with ONNX Runtime on the CPU.

* activations: per-tensor symmetric int8 (scale = amax / 127, zero point 0), one Q/DQ pair per
  tensor shared by all its quantized consumers;
* weights: per-output-channel symmetric int8 (axis 0), stored as int8 initializers followed by
  DequantizeLinear (TensorRT folds the pair into an int8 convolution);
* biases and everything else stay fp32. The layers that feed softmax / sigmoid / exp (logits,
  box deltas, mask logits; ``fp16.sensitive_producers``) are not quantized by default.

Ranges: :func:`collect_ranges` runs the fp32 graph with the convolution inputs as extra outputs
over calibration batches and keeps, per tensor, the running max of ``|x|`` and a histogram
(``method="percentile"``: the 99.99th percentile of ``|x|`` clips rare outliers; ``"max"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfpn.runtime.trt.fp16 import constant_tensors, sensitive_producers

QUANT_OPS = ("Conv",)
INT8_MAX = 127
HIST_BINS = 2048
MIN_OPSET = 13  # per-channel DequantizeLinear (axis)


@dataclass
class QdqReport:
    quantized_nodes: list[str] = field(default_factory=list)
    skipped_nodes: list[str] = field(default_factory=list)  # excluded or without a usable range
    activation_scales: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"int8 Q/DQ: {len(self.quantized_nodes)} convolutions quantized, {len(self.skipped_nodes)} kept "
                f"float, {len(self.activation_scales)} activation scales")


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def quantizable_nodes(model: onnx.ModelProto, *, op_types: Sequence[str] = QUANT_OPS,
                      exclude_nodes: Iterable[str] = (), exclude_sensitive: bool = True) -> tuple[list[str], list[str]]:
    """-> (nodes to quantize, nodes of those types left float). A node qualifies when its weight
    (input 1) is a float constant of rank >= 2."""
    consts = constant_tensors(model)
    excluded = set(exclude_nodes)
    if exclude_sensitive:
        excluded |= sensitive_producers(model)
    chosen, skipped = [], []
    for node in model.graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        weight = consts.get(node.input[1]) if len(node.input) > 1 else None
        if (node.name in excluded or weight is None or weight.data_type != TensorProto.FLOAT
                or len(weight.dims) < 2):
            skipped.append(node.name)
        else:
            chosen.append(node.name)
    return chosen, skipped


def activation_tensors(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """The data inputs (input 0) of ``nodes``, each once, in graph order."""
    wanted = set(nodes)
    seen: list[str] = []
    for node in model.graph.node:
        if node.name in wanted and node.input[0] not in seen:
            seen.append(node.input[0])
    return seen


# ----------------------------------------------------------------------------------------------
# ranges

class RangeCollector:
    """Streaming statistics of ``|x|`` per tensor: max and a histogram whose range doubles (pairs of
    bins merged, exactly) whenever a larger value arrives."""

    def __init__(self, bins: int = HIST_BINS) -> None:
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number >= 2")
        self.bins = bins
        self.amax: dict[str, float] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.top: dict[str, float] = {}  # histogram upper edge

    def update(self, name: str, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, dtype=np.float32)).ravel()
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        m = float(a.max())
        self.amax[name] = max(self.amax.get(name, 0.0), m)
        if name not in self.hist:
            self.hist[name] = np.zeros(self.bins, dtype=np.int64)
            self.top[name] = m if m > 0 else 1.0
        while m > self.top[name]:
            h = self.hist[name]
            merged = h.reshape(-1, 2).sum(1)
            self.hist[name] = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
            self.top[name] *= 2.0
        idx = np.minimum((a / self.top[name] * self.bins).astype(np.int64), self.bins - 1)
        self.hist[name] += np.bincount(idx, minlength=self.bins)

    def percentile(self, name: str, q: float) -> float:
        """Upper edge of the bin where the cumulative count reaches ``q`` percent (<= the max)."""
        h = self.hist[name]
        total = int(h.sum())
        if total == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(h), total * q / 100.0))
        return min((k + 1) * self.top[name] / self.bins, self.amax[name])

    def ranges(self, method: str = "percentile", percentile: float = 99.99) -> dict[str, float]:
        if method == "max":
            return dict(self.amax)
        if method == "percentile":
            return {name: self.percentile(name, percentile) for name in self.amax}
        raise ValueError(f"unknown range method {method!r}; choose 'max' or 'percentile'")


def with_extra_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the float tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def collect_ranges(model: onnx.ModelProto, tensors: Sequence[str], batches: Iterable[Mapping[str, np.ndarray]], *,
                   session_options: Callable[[], Any] | None = None, method: str = "percentile",
                   percentile: float = 99.99, threads: int | None = None) -> dict[str, float]:
    """amax per tensor over the calibration ``batches`` (dicts of graph inputs), fp32 ONNX Runtime
    on the CPU. ``session_options``: a factory of ``onnxruntime.SessionOptions`` (custom-op
    libraries for the ``trt`` flavor)."""
    import onnxruntime as ort  # type: ignore[import-untyped]  # no type info in the wheel

    probe = with_extra_outputs(model, tensors)
    options = session_options() if session_options is not None else ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    collector = RangeCollector()
    seen = 0
    for feed in batches:
        values = session.run(list(tensors), dict(feed))
        for name, value in zip(tensors, values):
            collector.update(name, value)
        seen += 1
    if seen == 0:
        raise ValueError("no calibration batches")
    return collector.ranges(method, percentile)


# ----------------------------------------------------------------------------------------------
# insertion

def weight_scales(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel symmetric scales: max |w| over everything but ``axis``, / 127 (1 where all 0)."""
    w = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(w).max(axis=1)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int = 0) -> np.ndarray:
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.rint(np.asarray(weight, dtype=np.float32) / scales.reshape(shape))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


def insert_qdq(model: onnx.ModelProto, ranges: Mapping[str, float], *, op_types: Sequence[str] = QUANT_OPS,
               exclude_nodes: Iterable[str] = (), exclude_sensitive: bool = True) -> tuple[onnx.ModelProto, QdqReport]:
    """A copy of ``model`` with Q/DQ on the inputs and weights of its convolutions. A convolution
    whose input has no positive range in ``ranges`` stays float."""
    if opset_version(model) < MIN_OPSET:
        raise ValueError(f"Q/DQ insertion needs opset >= {MIN_OPSET} (per-channel DequantizeLinear), the model has "
                         f"{opset_version(model)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = constant_tensors(out)
    chosen, skipped = quantizable_nodes(out, op_types=op_types, exclude_nodes=exclude_nodes,
                                        exclude_sensitive=exclude_sensitive)
    report = QdqReport(skipped_nodes=list(skipped))
    chosen_set = set(chosen)
    act_dq: dict[str, str] = {}
    new_inits: list[TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in chosen_set:
            x = node.input[0]
            amax = float(ranges.get(x, 0.0))
            if not np.isfinite(amax) or amax <= 0:
                report.skipped_nodes.append(node.name)
                new_nodes.append(node)
                continue
            if x not in act_dq:
                scale = np.float32(amax / INT8_MAX)
                s_name, z_name = f"{x}__qdq_scale", f"{x}__qdq_zero"
                new_inits += [numpy_helper.from_array(np.array(scale, np.float32), s_name),
                              numpy_helper.from_array(np.array(0, np.int8), z_name)]
                q_out, dq_out = f"{x}__q", f"{x}__dq"
                new_nodes.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [q_out],
                                                  name=f"{x}__quantize"))
                new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                                  name=f"{x}__dequantize"))
                act_dq[x] = dq_out
                report.activation_scales[x] = float(scale)
            w_name = node.input[1]
            weight = numpy_helper.to_array(consts[w_name]).astype(np.float32)
            scales = weight_scales(weight, 0)
            qw, ws, wz = f"{node.name}__w_int8", f"{node.name}__w_scale", f"{node.name}__w_zero"
            new_inits += [numpy_helper.from_array(quantize_weight(weight, scales, 0), qw),
                          numpy_helper.from_array(scales, ws),
                          numpy_helper.from_array(np.zeros(scales.shape, np.int8), wz)]
            w_dq = f"{node.name}__w_dq"
            new_nodes.append(helper.make_node("DequantizeLinear", [qw, ws, wz], [w_dq], axis=0,
                                              name=f"{node.name}__w_dequantize"))
            node.input[0] = act_dq[x]
            node.input[1] = w_dq
            report.quantized_nodes.append(node.name)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {name for n in graph.node for name in n.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out, report
