"""benchmarks/op_profile.py: the profile trace aggregation on hand-made events, and a real
profile of the small export whose op types are the graph's."""
from __future__ import annotations

import onnx
import pytest

from pfpn.benchmarks.op_profile import aggregate_trace, format_profile, onnx_op_profile


def _node(name, op, ts, dur):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_aggregate_trace_skips_the_warm_up_run():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              _node("conv1", "Conv", 1, 90_000), _node("roi", "RoiAlign", 2, 10_000),  # warm-up: left out
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              _node("conv1", "Conv", 201, 3_000), _node("conv2", "Conv", 202, 3_000),
              _node("roi", "RoiAlign", 203, 2_000), {"cat": "Node", "name": "conv1_fence_before", "ts": 204, "dur": 5}]
    rows = aggregate_trace(events, skip_runs=1)
    assert [(r["op"], r["ms"], r["nodes"]) for r in rows] == [("Conv", 6.0, 2), ("RoiAlign", 2.0, 1)]
    assert rows[0]["share"] == pytest.approx(0.75)
    assert format_profile(rows) == "Conv 6 ms (75 %), RoiAlign 2 ms (25 %)"
    assert aggregate_trace(events)[0]["ms"] == 96.0  # without skipping, the warm-up dominates


def test_profile_of_the_small_export(tiny_onnx, synthetic_root):
    import cv2

    image = cv2.imread(str(next((synthetic_root / "val2017").glob("*.jpg"), None)
                           or next((synthetic_root / "val2017").iterdir())))
    rows = onnx_op_profile(tiny_onnx, [image], threads=1)
    graph = onnx.load(str(tiny_onnx)).graph
    assert rows and sum(r["share"] for r in rows) == pytest.approx(1.0)
    by_op = {r["op"]: r for r in rows}
    # the four RoiAlign nodes of each of the two RoI heads (one per level), as exported
    assert by_op["RoiAlign"]["nodes"] == sum(n.op_type == "RoiAlign" for n in graph.node) == 8
    assert 0 < by_op["Conv"]["nodes"] <= sum(n.op_type == "Conv" for n in graph.node)
