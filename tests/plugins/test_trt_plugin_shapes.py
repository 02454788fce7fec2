"""Shape / type descriptions of the TensorRT plugins (plugins/trt_plugins.py) as plain functions,
and the registration wrappers driven through a stand-in ``tensorrt.plugin`` module (no TensorRT
here): output shapes, launch grids, the kernel argument list, and the decorator signatures
TensorRT's validator expects (inputs, attributes in registration order, ``outputs, tactic``)."""
from __future__ import annotations

import inspect
import sys
import types
import typing

import pytest

from pfpn.plugins import trt_plugins as tp
from pfpn.plugins.trt_plugins import PluginShapeError


def test_roi_align_output_dims_static_and_symbolic():
    feats = [[2, 256, 200, 336], [2, 256, 100, 168], [2, 256, 50, 84], [2, 256, 25, 42]]
    assert tp.roi_align_output_dims([2000, 5], feats, 7, 7) == [2000, 256, 7, 7]
    k, c = object(), object()  # symbolic dims pass through untouched
    sym = [[None, c, None, None]] * 4
    assert tp.roi_align_output_dims([k, 5], sym, 14, 14) == [k, c, 14, 14]
    assert tp.roi_align_output_dims([0, 5], feats, 7, 7)[0] == 0  # empty input -> empty output


@pytest.mark.parametrize("rois, feats, oh, match", [
    ([10, 4], [[1, 8, 4, 4]] * 4, 7, "rois must be"),
    ([10], [[1, 8, 4, 4]] * 4, 7, "rank"),
    ([10, 5], [[1, 8, 4, 4]] * 3, 7, "4 feature maps"),
    ([10, 5], [[1, 8, 4, 4]] * 3 + [[1, 16, 2, 2]], 7, "channel"),
    ([10, 5], [[1, 8, 4, 4]] * 3 + [[2, 8, 2, 2]], 7, "batch"),
    ([10, 5], [[1, 8, 4]] * 4, 7, "rank"),
    ([10, 5], [[1, 8, 4, 4]] * 4, 0, "positive"),
])
def test_roi_align_output_dims_errors(rois, feats, oh, match):
    with pytest.raises(PluginShapeError, match=match):
        tp.roi_align_output_dims(rois, feats, oh, 7)


def test_roi_align_dtypes():
    assert tp.roi_align_output_dtype(["float32"] * 5) == "float32"
    with pytest.raises(PluginShapeError, match="float32"):
        tp.roi_align_output_dtype(["float32", "float16", "float32", "float32", "float32"])
    with pytest.raises(PluginShapeError, match="5 inputs"):
        tp.roi_align_output_dtype(["float32"] * 4)


def test_nms_output_dims_are_data_independent():
    assert tp.nms_output_dims([2, 5000, 4], [2, 5000], [2, 5000], 1000) == ([2, 1000], [2])
    b = object()
    assert tp.nms_output_dims([b, None, 4], [b, None], [b, None], 100) == ([b, 100], [b])
    assert tp.nms_output_dims([1, 0, 4], [1, 0], [1, 0], 100) == ([1, 100], [1])  # no boxes: still [B, K]


@pytest.mark.parametrize("boxes, scores, groups, k, match", [
    ([2, 10, 5], [2, 10], [2, 10], 5, "boxes must be"),
    ([2, 10, 4], [2, 11], [2, 10], 5, "disagree on N"),
    ([2, 10, 4], [3, 10], [2, 10], 5, "disagree on B"),
    ([2, 10], [2, 10], [2, 10], 5, "ranks"),
    ([2, 10, 4], [2, 10], [2, 10], 0, "positive"),
])
def test_nms_output_dims_errors(boxes, scores, groups, k, match):
    with pytest.raises(PluginShapeError, match=match):
        tp.nms_output_dims(boxes, scores, groups, k)


def test_nms_dtypes():
    assert tp.nms_output_dtypes(["float32", "float32", "int64"]) == ("int64", "int64")
    with pytest.raises(PluginShapeError, match="int64 groups"):
        tp.nms_output_dtypes(["float32", "float32", "int32"])


def test_target_sm():
    assert tp.plugin_target_sm({"PFPN_PLUGIN_SM": "87"}) == 87
    assert tp.plugin_target_sm({"PFPN_PLUGIN_SM": "sm_90a"}) == 90
    assert tp.plugin_target_sm({}, gpu_sm=89) == 89
    assert tp.plugin_target_sm({}, gpu_sm=103) == 100  # B300: the sm_100 PTX, JIT-compiled forward
    assert tp.plugin_target_sm({}, gpu_sm=121) == 120
    with pytest.raises(PluginShapeError, match="older than every target"):
        tp.plugin_target_sm({}, gpu_sm=70)
    with pytest.raises(PluginShapeError, match="SM number"):
        tp.plugin_target_sm({"PFPN_PLUGIN_SM": "hopper"})


def test_plugin_ids_match_the_onnx_nodes():
    from pfpn.plugins.names import PLUGIN_NAMESPACE, PLUGIN_VERSION

    assert tp.PLUGIN_IDS == ("pfpn::MultiLevelRoIAlign", "pfpn::BatchedNMS")
    assert PLUGIN_NAMESPACE == "pfpn" and PLUGIN_VERSION == "1"
    infos = tp.plugin_infos()
    assert [(i["namespace"], i["name"], i["version"]) for i in infos] == [
        ("pfpn", "MultiLevelRoIAlign", "1"), ("pfpn", "BatchedNMS", "1")]


