"""Where an ONNX Runtime model spends its time, per operator type: ONNX Runtime's own profiler on
the optimised graph it actually runs (fused int8 ops such as QLinearConv included).

    from pfpn.benchmarks.op_profile import onnx_op_profile
    onnx_op_profile("model_int8.onnx", images, threads=2)  # [{"op": "QLinearConv", "ms": ..., "share": ...}, ...]
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np


def _node_events(events: Sequence[dict], skip_runs: int):
    """(node name, op type, ms) of the node executions ("cat": "Node", "..._kernel_time") after
    the first ``skip_runs`` runs ("model_run" events)."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[skip_runs] if skip_runs and len(runs) > skip_runs else float("-inf")
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and e.get("ts", 0) >= start:
            yield name[: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"), float(e.get("dur", 0)) / 1000.0


def aggregate_trace(events: Sequence[dict], *, skip_runs: int = 0) -> list[dict]:
    """ONNX Runtime profile events -> per op type: total ms, node count, share of the summed node
    time; sorted by time (the first ``skip_runs`` runs left out)."""
    by_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for name, op, ms in _node_events(events, skip_runs):
        by_op[op] += ms
        nodes[op].add(name)
    total = sum(by_op.values()) or 1.0
    rows = [{"op": op, "ms": ms, "nodes": len(nodes[op]), "share": ms / total} for op, ms in by_op.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def aggregate_nodes(events: Sequence[dict], *, skip_runs: int = 0) -> list[dict]:
    """The same events per node: {"node", "op", "ms"}, sorted by time."""
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    for name, op, ms in _node_events(events, skip_runs):
        by_node[(name, op)] += ms
    return sorted(({"node": n, "op": op, "ms": ms} for (n, op), ms in by_node.items()), key=lambda r: -r["ms"])


def profile_events(model_path: str | os.PathLike, images: Sequence[np.ndarray], *, threads: int,
                   runs: int = 1) -> tuple[list[dict], float]:
    """ONNX Runtime's profile of an exported model's network (runtime pre-processing): one
    warm-up run, then ``runs`` passes over the images -> (trace events, wall seconds of the timed
    passes). Aggregate with ``skip_runs=1``."""
    import time

    import onnx
    import onnxruntime as ort

    from pfpn.export.metadata import read_metadata
    from pfpn.runtime.preprocess import prepare_batch

    meta = read_metadata(onnx.load(str(model_path), load_external_data=False))
    if meta.flavor == "trt":
        from pfpn.plugins.ort_ops import session_options

        options = session_options()
    else:
        options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    feeds = []
    for image in images:
        batch, sizes, _ = prepare_batch([image], meta.max_long_side, meta.max_short_side, meta.size_divisor)
        feeds.append({"images": batch, "image_sizes": sizes})
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds[0])  # warm-up (memory arena, packed weights)
        t0 = time.perf_counter()
        for _ in range(runs):
            for feed in feeds:
                session.run(None, feed)
        wall = time.perf_counter() - t0
        events = json.loads(Path(session.end_profiling()).read_text())
    return events, wall


def onnx_op_profile(model_path: str | os.PathLike, images: Sequence[np.ndarray], *, threads: int,
                    runs: int = 1) -> list[dict]:
    """:func:`aggregate_trace` rows of :func:`profile_events`, in ms per image."""
    events, _ = profile_events(model_path, images, threads=threads, runs=runs)
    rows = aggregate_trace(events, skip_runs=1)
    count = max(1, runs * len(images))
    for r in rows:
        r["ms"] /= count
    return rows


def format_profile(rows: Sequence[dict], top: int = 8) -> str:
    """'QLinearConv 612 ms (56 %), RoiAlign 180 ms (17 %), ...' for the ``top`` op types."""
    return ", ".join(f"{r['op']} {r['ms']:.0f} ms ({100 * r['share']:.0f} %)" for r in rows[:top])
