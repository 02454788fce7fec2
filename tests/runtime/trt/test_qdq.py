"""Q/DQ insertion for strongly typed TensorRT INT8 (runtime/trt/qdq.py): range statistics, weight
quantization, graph structure on the exported small model, and that ONNX Runtime runs the Q/DQ
graph with results close to fp32."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfpn.runtime.trt import qdq
from pfpn.runtime.trt.calibration import make_feed
from pfpn.runtime.trt.fp16 import sensitive_producers
from pfpn.training.data.coco_panoptic import CocoPanopticDataset


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def batches(synthetic_root):
    ds = CocoPanopticDataset(synthetic_root, "val")
    return [make_feed([ds[i]["image"]], max_long_side=256, max_short_side=192, box=(192, 256))
            for i in range(4)]


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_range_collector():
    c = qdq.RangeCollector(bins=8)
    c.update("a", np.array([0.5, -1.0, 0.25, np.inf], np.float32))
    assert c.amax["a"] == 1.0 and c.hist["a"].sum() == 3
    c.update("a", np.array([-3.5], np.float32))  # range doubles twice: 1 -> 4, counts preserved
    assert c.top["a"] == 4.0 and c.hist["a"].sum() == 4 and c.amax["a"] == 3.5
    assert c.ranges("max") == {"a": 3.5}
    rng = np.random.default_rng(0)
    c2 = qdq.RangeCollector()
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:5] = 50.0  # rare outliers
    for part in np.split(x, 4):
        c2.update("x", part)
    p = c2.ranges("percentile", 99.99)["x"]
    assert 3.5 < p < 5.0 and c2.ranges("max")["x"] == 50.0
    with pytest.raises(ValueError, match="unknown range method"):
        c2.ranges("entropy")


def test_weight_quantization_per_channel():
    rng = np.random.default_rng(1)
    channel_scale = np.array([1, 10, 0.01, 0], np.float32)[:, None, None, None]
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * channel_scale
    scales = qdq.weight_scales(w)
    assert scales.shape == (4,) and scales[3] == 1.0  # an all-zero channel gets a harmless scale
    np.testing.assert_allclose(scales[:3], np.abs(w[:3]).reshape(3, -1).max(1) / 127, rtol=1e-6)
    q = qdq.quantize_weight(w, scales)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    err = np.abs(q.astype(np.float32) * scales[:, None, None, None] - w)
    assert (err <= scales[:, None, None, None] / 2 + 1e-7).all()


def test_exported_model_structure_and_numerics(exported, batches):
    nodes, skipped = qdq.quantizable_nodes(exported)
    assert not set(nodes) & sensitive_producers(exported)  # logits / deltas / mask logits stay float
    assert {"/rpn_head/rpn_cls/Conv", "/mask_head/conv_logits/Conv"} <= set(skipped)
    tensors = qdq.activation_tensors(exported, nodes)
    ranges = qdq.collect_ranges(exported, tensors, batches, threads=1)
    assert set(ranges) == set(tensors) and all(v > 0 for v in ranges.values())
    model, report = qdq.insert_qdq(exported, ranges)
    onnx.checker.check_model(model, full_check=True)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    assert len(report.quantized_nodes) == len(nodes) and counts["QuantizeLinear"] == len(tensors)
    assert counts["DequantizeLinear"] == len(tensors) + len(nodes)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name not in report.quantized_nodes:
            continue
        act, wdq = producer[node.input[0]], producer[node.input[1]]
        assert act.op_type == "DequantizeLinear" and producer[act.input[0]].op_type == "QuantizeLinear"
        assert wdq.op_type == "DequantizeLinear"
        assert onnx.helper.get_attribute_value(wdq.attribute[0]) == 0  # axis 0: per output channel
        w8, ws, wz = (inits[n] for n in wdq.input)
        assert w8.data_type == TensorProto.INT8 and list(ws.dims) == [w8.dims[0]] and wz.data_type == TensorProto.INT8
        scale = numpy_helper.to_array(inits[act.input[1]])
        np.testing.assert_allclose(scale, ranges[producer[act.input[0]].input[0]] / 127, rtol=1e-6)
        assert numpy_helper.to_array(inits[act.input[2]]) == 0  # symmetric (TensorRT)
    s32, s8 = _session(exported), _session(model)
    agree = []
    for feed in batches:
        ref = dict(zip([o.name for o in s32.get_outputs()], s32.run(None, feed)))
        got = dict(zip([o.name for o in s8.get_outputs()], s8.run(None, feed)))
        agree.append((got["semantic_logits"].argmax(1) == ref["semantic_logits"].argmax(1)).mean())
        assert int(got["num_detections"][0]) > 0
        sem_ref = ref["semantic_logits"]
        assert np.abs(got["semantic_logits"] - sem_ref).max() < 0.2 * np.abs(sem_ref).max()
    assert np.mean(agree) > 0.97


def test_conv_without_range_stays_float_and_old_opsets_are_refused():
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = qdq.insert_qdq(model, {})
    assert report.quantized_nodes == [] and report.skipped_nodes == ["c"]
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    out, report = qdq.insert_qdq(model, {"x": 2.0})
    assert report.quantized_nodes == ["c"] and report.activation_scales == {"x": pytest.approx(2.0 / 127)}
    np.testing.assert_allclose(_session(out).run(None, {"x": np.full((1, 1, 2, 2), 1.0, np.float32)})[0], 1.0,
                               atol=0.02)
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(ValueError, match="opset >= 13"):
        qdq.insert_qdq(old, {"x": 1.0})