# ----------------------------------------------------------------------------------------------
# the registration wrappers, through stand-ins for tensorrt / tensorrt.plugin

class _Desc:
    def __init__(self, dtype, shape):
        self.dtype = dtype
        self.shape_expr = list(shape)


class _LaunchParams:
    grid_x: object = None
    block_x: object = None
    shared_mem: object = None


def _fake_tensorrt(monkeypatch):
    registered: dict[str, dict[str, typing.Callable]] = {}
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.TensorDesc = _Desc
    trtp.KernelLaunchParams = _LaunchParams
    trtp.SymInt32 = lambda e: ("i32", e)
    trtp.SymIntExprs = type("SymIntExprs", (), {"from_tuple": staticmethod(lambda t: list(t))})
    trtp.from_shape_expr = lambda shape, dtype: _Desc(dtype, shape)

    def decorator(kind):
        def outer(plugin_id):
            def inner(fn):
                registered.setdefault(plugin_id, {})[kind] = fn
                return fn
            return inner
        return outer

    trtp.register = decorator("register")
    trtp.aot_impl = decorator("aot_impl")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"
    trt.Builder = object
    for name in ("float32", "float16", "int32", "int64", "int8", "bool"):
        setattr(trt, name, name)
    trt.plugin = trtp
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(tp, "_registered", False)
    return registered


def test_registration_wrappers(monkeypatch):
    registered = _fake_tensorrt(monkeypatch)
    monkeypatch.setenv("PFPN_PLUGIN_SM", "90")
    monkeypatch.setattr(tp, "COMPILED", {})
    assert tp.register_plugins() == list(tp.PLUGIN_IDS)
    assert set(registered) == set(tp.PLUGIN_IDS)

    for pid, attrs in ((tp.ROI_ALIGN_ID, tp.ROI_ALIGN_ATTRS), (tp.NMS_ID, tp.NMS_ATTRS)):
        reg, aot = registered[pid]["register"], registered[pid]["aot_impl"]
        reg_params = list(inspect.signature(reg).parameters.values())
        aot_params = list(inspect.signature(aot).parameters.values())
        n_in = len(reg_params) - len(attrs)
        assert [p.name for p in reg_params[n_in:]] == list(attrs)  # the ONNX attributes, in order
        # the table the conformance check reads (runtime/trt/conformance.py) says the same
        spec = next(s for s in tp.PLUGIN_SPECS if f"{s['namespace']}::{s['name']}" == pid)
        onnx_type = {int: "INT", float: "FLOAT"}
        assert {p.name: onnx_type[p.annotation] for p in reg_params[n_in:]} == spec["attributes"]
        assert len(spec["input_types"]) == n_in
        assert all(p.annotation is _Desc for p in reg_params[:n_in])  # real objects, not strings
        assert all(p.annotation in (int, float) for p in reg_params[n_in:])
        assert [p.name for p in aot_params] == [p.name for p in reg_params] + ["outputs", "tactic"]
        assert typing.get_origin(inspect.signature(aot).return_annotation) is tuple

    f32, i64 = "float32", "int64"
    feats = [_Desc(f32, (2, 64, h, w)) for h, w in ((48, 64), (24, 32), (12, 16), (6, 8))]
    rois = _Desc(f32, ("K", 5))
    reg = registered[tp.ROI_ALIGN_ID]["register"]
    out = reg(rois, *feats, 7, 7, 0, 4, 56.0)
    assert out.dtype == f32 and out.shape_expr == ["K", 64, 7, 7]
    with pytest.raises(PluginShapeError):
        reg(_Desc("float16", ("K", 5)), *feats, 7, 7, 0, 4, 56.0)

    rois = _Desc(f32, (600, 5))
    name, ptx, launch, extra = registered[tp.ROI_ALIGN_ID]["aot_impl"](rois, *feats, 7, 7, 0, 4, 56.0, (out,), 0)
    assert name == "roi_align_kernel" and ".entry roi_align_kernel" in ptx
    assert launch.grid_x == 600 * 49 + 1 and launch.block_x == 128 and launch.shared_mem == 0
    assert extra == [("i32", v) for v in (600, 64, 48, 64, 24, 32, 12, 16, 6, 8)]

    boxes, scores, groups = _Desc(f32, (2, 1500, 4)), _Desc(f32, (2, 1500)), _Desc(i64, (2, 1500))
    sel, cnt = registered[tp.NMS_ID]["register"](boxes, scores, groups, 0.7, -0.5, 300)
    assert (sel.dtype, sel.shape_expr, cnt.dtype, cnt.shape_expr) == (i64, [2, 300], i64, [2])
    name, ptx, launch, extra = registered[tp.NMS_ID]["aot_impl"](boxes, scores, groups, 0.7, -0.5, 300, (sel, cnt), 0)
    assert name == "nms_kernel" and launch.grid_x == 2 and launch.block_x == 256
    assert extra == [("i32", 2), ("i32", 1500)]
    assert tp.COMPILED[tp.NMS_ID]["ptx_target"] == "sm_90" and tp.COMPILED[tp.NMS_ID]["sm"] == 90
    assert tp.plugin_infos()[1]["kernel"]["kernel"] == "nms_kernel"
