"""TensorRT conformance check (runtime/trt/conformance.py): each rule fires on a graph that breaks
it, the export as it was before the uint8 fix is flagged, and every graph this project exports or
prepares for TensorRT (small and R-50, both flavors, fp16, Q/DQ) has zero errors and only the
warnings the README explains."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfpn.runtime import build_engine as be
from pfpn.runtime.trt.conformance import OPERATOR_TYPES, check_onnx

# what the README's "TensorRT conformance" section explains
EXPLAINED_WARNINGS = {"nms-box-limit"}
EXPLAINED_NOTES = {"int64-narrowed", "plugin-library", "plugin-fields"}


def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports)


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _rules(model, severity="error"):
    return check_onnx(model).rules(severity)


# ----------------------------------------------------------------------------------------------
# rules, one by one

def test_uint8_input_must_feed_a_cast():
    bad = _model([helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2]),
                  helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)],
                 [_vi("images", TensorProto.UINT8, [1, 8, 8, 3])], [_vi("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    report = check_onnx(bad)
    assert "uint8-input" in report.rules("error")
    assert any(f.op == "Transpose" for f in report.errors)
    good = _model([helper.make_node("Cast", ["images"], ["c"], to=TensorProto.FLOAT),
                   helper.make_node("Transpose", ["c"], ["y"], perm=[0, 3, 1, 2])],
                  [_vi("images", TensorProto.UINT8, [1, 8, 8, 3])], [_vi("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    assert not check_onnx(good).errors
    to_int = _model([helper.make_node("Cast", ["images"], ["y"], to=TensorProto.INT32)],
                    [_vi("images", TensorProto.UINT8, [4])], [_vi("y", TensorProto.INT32, [4])])
    assert "uint8-input" in _rules(to_int)


def test_the_export_before_the_uint8_fix_is_flagged(tiny_checkpoint, tmp_path, monkeypatch):
    """Today's graph (permute, then cast) against the fixed one, through the real exporter."""
    from pfpn.export import graph as export_graph
    from pfpn.export import to_onnx

    def transpose_then_cast(images, image_sizes, mean, std):  # the export's normalize_padded before the fix
        import torch

        x = images.permute(0, 3, 1, 2).float()[:, [2, 1, 0]]
        x = (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(
            std, dtype=torch.float32).view(1, 3, 1, 1)
        rows = torch.arange(x.shape[2]).view(1, -1, 1)
        cols = torch.arange(x.shape[3]).view(1, 1, -1)
        valid = (rows < image_sizes[:, 0].view(-1, 1, 1)) & (cols < image_sizes[:, 1].view(-1, 1, 1))
        return torch.where(valid.unsqueeze(1), x, torch.zeros_like(x))

    monkeypatch.setattr(export_graph, "normalize_padded", transpose_then_cast)
    old = tmp_path / "old.onnx"
    assert to_onnx.main(["--ckpt", str(tiny_checkpoint), "--out", str(old), "--threads", "1"]) == 0
    errors = check_onnx(onnx.load(str(old))).errors
    assert {f.op for f in errors} == {"Transpose"}  # the one node, and nothing else in the graph
    assert {f.rule for f in errors} == {"uint8-input", "uint8-intermediate", "input-type"}


def test_type_table_and_fixed_graph_patterns():
    """The three patterns the ort-flavor export used to contain: INT64 CumSum, BOOL NonZero, INT64 Clip."""
    x64 = _vi("x", TensorProto.INT64, [4])
    cumsum = _model([helper.make_node("CumSum", ["x", "axis"], ["y"])], [x64], [_vi("y", TensorProto.INT64, [4])],
                    [_const("axis", np.int64(0))])
    nonzero = _model([helper.make_node("NonZero", ["b"], ["y"])], [_vi("b", TensorProto.BOOL, [4])],
                     [_vi("y", TensorProto.INT64, [1, None])])
    clip = _model([helper.make_node("Clip", ["x", "lo"], ["y"])], [x64], [_vi("y", TensorProto.INT64, [4])],
                  [_const("lo", np.int64(0))])
    for model in (cumsum, nonzero, clip):
        assert "input-type" in _rules(model)
    assert "NonZero" in OPERATOR_TYPES and "BOOL" not in OPERATOR_TYPES["NonZero"]


def test_unsupported_op_and_opset():
    model = _model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="i,i->")],
                   [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [])])
    assert "unsupported-op" in _rules(model)
    relu = lambda opset: _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, [4])],
                                [_vi("y", TensorProto.FLOAT, [4])], opset=opset)
    assert "opset" in _rules(relu(8))
    assert "opset" in _rules(relu(21), "warning") and not check_onnx(relu(21)).errors
    assert not check_onnx(relu(17)).findings


