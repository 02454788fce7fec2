"""The TensorRT GPU checks (benchmarks/gpu_check.py), each skipped with the import error where
TensorRT is missing: ``trt_uint8_input`` and ``trt_plugins_alone`` (one-node networks),
``trt_engine_reload`` (the small model's engine built with runtime/build_engine.py's
build_engine, run in a fresh interpreter that never imports ``plugins``) and ``trt_end_to_end``
(runtime.Predictor on the engine vs ONNX Runtime)."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pfpn.benchmarks.gpu_check_common import (IMAGES_QUICK, CheckContext, SkipCheck, check_result,
                                              compare_label_maps, one_line, require_tensorrt, require_torch)
from pfpn.benchmarks.gpu_check_kernels import compare_nms, compare_roi_align, nms_cases, roi_align_cases
from pfpn.benchmarks.gpu_check_models import build_small_model, small_categories, small_images

ROOT = Path(__file__).resolve().parents[1]
MIN_PIXEL_AGREEMENT = 0.999  # trt_end_to_end


# ----------------------------------------------------------------------------------------------
# 6. TensorRT


def uint8_cast_transpose_model(shape: tuple[int, int, int, int] = (2, 5, 7, 3)) -> Any:
    """uint8 [B, H, W, 3] -> Cast(float) -> Transpose to [B, 3, H, W]: the export graph's input pattern."""
    import onnx
    from onnx import TensorProto, helper

    b, h, w, c = shape
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2])],
        "uint8_cast_transpose", [helper.make_tensor_value_info("images", TensorProto.UINT8, [b, h, w, c])],
        [helper.make_tensor_value_info("nchw", TensorProto.FLOAT, [b, c, h, w])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def plugin_node_model(kind: str, case: dict) -> Any:
    """A one-node ONNX model with the custom node the trt-flavor export emits for ``kind``
    ("roi_align": MultiLevelRoIAlign, "nms": BatchedNMS), static shapes from ``case``."""
    from onnx import TensorProto, helper

    from pfpn.plugins.names import CUSTOM_DOMAIN, NMS_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, ROI_ALIGN_NAME

    ident = dict(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if kind == "roi_align":
        feats, rois = case["feats"], case["rois"]
        inputs = [helper.make_tensor_value_info("rois", f32, list(rois.shape))]
        inputs += [helper.make_tensor_value_info(f"p{i + 2}", f32, list(f.shape)) for i, f in enumerate(feats)]
        node = helper.make_node(ROI_ALIGN_NAME, [v.name for v in inputs], ["pooled"], domain=CUSTOM_DOMAIN,
                                output_height=case["oh"], output_width=case["ow"], sampling_ratio=case["sampling"],
                                base_stride=4, finest_scale=56.0, **ident)
        outputs = [helper.make_tensor_value_info("pooled", f32, [rois.shape[0], feats[0].shape[1], case["oh"],
                                                                  case["ow"]])]
    elif kind == "nms":
        b, n = case["scores"].shape
        inputs = [helper.make_tensor_value_info("boxes", f32, [b, n, 4]),
                  helper.make_tensor_value_info("scores", f32, [b, n]),
                  helper.make_tensor_value_info("groups", i64, [b, n])]
        node = helper.make_node(NMS_NAME, ["boxes", "scores", "groups"], ["selected", "num_selected"],
                                domain=CUSTOM_DOMAIN, iou_threshold=float(case["iou"]),
                                score_threshold=float(case["thr"]), max_output_boxes=int(case["k"]), **ident)
        outputs = [helper.make_tensor_value_info("selected", i64, [b, int(case["k"])]),
                   helper.make_tensor_value_info("num_selected", i64, [b])]
    else:
        raise ValueError(f"kind must be 'roi_align' or 'nms', got {kind!r}")
    graph = helper.make_graph([node], f"one_{kind}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CUSTOM_DOMAIN, 1)])
    model.ir_version = 8
    return model


def plugin_feeds(kind: str, case: dict) -> dict[str, np.ndarray]:
    if kind == "roi_align":
        return {"rois": case["rois"], **{f"p{i + 2}": f for i, f in enumerate(case["feats"])}}
    return {"boxes": case["boxes"], "scores": case["scores"], "groups": np.asarray(case["groups"], np.int64)}


def trt_plugin_cases() -> dict[str, tuple[str, dict]]:
    """Small static-shape cases for the one-node TensorRT networks (no zero-sized tensors)."""
    roi = roi_align_cases(quick=True)
    nms = nms_cases(quick=True)
    return {"roi_align_random_7x7": ("roi_align", roi["random_7x7"]),
            "roi_align_zero_rows": ("roi_align", roi["zero_rows_degenerate"]),
            "nms_grouped": ("nms", nms["grouped_multichunk"]),
            "nms_zero_row": ("nms", nms["zero_row"])}


def trt_build(trt: Any, model: Any, *, python_plugins: bool = False, workspace_gb: float = 1.0) -> bytes:
    """Build a serialized TensorRT 10 engine from an ONNX model with static input shapes."""
    from pfpn.runtime.trt.builder import parse_network, serialize_network

    flags = 0
    enum = trt.NetworkDefinitionCreationFlag
    if python_plugins and hasattr(enum, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(enum.PREFER_AOT_PYTHON_PLUGINS)
    builder, network, _parser = parse_network(trt, model.SerializeToString(), logger=trt.Logger(trt.Logger.WARNING),
                                              flags=flags)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    return serialize_network(builder, network, config)


def trt_run(trt: Any, engine_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deserialize and run an engine once (name-based tensor API, runtime.cuda buffers and stream)."""
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.trt.runner import deserialize_engine

    logger = trt.Logger(trt.Logger.WARNING)
    context_gpu = cuda_driver.CudaContext(0)
    stream = context_gpu.create_stream()
    buffers: list[Any] = []
    try:
        _runtime, engine = deserialize_engine(trt, engine_bytes, logger)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            host = np.ascontiguousarray(feeds[name])
            want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if host.dtype != want:
                raise RuntimeError(f"engine input {name} is {want}, the feed {host.dtype}")
            if not context.set_input_shape(name, tuple(host.shape)):
                raise RuntimeError(f"TensorRT rejected shape {host.shape} for {name}")
            buf = cuda_driver.DeviceBuffer(host.nbytes)
            buffers.append(buf)
            buf.copy_from_host(host, stream)
            context.set_tensor_address(name, buf.ptr)
        outputs: dict[str, tuple[np.ndarray, Any]] = {}
        for name in names:
            if name in inputs:
                continue
            dims = context.get_tensor_shape(name)
            host = np.empty(tuple(int(dims[i]) for i in range(len(dims))),
                            np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            buf = cuda_driver.DeviceBuffer(host.nbytes)
            buffers.append(buf)
            context.set_tensor_address(name, buf.ptr)
            outputs[name] = (host, buf)
        if not context.execute_async_v3(stream.address):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for host, buf in outputs.values():
            if host.nbytes:
                buf.copy_to_host(host, stream)
        stream.synchronize()
        return {name: host for name, (host, _) in outputs.items()}
    finally:
        for buf in buffers:
            buf.close()
        stream.close()
        context_gpu.close()


def check_trt_uint8_input(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    model = uint8_cast_transpose_model()
    images = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 128, 255]
    out = trt_run(trt, trt_build(trt, model), {"images": images})["nchw"]
    expected = images.astype(np.float32).transpose(0, 3, 1, 2)
    ok = out.shape == expected.shape and bool(np.array_equal(out, expected))
    summary = f"TensorRT {trt.__version__}: uint8 {list(images.shape)} -> float {list(out.shape)}, " \
              f"{'equal to numpy' if ok else 'DIFFERENT from numpy'}"
    return check_result("pass" if ok else "fail", summary, tensorrt_version=trt.__version__,
                        max_abs_diff=float(np.abs(out - expected).max()) if out.shape == expected.shape else None,
                        reason="" if ok else "the uint8 -> Cast -> Transpose engine does not reproduce numpy")


def check_trt_plugins_alone(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    from pfpn.plugins import reference
    from pfpn.plugins.trt_plugins import COMPILED, register_plugins

    try:
        register_plugins()
    except ImportError as e:
        raise SkipCheck(f"TensorRT {trt.__version__} cannot host the project's plugins: {one_line(e)}") from None
    rows = {}
    for name, (kind, case) in trt_plugin_cases().items():
        got = trt_run(trt, trt_build(trt, plugin_node_model(kind, case), python_plugins=True), plugin_feeds(kind, case))
        if kind == "roi_align":
            expected = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                                      sampling_ratio=case["sampling"])
            rows[name] = compare_roi_align(got["pooled"], expected)
        else:
            ref_selection = reference.batched_nms(case["boxes"], case["scores"], case["groups"],
                                                  iou_threshold=case["iou"], score_threshold=case["thr"],
                                                  max_output_boxes=case["k"])
            rows[name] = compare_nms((got["selected"], got["num_selected"]), ref_selection)
    ok_count = sum(r["ok"] for r in rows.values())
    ok = ok_count == len(rows)
    summary = f"TensorRT {trt.__version__}: {ok_count}/{len(rows)} one-plugin networks match plugins/reference.py"
    return check_result("pass" if ok else "fail", summary, cases=rows, compiled=dict(COMPILED),
                        reason="" if ok else "a plugin network disagrees with the reference")


def small_exports(ctx: CheckContext) -> dict[str, Path]:
    """The small model's checkpoint and both ONNX flavors under the work folder (built once)."""
    if "small_exports" in ctx.shared:
        return ctx.shared["small_exports"]
    require_torch()
    from pfpn.export import to_onnx
    from pfpn.training.checkpoint import save_checkpoint

    model, config = build_small_model()
    folder = ctx.work_dir / "small"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ckpt": folder / "small.pt", "ort": folder / "small_ort.onnx", "trt": folder / "small_trt.onnx"}
    save_checkpoint(paths["ckpt"], model=model, config=config, categories=small_categories())
    log = io.StringIO()
    for flavor in ("ort", "trt"):
        with contextlib.redirect_stdout(log):
            rc = to_onnx.main(["--ckpt", str(paths["ckpt"]), "--flavor", flavor, "--out", str(paths[flavor])])
        if rc != 0:
            raise RuntimeError(f"export/to_onnx.py --flavor {flavor} exited {rc}: {one_line(log.getvalue())[-300:]}")
    ctx.shared["small_exports"] = paths
    return paths


def small_engine(ctx: CheckContext) -> tuple[Path, float]:
    """The small model's trt-flavor fp32 engine, built once with runtime/build_engine.py's
    build_engine -> (engine, build seconds; 0 when reused). SkipCheck where TensorRT, a GPU or
    plugin support is missing."""
    from pfpn.runtime.build_engine import build_engine
    from pfpn.runtime.trt.build_plan import EnvironmentProblem

    if "small_engine" in ctx.shared:
        return ctx.shared["small_engine"], 0.0
    paths = small_exports(ctx)
    engine = paths["trt"].with_name("small_trt_fp32.engine")
    t0 = time.perf_counter()
    try:
        build_engine(onnx=paths["trt"], out=engine, echo=None)
    except EnvironmentProblem as e:
        raise SkipCheck(one_line(e)) from None
    ctx.shared["small_engine"] = engine
    return engine, time.perf_counter() - t0


# Run in a fresh interpreter: load and run an engine without ever importing plugins/.
RELOAD_SCRIPT = r"""
import json, sys
engine = sys.argv[1]
import numpy as np
from pfpn.runtime.trt.runner import TrtRunner
import pfpn.runtime.predictor
report = {"imported_before_run": sorted(m for m in sys.modules if m == "pfpn.plugins" or m.startswith("pfpn.plugins."))}
if engine != "--imports-only":
    with TrtRunner(engine) as runner:
        rng = np.random.default_rng(0)
        h, w = runner.metadata.max_short_side, runner.metadata.max_long_side
        div = runner.metadata.size_divisor
        images = np.zeros((1, -(-h // div) * div, -(-w // div) * div, 3), np.uint8)
        images[0, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = runner.infer(images, np.array([[h, w]], np.int64))
        report["shapes"] = {k: list(v.shape) for k, v in out.items()}
        report["num_detections"] = int(out["num_detections"][0])
        report["finite"] = bool(all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"))
report["plugins_modules"] = sorted(m for m in sys.modules if m == "pfpn.plugins" or m.startswith("pfpn.plugins."))
print("RELOAD " + json.dumps(report))
"""


def run_reload_script(engine: str | Path, timeout: float = 120.0) -> dict:
    """RELOAD_SCRIPT in a fresh interpreter -> its report (``engine="--imports-only"``: imports only)."""
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(engine)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RELOAD ")), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the reload subprocess exited {proc.returncode}: {one_line(last)[:300]}")
    return json.loads(line[len("RELOAD "):])


def check_trt_engine_reload(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    engine, build_s = small_engine(ctx)
    report = run_reload_script(engine, timeout=max(30.0, min(120.0, ctx.budget.remaining() - 5.0)))
    clean = not report["plugins_modules"]
    ok = clean and report.get("finite", False)
    summary = (f"TensorRT {trt.__version__}: built in {build_s:.1f} s ({engine.stat().st_size / 1e6:.1f} MB), ran in a "
               f"fresh process with {report.get('num_detections')} detections; plugins imported there: "
               f"{report['plugins_modules'] or 'none'}")
    reason = "" if ok else ("the fresh process imported plugins/" if not clean else "non-finite outputs")
    return check_result("pass" if ok else "fail", summary, reason=reason, engine=str(engine), build_seconds=build_s,
                        **report)


def check_trt_end_to_end(ctx: CheckContext) -> dict:
    trt = require_tensorrt()
    from pfpn.runtime.predictor import Predictor

    engine, _ = small_engine(ctx)
    paths = small_exports(ctx)
    images = small_images(IMAGES_QUICK if ctx.quick else 6, seed=9)
    trt_pred = Predictor(engine)
    ort_pred = Predictor(paths["ort"])
    rows, differing, pixels = [], 0, 0
    for i, image in enumerate(images):
        if ctx.budget.low(5.0):
            break
        a = ort_pred.predict(image).id_map
        b = trt_pred.predict(image).id_map
        c = compare_label_maps(a, b)
        rows.append({"image": i, "size": list(image.shape[:2]), **c})
        differing += c["differing"]
        pixels += c["pixels"]
    agreement = 1.0 - differing / pixels if pixels else 0.0
    ok = bool(rows) and agreement >= MIN_PIXEL_AGREEMENT
    summary = (f"TensorRT {trt.__version__} ({trt_pred.backend.name}) vs ONNX Runtime: {agreement:.4%} identical "
               f"panoptic ids over {len(rows)} images (limit {MIN_PIXEL_AGREEMENT:.1%})")
    return check_result("pass" if ok else "fail", summary, agreement=agreement, per_image=rows,
                        backend=trt_pred.backend.name,
                        reason="" if ok else f"panoptic ids agree on {agreement:.4%} < {MIN_PIXEL_AGREEMENT:.1%}")
