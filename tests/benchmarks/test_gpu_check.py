"""benchmarks/gpu_check.py without a GPU: the whole run (every GPU check skips with its reason),
failure handling and exit codes, the GPU-free helpers on hand-made inputs, and the parts of the
GPU checks that run on a CPU (export graph + numpy post-processing, a training step, the tiny
ONNX networks of the TensorRT checks under ONNX Runtime, the plugin kernel launches under the
Triton interpreter, the fresh-process import check)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from pfpn.benchmarks import gpu_check as gc  # noqa: E402
from pfpn.runtime.detection_matching import box_iou_matrix  # noqa: E402
from pfpn.benchmarks import gpu_check_common as common  # noqa: E402
from pfpn.benchmarks import gpu_check_kernels as kernels  # noqa: E402
from pfpn.benchmarks import gpu_check_models as models  # noqa: E402
from pfpn.benchmarks import gpu_check_ort as ort_checks  # noqa: E402
from pfpn.benchmarks import gpu_check_training as training  # noqa: E402
from pfpn.benchmarks import gpu_check_trt as trt_checks  # noqa: E402

GPU_WORDS = ("GPU", "CUDA", "TensorRT")


def _gpu_present() -> bool:
    try:
        common.require_gpu_driver()
    except common.SkipCheck:
        pass
    else:
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------
# the whole run


@pytest.mark.skipif(_gpu_present(), reason="a GPU is present: the all-skip run is what a GPU-less machine sees")
def test_runs_end_to_end_here_and_every_gpu_check_skips_with_its_reason(tmp_path, capsys):
    out = tmp_path / "sub" / "report.json"
    rc = gc.main(["--out", str(out), "--quick"])
    assert rc == 0
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == list(gc.CHECK_NAMES)
    env = report["checks"][0]
    assert env["status"] == "pass"
    assert env["details"]["missing"], "this machine lacks a GPU: environment must say so"
    assert any("GPU" in m or "CUDA" in m for m in env["details"]["missing"])
    assert env["details"]["python"] == sys.version.split()[0]
    for c in report["checks"][1:]:
        assert c["status"] == "skip", c
        assert c["reason"] and "\n" not in c["reason"]
        assert any(w in c["reason"] for w in GPU_WORDS), c["reason"]
    assert report["exit_code"] == 0 and report["counts"] == {"pass": 1, "fail": 0, "skip": len(names) - 1}
    assert report["total_seconds"] < 60
    console = capsys.readouterr().out
    for name in names:  # progress (start + end) and the summary: one line each
        assert sum(1 for line in console.splitlines() if name in line) == 3, name
    assert "exit code 0" in console


def test_a_check_that_raises_is_a_fail_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("kernel exploded\non two lines")

    monkeypatch.setattr(gc, "check_plugin_kernels", broken)
    out = tmp_path / "r.json"
    rc = gc.main(["--out", str(out), "--only", "environment,plugin_kernels,trt_uint8_input"])
    assert rc == 1
    report = json.loads(out.read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    assert list(by_name) == ["environment", "plugin_kernels", "trt_uint8_input"]
    assert by_name["plugin_kernels"]["status"] == "fail"
    assert by_name["plugin_kernels"]["error"] == "RuntimeError: kernel exploded on two lines"
    assert by_name["environment"]["status"] == "pass"
    assert by_name["trt_uint8_input"]["status"] in ("skip", "pass")  # ran after the failure
    assert report["exit_code"] == 1 and report["counts"]["fail"] == 1


def test_a_check_returning_fail_gives_exit_code_1_and_a_skip_does_not(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "check_environment", lambda ctx: common.check_result("skip", reason="nothing here"))
    assert gc.main(["--out", str(tmp_path / "a.json"), "--only", "environment"]) == 0
    monkeypatch.setattr(gc, "check_environment", lambda ctx: common.check_result("fail", "1 px", reason="maps differ"))
    assert gc.main(["--out", str(tmp_path / "b.json"), "--only", "environment"]) == 1
    line = common.format_check_line(json.loads((tmp_path / "b.json").read_text())["checks"][0])
    assert "FAIL" in line and "1 px" in line and "maps differ" in line


def test_budget_spent_skips_the_remaining_checks(tmp_path):
    ctx = common.CheckContext(work_dir=tmp_path, quick=True, budget=common.Budget(0.0))
    r = gc.run_one("plugin_kernels", ctx)
    assert r["status"] == "skip" and "time budget" in r["reason"]


def test_unknown_check_name_is_a_usage_error(tmp_path, capsys):
    assert gc.main(["--out", str(tmp_path / "r.json"), "--only", "nonsense"]) == 2
    assert "unknown checks" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# GPU-free helpers on hand-made inputs


def test_compare_label_maps():
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    b = a.astype(np.int32).copy()
    assert common.compare_label_maps(a, b) == {"pixels": 6, "differing": 0, "identical": True}
    b[1, 2] = 7
    b[0, 0] = 0
    assert common.compare_label_maps(a, b) == {"pixels": 6, "differing": 2, "identical": False}
    assert common.pixel_agreement(a, b) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="shape"):
        common.compare_label_maps(a, b.T)
    rows = [dict(common.compare_label_maps(a, a), kept_equal=True), dict(common.compare_label_maps(a, b), kept_equal=True),
            dict(common.compare_label_maps(a, a), kept_equal=False)]
    assert common.summarize_map_comparisons(rows) == {"images": 3, "images_identical": 1, "pixels": 18,
                                                  "pixels_differing": 2}


def test_box_iou_and_detection_matching():
    iou = box_iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [5, 5, 5, 9], [0, 0, 2, 2]]))
    np.testing.assert_allclose(iou, [[1 / 3, 0.0, 1.0]])
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    b = np.array([[20, 20, 30, 30.5], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)  # permuted, one moved
    m = common.detection_agreement(a, np.array([0, 1, 2]), b, np.array([1, 0, 3]))  # last pair: other label
    assert (m["num_a"], m["num_b"], m["matched"]) == (3, 3, 2)
    assert m["fraction"] == pytest.approx(2 / 3) and m["min_iou"] == pytest.approx(100 / 105)
    shifted = a + np.array([2, 0, 2, 0], np.float32)  # IoU 8/12 < 0.9: not a match
    assert common.detection_agreement(a, np.zeros(3), shifted, np.zeros(3))["matched"] == 0
    assert common.detection_agreement(a[:0], np.zeros(0), b[:0], np.zeros(0))["fraction"] == 1.0
    assert common.detection_agreement(a, np.zeros(3), b[:0], np.zeros(0))["fraction"] == 0.0


def test_relative_error_and_comparisons():
    ref = np.array([1.0, -4.0, 2.0])
    assert common.relative_error(ref, ref) == 0.0
    assert common.relative_error(ref, np.array([1.0, -4.0, 2.4])) == pytest.approx(0.1)
    r = kernels.compare_roi_align(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32) + 1e-7)
    assert r["ok"] and not r["exact"]
    assert not kernels.compare_roi_align(np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32))["ok"]
    assert not kernels.compare_roi_align(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 3), np.float32))["ok"]
    sel = np.array([[3, 1, -1]]), np.array([2])
    assert kernels.compare_nms(sel, sel)["ok"]
    r = kernels.compare_nms((np.array([[1, 3, -1]]), np.array([2])), sel)
    assert not r["ok"] and r["differing_entries"] == 2


def test_report_formatting_and_json():
    skip = {"name": "trt_uint8_input", "status": "skip", "seconds": 0.01, "summary": "",
            "reason": "TensorRT is not installed"}
    ok = {"name": "plugin_kernels", "status": "pass", "seconds": 1.25, "summary": "NMS 8/8 identical"}
    assert common.format_check_line(skip).split()[:2] == ["trt_uint8_input", "SKIP"]
    assert common.format_check_line(skip).endswith("skipped: TensorRT is not installed")
    assert "NMS 8/8 identical" in common.format_check_line(ok) and "skipped" not in common.format_check_line(ok)
    text = common.format_summary({"checks": [ok, skip], "counts": {"pass": 1, "fail": 0, "skip": 1},
                              "total_seconds": 1.3, "budget_seconds": 270, "exit_code": 0})
    assert len(text.splitlines()) == 3 and "1 passed, 0 failed, 1 skipped" in text
    data = common.jsonable({"a": np.int64(3), "b": np.arange(2), "c": (Path("x"), np.float32(0.5)), "d": float("inf")})
    assert json.loads(json.dumps(data)) == {"a": 3, "b": [0, 1], "c": ["x", 0.5], "d": "inf"}
    with pytest.raises(ValueError):
        common.check_result("maybe")


# ----------------------------------------------------------------------------------------------
# what the GPU checks do, run on the CPU


def test_network_and_numpy_postprocessing_helpers_on_the_cpu():
    from pfpn.export.metadata import build_metadata

    model, config = models.build_small_model()
    meta = build_metadata(config.model, models.small_categories(), flavor="ort", source="test")
    graph = models.export_graph(model, config, "cpu")
    images = models.small_images(2)
    runs = [models.run_network(graph, im, meta, "cpu") for im in images]
    assert runs[1].original_size == (150, 200) and runs[1].resized_size == (192, 256)
    assert runs[1].padded_size == (192, 256) and runs[1].scale_factor == pytest.approx((1.28, 1.28))
    for run, image in zip(runs, images):
        n = int(run.outputs["num_detections"][0])
        assert n > 0  # the firing model detects
        post = models.numpy_postprocess(run, meta)
        assert post.label_map.shape == image.shape[:2] and post.kept
    same = models.compare_network_outputs(runs[0], runs[0])
    assert same["fraction"] == 1.0 and same["semantic_rel_err"] == 0.0
    noisy = models.NetworkRun({**runs[0].outputs, "semantic_logits": runs[0].outputs["semantic_logits"] * 1.01},
                          *[getattr(runs[0], f) for f in ("original_size", "resized_size", "padded_size",
                                                          "scale_factor", "seconds")])
    assert models.compare_network_outputs(runs[0], noisy)["semantic_rel_err"] == pytest.approx(0.01, rel=1e-3)


def test_training_step_helper_on_the_cpu(tmp_path):
    r = training.training_steps(tmp_path, "cpu", amp=False, max_steps=1)
    assert r["loss_finite"] and r["weights_changed"] and r["steps"] == 1 and r["skipped_steps"] == 0
    assert set(r["loss_parts"]) >= {"loss_cls", "loss_mask", "loss_semantic"}


def test_photo_images_have_the_asked_size():
    images, source = models.photo_images(3, height=80, width=133)
    assert [im.shape for im in images] == [(80, 133, 3)] * 3 and all(im.dtype == np.uint8 for im in images)
    assert source


def test_trt_check_networks_are_right_under_onnx_runtime():
    """The ONNX networks the TensorRT checks build pass the project's TensorRT conformance rules
    and compute what the checks expect (ONNX Runtime; the custom nodes via onnxruntime-extensions)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    from pfpn.plugins import ort_ops, reference
    from pfpn.runtime.trt.conformance import check_onnx

    model = trt_checks.uint8_cast_transpose_model()
    assert not check_onnx(model).errors
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    np.testing.assert_array_equal(got[0], x.astype(np.float32).transpose(0, 3, 1, 2))
    for name, (kind, case) in trt_checks.trt_plugin_cases().items():
        model = trt_checks.plugin_node_model(kind, case)
        report = check_onnx(model)
        assert not report.errors and not report.warnings, report.format()
        sess = ort.InferenceSession(model.SerializeToString(), ort_ops.session_options(),
                                    providers=["CPUExecutionProvider"])
        out = sess.run(None, trt_checks.plugin_feeds(kind, case))
        if kind == "roi_align":
            expected = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                                      sampling_ratio=case["sampling"])
            assert kernels.compare_roi_align(out[0], expected)["exact"], name
        else:
            expected = reference.batched_nms(case["boxes"], case["scores"], case["groups"], iou_threshold=case["iou"],
                                             score_threshold=case["thr"], max_output_boxes=case["k"])
            assert kernels.compare_nms((out[0], out[1]), expected)["ok"], name
    nms = trt_checks.trt_plugin_cases()["nms_zero_row"][1]  # a zero row: image 1 keeps nothing
    assert reference.batched_nms(nms["boxes"], nms["scores"], nms["groups"], iou_threshold=nms["iou"],
                                 score_threshold=nms["thr"], max_output_boxes=nms["k"])[1].tolist() == [5, 0]