def test_roi_align_sampling_ratio_default_differs():
    def roi(**attrs):
        return _model([helper.make_node("RoiAlign", ["f", "r", "b"], ["y"], output_height=7, output_width=7, **attrs)],
                      [_vi("f", TensorProto.FLOAT, [1, 8, 16, 16]), _vi("r", TensorProto.FLOAT, [3, 4]),
                       _vi("b", TensorProto.INT64, [3])], [_vi("y", TensorProto.FLOAT, [3, 8, 7, 7])])

    assert "roialign-sampling" in _rules(roi())  # TensorRT would use 1, ONNX Runtime 0
    assert not check_onnx(roi(sampling_ratio=0)).errors
    assert "roialign-coordinates" in _rules(roi(sampling_ratio=0, coordinate_transformation_mode="nearest"))
    assert "plugin-library" in _rules(roi(sampling_ratio=0), "note")


def test_topk_limits():
    def topk(k, **attrs):
        return _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, **attrs)],
                      [_vi("x", TensorProto.FLOAT, [1, 10000])],
                      [_vi("v", TensorProto.FLOAT, [1, k]), _vi("i", TensorProto.INT64, [1, k])],
                      [_const("k", np.array([k], np.int64))])

    assert not check_onnx(topk(3840)).errors
    assert "topk-k" in _rules(topk(3841))
    assert "topk-sorted" in _rules(topk(10, sorted=0))


def test_nms_box_limit_warning():
    def nms(n):
        return _model([helper.make_node("NonMaxSuppression", ["b", "s", "k"], ["y"])],
                      [_vi("b", TensorProto.FLOAT, [1, n, 4]), _vi("s", TensorProto.FLOAT, [1, 1, n])],
                      [_vi("y", TensorProto.INT64, [None, 3])], [_const("k", np.array([100], np.int64))])

    assert "nms-box-limit" not in _rules(nms(5000), "warning")
    assert "nms-box-limit" in _rules(nms(5001), "warning")


def test_resize_mod_maxpool_rules():
    x = _vi("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = _vi("y", TensorProto.FLOAT, [1, 2, 8, 8])
    scales = _const("scales", np.array([1, 1, 2, 2], np.float32))
    resize = lambda **a: _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], **a)], [x], [y], [scales])
    assert not check_onnx(resize(mode="linear")).errors
    assert "resize-antialias" in _rules(resize(mode="linear", antialias=1))
    assert "resize-coordinates" in _rules(resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"))
    assert "resize-mode" in _rules(resize(mode="cubic"), "warning")
    mod = _model([helper.make_node("Mod", ["a", "a"], ["y"])], [_vi("a", TensorProto.FLOAT, [4])],
                 [_vi("y", TensorProto.FLOAT, [4])])
    assert "mod-fmod" in _rules(mod)
    pool = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], [x],
                  [_vi("y", TensorProto.FLOAT, [1, 2, 2, 2])])
    assert "maxpool-dilations" in _rules(pool)


def test_uint8_intermediate_and_quantized_types():
    inter = _model([helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8),
                    helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT)],
                   [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    assert "uint8-intermediate" in _rules(inter)
    q = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
               [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])],
               [_const("s", np.float32(0.1)), _const("z", np.int8(3))])
    assert "qdq-zero-point" in _rules(q)


def _custom(op="MultiLevelRoIAlign", namespace="pfpn", finest=("finest_scale", 56.0), extra=None):
    attrs = dict(output_height=7, output_width=7, sampling_ratio=0, base_stride=4, plugin_version="1")
    if namespace is not None:
        attrs["plugin_namespace"] = namespace
    if finest:
        attrs[finest[0]] = finest[1]
    attrs.update(extra or {})
    node = helper.make_node(op, ["r", "p2", "p3", "p4", "p5"], ["y"], domain="ai.onnx.contrib", **attrs)
    feats = [_vi(f"p{i}", TensorProto.FLOAT, [1, 8, 32 >> i, 32 >> i]) for i in range(2, 6)]
    return _model([node], [_vi("r", TensorProto.FLOAT, [3, 5])] + feats, [_vi("y", TensorProto.FLOAT, [3, 8, 7, 7])],
                  domains=["ai.onnx.contrib"])


