"""fp16 conversion for strongly typed TensorRT (runtime/trt/fp16.py): structure of the converted
graph (what is fp16, what stays fp32, Casts at the boundaries, I/O unchanged) on a handmade graph
and on the exported small model (both flavors), and numerical closeness under ONNX Runtime CPU."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfpn.plugins.ort_ops import session_options
from pfpn.runtime.preprocess import prepare_batch
from pfpn.runtime.trt.fp16 import FLOAT16, convert_to_fp16, select_fp16_nodes, sensitive_producers, tensor_types
from pfpn.training.data.coco_panoptic import CocoPanopticDataset

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exported(tiny_onnx, tiny_trt_onnx):
    return {"ort": onnx.load(str(tiny_onnx)), "trt": onnx.load(str(tiny_trt_onnx))}


def _session(model, flavor):
    options = session_options() if flavor == "trt" else ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _toy():
    """x -> Conv -> Relu -> Add(y from a second Conv) -> {Sigmoid -> out_a, Resize -> out_b};
    w is shared with a fp32 Mul."""
    w = numpy_helper.from_array(np.full((2, 1, 1, 1), 0.5, np.float32), "w")
    w2 = numpy_helper.from_array(np.full((2, 2, 1, 1), 0.25, np.float32), "w2")
    big = numpy_helper.from_array(np.array([1e5, 3e-9, 1.0], np.float32).reshape(1, 3, 1, 1)[:, :2], "big")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["r1", "c2"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "big"], ["m"], name="mul_big"),
        helper.make_node("Resize", ["m", "", "scales"], ["out_b"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["s", "w2"], ["logits"], name="head"),
        helper.make_node("Sigmoid", ["logits"], ["out_a"], name="sigmoid"),
        helper.make_node("Mul", ["x", "w"], ["out_c"], name="fp32_mul"),
    ]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(n, F, [None] * 4)
                               for n in ("out_a", "out_b", "out_c", "s")],
                              [w, w2, big, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_toy_graph_structure_and_values():
    model = _toy()
    assert sensitive_producers(model) == {"head"}
    region, kept = select_fp16_nodes(model)
    assert region == {"conv1", "relu1", "conv2", "add", "mul_big", "resize"} and kept == {"head"}
    conv, report = convert_to_fp16(model)
    onnx.checker.check_model(conv, full_check=True)
    types = tensor_types(conv)
    assert [(o.name, o.type.tensor_type.elem_type) for o in conv.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]  # I/O unchanged
    assert types["x"] == F and types["s"] == F and types["s__fp16"] == H
    inits = {i.name: i for i in conv.graph.initializer}
    assert inits["w__fp16"].data_type == H and inits["w"].data_type == F  # shared with the fp32 Mul
    assert inits["scales"].data_type == F  # Resize scales are not data
    assert inits["w2"].data_type == F and inits["w2__fp16"].data_type == H  # head keeps fp32 weights
    head = next(n for n in conv.graph.node if n.name == "head")
    assert types[head.input[0]] == F and types[head.output[0]] == F  # the sigmoid's producer is fp32
    assert report.casts_to_fp16 == 1 and report.casts_to_fp32 == 2  # x in; s, out_b out
    assert report.overflowed_values == 1 and report.underflowed_values == 1
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    ref = _session(model, "ort").run(None, {"x": x})
    got = _session(conv, "ort").run(None, {"x": x})
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=0)  # untouched fp32 path
    np.testing.assert_allclose(got[3], ref[3], rtol=2e-3, atol=2e-3)
    # channel 1's 3e-9 multiplier became 0 in fp16 (reported); channel 0's 1e5 was clipped to 65504
    np.testing.assert_allclose(got[1][:, 1], ref[1][:, 1], atol=1e-6)
    assert np.all(got[1][:, 1] == 0)


@pytest.mark.parametrize("flavor", ["ort", "trt"])
def test_exported_model_structure(exported, flavor):
    model = exported[flavor]
    conv, report = convert_to_fp16(model)
    onnx.checker.check_model(conv, full_check=True)
    assert [(i.name, i.type.tensor_type.elem_type) for i in conv.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in conv.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    types = tensor_types(conv)
    nodes = {n.name: n for n in conv.graph.node}
    inits = {i.name: i for i in conv.graph.initializer}
    backbone = [n for n in conv.graph.node if n.op_type == "Conv" and n.name.startswith("/backbone/")]
    assert backbone and all(inits[n.input[1]].data_type == H for n in backbone)
    assert all(types[n.output[0]] == H for n in backbone)
    kept = set(report.kept_nodes)
    for name in ("/bbox_head/fc_cls/Gemm", "/bbox_head/fc_reg/Gemm", "/mask_head/conv_logits/Conv",
                 "/rpn_head/rpn_cls/Conv", "/rpn_head/rpn_reg/Conv"):
        assert name in kept and inits[nodes[name].input[1]].data_type == F
    for node in conv.graph.node:  # sensitive ops, GroupNorm statistics, plugins and NMS see fp32 only
        if node.op_type in ("Softmax", "Sigmoid", "Exp", "InstanceNormalization", "MultiLevelRoIAlign",
                            "BatchedNMS", "NonMaxSuppression", "RoiAlign", "TopK"):
            assert all(types.get(i) != FLOAT16 for i in node.input if i), node.name
    # the input normalisation (Sub / Div on the uint8 image) stays fp32; the first conv gets a Cast
    first = nodes["/backbone/conv1/Conv"]
    cast = next(n for n in conv.graph.node if first.input[0] in n.output)
    assert cast.op_type == "Cast" and types[cast.input[0]] == F
    assert all(types[o] != H for n in conv.graph.node if n.op_type in ("Sub", "Div") for o in n.output)
    assert report.fp16_nodes and report.constants_converted > 40


@pytest.mark.parametrize("flavor", ["ort", "trt"])
def test_exported_model_numerics(exported, synthetic_root, flavor):
    model = exported[flavor]
    conv, _ = convert_to_fp16(model)
    s32, s16 = _session(model, flavor), _session(conv, flavor)
    ds = CocoPanopticDataset(synthetic_root, "val")
    batch, sizes, _ = prepare_batch([ds[i]["image"] for i in range(3)], 256, 192, 32)
    for i in range(3):
        feed = {"images": batch[i:i + 1], "image_sizes": sizes[i:i + 1]}
        ref = dict(zip([o.name for o in s32.get_outputs()], s32.run(None, feed)))
        got = dict(zip([o.name for o in s16.get_outputs()], s16.run(None, feed)))
        sem_ref, sem = ref["semantic_logits"], got["semantic_logits"]
        assert np.abs(sem - sem_ref).max() < 0.02 * np.abs(sem_ref).max()
        assert (sem.argmax(1) == sem_ref.argmax(1)).mean() > 0.99
        n = int(ref["num_detections"][0])
        assert n > 0 and abs(int(got["num_detections"][0]) - n) <= max(1, n // 20)  # the firing model detects
        matched = _match(ref, got, n)
        assert len(matched) >= 0.95 * n  # near-equal scores may swap order or the last kept box
        for r, g in matched:
            assert abs(got["scores"][0, g] - ref["scores"][0, r]) < 2e-3
            assert np.abs(got["mask_probs"][0, g] - ref["mask_probs"][0, r]).max() < 0.02


def _match(ref, got, n, tol=0.5):
    """(ref row, got row) pairs with the same label and boxes within ``tol`` pixels."""
    m = int(got["num_detections"][0])
    pairs, used = [], set()
    for r in range(n):
        d = np.abs(got["boxes"][0, :m] - ref["boxes"][0, r]).max(1)
        d[got["labels"][0, :m] != ref["labels"][0, r]] = np.inf
        for g in np.argsort(d):
            if d[g] > tol:
                break
            if g not in used:
                used.add(int(g))
                pairs.append((r, int(g)))
                break
    return pairs


def test_keep_lists(exported):
    model = exported["ort"]
    conv, report = convert_to_fp16(model, keep_nodes=["/backbone/conv1/Conv"], keep_op_types=["Resize",
                                                                                               "InstanceNormalization"])
    assert "/backbone/conv1/Conv" in report.kept_nodes
    types = tensor_types(conv)
    assert all(types[n.output[0]] == F for n in conv.graph.node if n.op_type == "Resize")
    everything, _ = convert_to_fp16(model, keep_sensitive=False)
    inits = {i.name: i for i in everything.graph.initializer}
    fc_cls = next(n for n in everything.graph.node if n.name == "/bbox_head/fc_cls/Gemm")
    assert inits[fc_cls.input[1]].data_type == H