def test_the_reload_process_imports_no_plugins():
    report = trt_checks.run_reload_script("--imports-only")
    assert report == {"imported_before_run": [], "plugins_modules": []}


INTERPRET = r"""
import torch
from pfpn.benchmarks import gpu_check_kernels as kernels
from pfpn.plugins import reference, triton_kernels as tk
roi, nms = kernels.roi_align_cases(quick=True), kernels.nms_cases(quick=True)
for name in ("zero_rows_degenerate", "sampling_2", "empty"):
    case = roi[name]
    got = kernels.launch_roi_align(torch, case, kernel=tk.interpreted("roi_align_kernel"), device="cpu")
    ref = reference.multilevel_roi_align(case["rois"], case["feats"], output_size=(case["oh"], case["ow"]),
                                         sampling_ratio=case["sampling"])
    r = kernels.compare_roi_align(got, ref)
    print("roi", name, r["ok"], r["max_abs_diff"])
for name in ("ties", "zero_row", "empty_n", "k_reached"):
    case = nms[name]
    got = kernels.launch_nms(torch, case, kernel=tk.interpreted("nms_kernel"), device="cpu")
    ref = reference.batched_nms(case["boxes"], case["scores"], case["groups"], iou_threshold=case["iou"],
                                score_threshold=case["thr"], max_output_boxes=case["k"])
    print("nms", name, kernels.compare_nms(got, ref)["ok"])
"""