def test_custom_nodes_against_the_registered_plugins():
    assert not check_onnx(_custom()).errors
    assert "plugin-unknown" in _rules(_custom(op="MultiLevelRoIAlignV2"))
    assert "plugin-identity" in _rules(_custom(namespace=None))  # the parser would look in ""
    assert "plugin-identity" in _rules(_custom(namespace="trt"))
    assert "plugin-attribute" in _rules(_custom(finest=("finest_scale", 56)))  # INT where the plugin has FLOAT
    assert "plugin-attribute" in _rules(_custom(finest=None))
    assert "plugin-shadowed" in _rules(_custom(op="RoiAlign"))


# ----------------------------------------------------------------------------------------------
# every graph the project exports or prepares

def _assert_clean(report, label):
    assert not report.errors, f"{label}:\n{report.format(notes=False)}"
    assert report.rules("warning") <= EXPLAINED_WARNINGS, f"{label}: unexplained warnings\n{report.format()}"
    assert report.rules("note") <= EXPLAINED_NOTES, f"{label}: unexplained notes\n{report.format()}"


def test_small_exports_conform(tiny_onnx, tiny_trt_onnx):
    for path in (tiny_onnx, tiny_trt_onnx):
        _assert_clean(check_onnx(onnx.load(str(path))), path.name)


def _prepared(onnx_path: Path, tmp_path: Path, extra: list[str]) -> onnx.ModelProto:
    out = tmp_path / f"{onnx_path.stem}_{'_'.join(e.strip('-') for e in extra[:1])}.onnx"
    assert be.main(["--onnx", str(onnx_path), "--dry-run", "--save-onnx", str(out), *extra]) == 0
    return onnx.load(str(out))


def test_small_fp16_and_qdq_graphs_conform(tiny_onnx, tiny_trt_onnx, synthetic_root, tmp_path):
    calib = ["--int8", "--calib-images", str(synthetic_root / "val2017"), "--calib-count", "2", "--trt-api", "11"]
    for path in (tiny_onnx, tiny_trt_onnx):
        _assert_clean(check_onnx(_prepared(path, tmp_path, ["--fp16", "--trt-api", "11"])), f"{path.name} fp16")
        _assert_clean(check_onnx(_prepared(path, tmp_path, calib)), f"{path.name} qdq")


@pytest.mark.slow
def test_r50_exports_and_prepared_graphs_conform(r50_exports, synthetic_root, tmp_path):
    for flavor, path in r50_exports.items():
        report = check_onnx(onnx.load(str(path)))
        _assert_clean(report, path.name)
        if flavor == "ort":  # 1000 proposals x 80 classes enter the box head's NonMaxSuppression
            assert "nms-box-limit" in report.rules("warning")
        _assert_clean(check_onnx(_prepared(path, tmp_path, ["--fp16", "--trt-api", "11"])), f"{path.name} fp16")
    calib = ["--int8", "--calib-images", str(synthetic_root / "val2017"), "--calib-count", "1", "--trt-api", "11",
             "--opt-shape", "1x320x320", "--min-shape", "1x320x320", "--max-shape", "1x320x320"]
    _assert_clean(check_onnx(_prepared(r50_exports["ort"], tmp_path, calib)), "r50 ort qdq")


def test_check_cli(tiny_onnx, tmp_path, capsys):
    assert be.main(["--onnx", str(tiny_onnx), "--check"]) == 0
    out = capsys.readouterr().out
    assert "0 errors" in out and "TensorRT 10.x/11.x ONNX parser conformance" in out
    broken = onnx.load(str(tiny_onnx))
    for node in broken.graph.node:
        for attr in node.attribute:
            if node.op_type == "TopK" and attr.name == "sorted":
                attr.i = 0
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    assert be.main(["--onnx", str(path), "--check"]) == be.EXIT_BUILD
    captured = capsys.readouterr()
    assert "topk-sorted" in captured.out and "TensorRT conformance errors" in captured.err
