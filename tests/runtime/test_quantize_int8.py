"""INT8 CPU quantization: the network runs as fused int8 ops in ONNX Runtime and stays close to fp32."""
import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfpn.runtime import Predictor
from pfpn.runtime.int8_rewrites import conv_transpose_to_conv, prepare_for_int8, reduce_sum_to_adds, untie_initializers
from pfpn.runtime.quantize_int8 import quantize_int8

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx, synthetic_root, tmp_path_factory):
    calib = sorted((synthetic_root / "train2017").iterdir())[:8]
    return quantize_int8(tiny_onnx, tmp_path_factory.mktemp("int8") / "int8.onnx", calib)


def _session(path, **config):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for key, value in config.items():
        setattr(options, key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(image_path, size=(256, 192)):
    import cv2

    from pfpn.runtime.preprocess import prepare_batch

    batch, sizes, _ = prepare_batch([cv2.imread(str(image_path))], size[0], size[1], 32)
    return {"images": batch, "image_sizes": sizes}


def test_quantize_and_run(int8_onnx, tiny_onnx, synthetic_root):
    model = onnx.load(str(int8_onnx))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    convs_quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert convs_quantized > 20
    fp32, int8 = Predictor(tiny_onnx, threads=1), Predictor(int8_onnx, threads=1)
    assert int8.metadata.categories == fp32.metadata.categories and "int8" in int8.metadata.source
    # random weights biased to detect give ~100 near-tied detections, so compare the network's
    # semantic output (argmax of the logits) rather than instance numbering
    from pfpn.runtime.preprocess import prepare_batch

    agree = []
    for image in sorted((synthetic_root / "val2017").iterdir())[:3]:
        import cv2

        batch, sizes, _ = prepare_batch([cv2.imread(str(image))], 256, 192, 32)
        a = fp32.backend.run(batch, sizes)["semantic_logits"].argmax(1)
        b = int8.backend.run(batch, sizes)["semantic_logits"].argmax(1)
        agree.append(float(np.mean(a == b)))
        assert int8.predict(image).id_map.shape == fp32.predict(image).id_map.shape
    assert np.mean(agree) > 0.9, agree


def test_all_convolutions_fused(int8_onnx, tiny_onnx, tmp_path):
    """In the graph ONNX Runtime actually runs, every convolution / fully-connected layer is int8."""
    import onnxruntime as ort

    optimized = tmp_path / "optimized.onnx"
    _session(int8_onnx, graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             optimized_model_filepath=str(optimized))
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    fp32_ops = collections.Counter(n.op_type for n in onnx.load(str(tiny_onnx)).graph.node)
    assert ops["Conv"] == 0 and ops["ConvTranspose"] == 0 and ops["Gemm"] == 0, ops
    # each Conv and the mask head's ConvTranspose, plus conv_logits split per 2x2 block position
    assert ops["QLinearConv"] == fp32_ops["Conv"] + fp32_ops["ConvTranspose"], ops
    assert ops["QGemm"] == fp32_ops["Gemm"]


def test_quantized_tensors_read_quantized(int8_onnx):
    """No Shape reads a dequantized tensor, and quantized Convs feed QuantizeLinear only."""
    graph = onnx.load(str(int8_onnx)).graph
    producers = {o: n for n in graph.node for o in n.output}
    users = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    for node in graph.node:
        if node.op_type == "Shape":
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
        if node.op_type == "Conv" and producers[node.input[0]].op_type == "DequantizeLinear":
            assert {u.op_type for u in users[node.output[0]]} == {"QuantizeLinear"}, node.name


def test_prepare_for_int8_is_exact(tiny_onnx, synthetic_root, tmp_path):
    model = onnx.load(str(tiny_onnx))
    changed = prepare_for_int8(model)
    assert changed["conv_transpose"] == 1 and changed["level_sums"] == 1
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["ConvTranspose"] == 0 and ops["Identity"] == 0
    prepared = tmp_path / "prepared.onnx"
    onnx.save(model, prepared)
    feed = _feed(sorted((synthetic_root / "val2017").iterdir())[0])
    a = _session(tiny_onnx).run(None, feed)
    b = _session(prepared).run(None, feed)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def _conv_graph():
    """x -> ConvT(k2 s2) -> Relu -> Conv1x1 -> y, and x -> Conv(w) + Conv(Identity(w)) -> z."""
    rng = np.random.default_rng(0)
    w_t = rng.normal(size=(8, 6, 2, 2)).astype(np.float32)
    b_t = rng.normal(size=6).astype(np.float32)
    w_l = rng.normal(size=(5, 6, 1, 1)).astype(np.float32)
    b_l = rng.normal(size=5).astype(np.float32)
    w = rng.normal(size=(4, 8, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w_t, "wt"), (b_t, "bt"), (w_l, "wl"), (b_l, "bl"), (w, "w"), (np.zeros(4, np.float32), "b"))]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["t"], name="/mask_head/up/ConvTranspose",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["r"], name="/mask_head/Relu"),
        helper.make_node("Conv", ["r", "wl", "bl"], ["y"], name="/mask_head/logits/Conv", kernel_shape=[1, 1]),
        helper.make_node("Identity", ["w"], ["w2"], name="Identity_0"),
        helper.make_node("Identity", ["b"], ["b2"], name="Identity_1"),
        helper.make_node("Conv", ["x", "w", "b"], ["z1"], name="/neck/a/Conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["x", "w2", "b2"], ["z2"], name="/neck/b/Conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["x", "w", "b"], ["z3"], name="/neck/c/Conv", kernel_shape=[3, 3], pads=[1] * 4),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 5, 7])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z1", "z2", "z3")]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_rewrites_exact(tmp_path):
    model = _conv_graph()
    original = tmp_path / "a.onnx"
    onnx.save(model, original)
    assert untie_initializers(model) == 4  # two Identity copies, w and b copied for the third conv
    conv_inputs = [list(n.input[1:]) for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/neck")]
    assert len({name for inputs in conv_inputs for name in inputs}) == 6
    assert conv_transpose_to_conv(model) == 1
    assert [n.op_type for n in model.graph.node][:4] == ["Conv", "Relu", "Conv", "DepthToSpace"]
    rewritten = tmp_path / "b.onnx"
    onnx.save(model, rewritten)
    x = np.random.default_rng(1).normal(size=(2, 8, 5, 7)).astype(np.float32)
    for a, b in zip(_session(original).run(None, {"x": x}), _session(rewritten).run(None, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_reduce_sum_to_adds_exact(tmp_path):
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    nodes = [helper.make_node("Unsqueeze", [n, "zero"], [n + "_u"], name=f"/semantic_head/Unsqueeze_{n}")
             for n in ("a", "b", "c")]
    nodes += [helper.make_node("Concat", ["a_u", "b_u", "c_u"], ["cat"], name="/semantic_head/Concat", axis=0),
              helper.make_node("ReduceSum", ["cat", "zero"], ["s"], name="/semantic_head/ReduceSum", keepdims=0)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("a", "b", "c")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
                              [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "a.onnx")
    assert reduce_sum_to_adds(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add", "Add"]
    onnx.save(model, tmp_path / "b.onnx")
    rng = np.random.default_rng(2)
    feed = {n: rng.normal(size=(1, 3, 4, 4)).astype(np.float32) for n in ("a", "b", "c")}
    np.testing.assert_allclose(_session(tmp_path / "a.onnx").run(None, feed)[0],
                               _session(tmp_path / "b.onnx").run(None, feed)[0], rtol=1e-6, atol=1e-6)


def test_quantize_errors(tmp_path, synthetic_root, tiny_onnx):
    proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "quantize_int8.py"), "--onnx", str(tiny_onnx),
                           "--calib-images", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--calib-images: " in proc.stderr and "does not exist" in proc.stderr
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", [])