def test_plugin_kernel_launches_under_the_triton_interpreter():
    """launch_roi_align / launch_nms (argument order, constexprs, grid, empty inputs) with the
    interpreted kernels on the CPU; on a GPU the same helpers launch the AOT PTX (AotPluginKernel)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRET], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert len(lines) == 7
    assert all(parts[2] == "True" for parts in lines), proc.stdout


def test_kernel_cases_cover_zero_rows_ties_and_empty_inputs():
    from pfpn.plugins import reference

    roi = kernels.roi_align_cases(quick=True)
    out = reference.multilevel_roi_align(roi["zero_rows_degenerate"]["rois"], roi["zero_rows_degenerate"]["feats"],
                                         output_size=(3, 3))
    assert np.all(out[0] == 0) and np.all(out[1] == 0) and np.any(out[5] != 0)
    assert roi["empty"]["rois"].shape == (0, 5)
    assert reference.roi_levels(roi["all_levels"]["rois"], 4).tolist() == [0, 0, 1, 2, 2, 3, 3]
    nms = kernels.nms_cases(quick=True)
    assert len(np.unique(nms["ties"]["scores"])) == 3 and nms["empty_n"]["scores"].shape == (2, 0)
    full = kernels.nms_cases(quick=False)
    assert {"r50_rpn", "r50_box"} <= set(full) and full["r50_rpn"]["chunk"] is None


def test_small_exports_and_the_engine_build_command(tmp_path):
    """The trt checks' exports (both flavors, in-process) and the engine build (build_engine.py's
    build_engine), which here is skipped with TensorRT's one-line reason; the ONNX Runtime side of
    trt_end_to_end runs."""
    from pfpn.runtime.predictor import Predictor

    ctx = common.CheckContext(work_dir=tmp_path, quick=True, budget=common.Budget(270))
    paths = trt_checks.small_exports(ctx)
    assert all(p.is_file() for p in paths.values())
    assert trt_checks.small_exports(ctx) is paths  # built once
    try:
        from pfpn.runtime.trt.runner import import_tensorrt

        import_tensorrt()
    except ImportError:
        with pytest.raises(common.SkipCheck, match=r"TensorRT is not installed"):
            trt_checks.small_engine(ctx)
    image = models.small_images(1, seed=9)[0]
    assert Predictor(paths["ort"]).predict(image).id_map.shape == image.shape[:2]


def test_aot_plugin_kernel_passes_exactly_the_plugins_arguments(monkeypatch):
    """AotPluginKernel on a recording stand-in for the CUDA driver: the PTX it loads is the one the
    TensorRT plugin embeds (hidden parameters stripped, plain target for this GPU's SM), and the
    launch packs device pointers as u64 and scalars as int32, in the signature's order."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: triton cannot compile in this process")
    import ctypes
    from types import SimpleNamespace

    from pfpn.plugins import triton_kernels as tk
    from pfpn.runtime import cuda_driver

    launches, loaded = [], []

    class Driver:
        CUresult = SimpleNamespace(CUDA_SUCCESS=0)

        def cuModuleLoadData(self, image):
            loaded.append(image.decode().rstrip("\0"))
            return 0, "module"

        def cuModuleGetFunction(self, module, name):
            return 0, name.decode()

        def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            n = len(tk.SIGNATURES[fn])
            array = (ctypes.c_void_p * n).from_address(params)
            kinds = list(tk.SIGNATURES[fn].values())
            values = [(ctypes.c_uint64 if t.startswith("*") else ctypes.c_int32).from_address(a).value
                      for t, a in zip(kinds, array)]
            launches.append(dict(fn=fn, grid=(gx, gy, gz), block=(bx, by, bz), shared=shared, values=values))
            return (0,)

    monkeypatch.setattr(cuda_driver, "driver", lambda: Driver())
    monkeypatch.setattr(cuda_driver, "CudaContext", lambda device=0: SimpleNamespace(capability=(12, 0)))
    tensor = lambda addr: SimpleNamespace(data_ptr=lambda: addr)
    kernel = kernels.AotPluginKernel("nms_kernel")
    cx = tk.nms_constexprs(0.5, 0.1, 8)
    kernel[(3,)](tensor(0x1000), tensor(0x2000), tensor(0x3000), 3, 77, tensor(0x4000), tensor(0x5000), **cx)
    assert launches == [dict(fn="nms_kernel", grid=(3, 1, 1), block=(32 * tk.NUM_WARPS["nms_kernel"], 1, 1),
                             shared=launches[0]["shared"], values=[0x1000, 0x2000, 0x3000, 3, 77, 0x4000, 0x5000])]
    ptx = loaded[0]
    assert ".target sm_120\n" in ptx and ".version 8.7" in ptx  # what an RTX 50 engine build embeds
    kernel[(3,)](tensor(0x1000), tensor(0x2000), tensor(0x3000), 3, 77, tensor(0x4000), tensor(0x5000), **cx)
    assert len(loaded) == 1  # compiled and loaded once per constexpr set
    with pytest.raises(ValueError, match="arguments"):
        kernel[(3,)](tensor(0x1000), 3, **cx)


# ----------------------------------------------------------------------------------------------
# ort_cuda_providers (benchmarks/gpu_check_ort.py)


def test_ort_cuda_check_skips_without_the_cuda_provider(tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    ctx = common.CheckContext(work_dir=tmp_path, quick=True, budget=common.Budget(270))
    r = gc.run_one("ort_cuda_providers", ctx)
    assert r["status"] == "skip" and "\n" not in r["reason"]
    assert r["reason"].startswith(ort_checks.GPU_MISSING) and "pip install '.[gpu]'" in r["reason"]
    assert not (tmp_path / "small").exists()  # skipped before exporting anything


def test_ort_provider_comparison_on_cpu_providers(tmp_path):
    """compare_providers with the CPU on both sides (what the check does with ("cuda", "cpu")):
    identical maps, timings, what runs; judge_providers wants "cuda" among what runs."""
    import onnxruntime

    ctx = common.CheckContext(work_dir=tmp_path, quick=True, budget=common.Budget(270))
    paths = trt_checks.small_exports(ctx)
    images = models.small_images(2, seed=9)
    r = ort_checks.compare_providers(paths["ort"], images, providers=("cpu",), threads=1)
    assert r["providers"] == r["reference_providers"] == ["cpu"] and r["backend"] == "onnxruntime[CPU]"
    assert r["images"] == 2 and r["agreement"] == 1.0 and r["segments_match"] and r["pixels_differing"] == 0
    assert r["ms_per_image"] > 0 and r["reference_ms_per_image"] > 0 and r["warnings"] == []
    assert all(row["segments"] == row["reference_segments"] for row in r["per_image"])
    status, reason = ort_checks.judge_providers(r)
    assert status == "fail" and "cuda did not start" in reason
    assert ort_checks.judge_providers(dict(r, providers=["cuda", "cpu"])) == ("pass", "")
    assert ort_checks.judge_providers(dict(r, providers=["cuda", "cpu"], agreement=0.99))[0] == "fail"
    summary = ort_checks.format_providers_summary(r)
    assert "providers=cpu" in summary and "100.0000% identical" in summary and "segments match" in summary
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        r = ort_checks.compare_providers(paths["ort"], images[:1], threads=1)  # ("cuda", "cpu") on the CPU build
        assert r["providers"] == ["cpu"] and r["agreement"] == 1.0
        assert len(r["warnings"]) == 1 and "CUDAExecutionProvider not available" in r["warnings"][0]
    assert ort_checks.segment_keys([{"id": 5, "category_id": 2}, {"id": 1, "category_id": 7}]) == [(1, 7), (5, 2)]
