"""Ahead-of-time PTX of the GPU post-processing kernels: one lowest-target (sm_75) build without
a GPU, the committed PTX matches the kernel source, ptxas assembles it for every GPU TensorRT 10
supports (sm_75 .. sm_120), and the runtime side (launcher, GpuPostprocessor) imports without
torch and triton, fails cleanly without a GPU, and falls back to the numpy post-processing with
a warning on a GPU the PTX does not cover."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pfpn.runtime import cuda_driver
from pfpn.runtime.cuda_driver import GpuUnavailableError
from pfpn.runtime.gpu import launcher
from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.gpu.device_fusion import KERNEL_SPECS, ImageGeometry, KernelConfig, Launch, launch_plan
from pfpn.runtime.gpu.triton_aot import TENSORRT10_TARGETS, assemble, entry_param_types, find_ptxas

ROOT = Path(__file__).resolve().parents[3]
PTX_DIR = ROOT / "runtime" / "gpu" / "ptx"
BUILT = (75,)  # one lowest-target build; the driver JIT-compiles it forward


def _env_without_interpreter() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the interpreter tests set it in this process
    return env


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory) -> Path:
    """Build every kernel with the default options into a temporary folder (no GPU needed)."""
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("ptx")
    proc = subprocess.run([sys.executable, "-m", "pfpn.runtime.gpu.build_ptx", "--out-dir", str(out), "-q"],
                          cwd=ROOT, env=_env_without_interpreter(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_builds_every_kernel_for_the_lowest_target_without_gpu(fresh_build):
    manifest = _manifest(fresh_build)
    assert sorted(manifest["targets"]) == list(BUILT)
    assert manifest["ptx_isa"] == {"75": "8.0"}  # CUDA 12.0+ drivers JIT it
    assert manifest["runs_on"] == list(TENSORRT10_TARGETS)
    built = {(k["name"], k["target"]) for k in manifest["kernels"]}
    assert built == {(s.name, t) for s in KERNEL_SPECS for t in BUILT}
    for k in manifest["kernels"]:
        ptx = (fresh_build / k["file"]).read_text()
        assert f".target sm_{k['target']}\n" in ptx
        assert ".version 8.0" in ptx and k["ptx_isa"] == "8.0"
        assert re.search(rf"\.visible \.entry {re.escape(k['entry'])}\(", ptx)
        assert k["entry"] == k["name"]
        assert ".loc" not in ptx and ".file" not in ptx  # no local paths
        assert hashlib.sha256(ptx.encode()).hexdigest() == k["ptx_sha256"]


def test_manifest_parameter_order_includes_triton_implicit_parameters():
    manifest = _manifest(PTX_DIR)
    specs = {s.name: s for s in KERNEL_SPECS}
    for k in manifest["kernels"]:
        spec = specs[k["name"]]
        names = [p["name"] for p in k["params"]]
        assert names == [p for p, _ in spec.params] + ["global_scratch", "profile_scratch"]
        assert k["num_warps"] == spec.num_warps and k["constexprs"] == spec.constexprs
        assert all(p["size"] == 0 for p in k["implicit_params"]), "kernels should need no scratch memory"
        # the PTX entry really has that many parameters, pointers as .u64
        types = entry_param_types((PTX_DIR / k["file"]).read_text(), k["entry"])
        assert len(types) == len(names)
        assert all(t == ".u64" for t, p in zip(types, k["params"]) if p["type"].startswith("*"))


def test_committed_ptx_is_up_to_date(fresh_build):
    from pfpn.runtime.gpu.build_ptx import source_sha256, specs_sha256  # imports no triton at module level

    committed = _manifest(PTX_DIR)
    assert committed["kernels_source_sha256"] == source_sha256(), \
        "runtime/gpu/kernels.py changed: run python -m pfpn.runtime.gpu.build_ptx and commit runtime/gpu/ptx"
    assert committed["kernel_specs_sha256"] == specs_sha256(), "KERNEL_SPECS changed: rebuild the PTX"
    fresh = _manifest(fresh_build)
    strip = lambda m: [{k: v for k, v in e.items() if k not in ("ptx_sha256", "ptx_bytes")} for e in m["kernels"]]
    assert strip(fresh) == strip(committed)
    import triton

    if committed["triton_version"] != triton.__version__:
        pytest.skip(f"PTX committed with Triton {committed['triton_version']}, installed "
                    f"{triton.__version__}: structure compared, not text")
    for k in committed["kernels"]:
        assert (fresh_build / k["file"]).read_text() == (PTX_DIR / k["file"]).read_text(), k["file"]


@pytest.mark.parametrize("target", TENSORRT10_TARGETS)
def test_ptxas_assembles_committed_ptx_for_every_tensorrt10_gpu(target, tmp_path):
    """The lowest-target PTX compiles forward for each GPU generation (what the driver's JIT does
    when the kernels are loaded), with the ptxas Triton bundles (always installed here)."""
    assert find_ptxas() is not None, "triton's bundled ptxas is missing"
    report = []
    for k in _manifest(PTX_DIR)["kernels"]:
        result = assemble(PTX_DIR / k["file"], target, tmp_path / (k["file"] + ".cubin"))
        assert result.returncode == 0, result.log
        assert (tmp_path / (k["file"] + ".cubin")).stat().st_size > 0
        report.append(f"{k['name']}: {result.registers} registers, {result.spill_bytes} B spill stores")
    print(f"sm_{target}: " + "; ".join(report))


def test_ptxas_rejects_what_the_driver_would_reject(tmp_path):
    """The ptxas proof can fail: PTX for a newer target does not assemble for an older GPU, and an
    arch-specific sm_90a target does not assemble for sm_100."""
    k = _manifest(PTX_DIR)["kernels"][0]
    text = (PTX_DIR / k["file"]).read_text()
    newer = tmp_path / "sm90.ptx"
    newer.write_text(text.replace(".target sm_75", ".target sm_90"))
    assert assemble(newer, 90, tmp_path / "a.cubin").returncode == 0
    assert assemble(newer, 80, tmp_path / "b.cubin").returncode != 0
    specific = tmp_path / "sm90a.ptx"
    specific.write_text(text.replace(".target sm_75", ".target sm_90a"))
    assert assemble(specific, 100, tmp_path / "c.cubin").returncode != 0


NO_TORCH_NO_TRITON = r"""
import sys
sys.modules["torch"] = None      # any import of torch or triton now raises ImportError
sys.modules["triton"] = None
import pfpn.runtime.gpu, pfpn.runtime.gpu.launcher, pfpn.runtime.gpu.device_fusion
from pfpn.runtime.gpu.device_fusion import GpuPostprocessor, KernelConfig, ImageGeometry, launch_plan
from pfpn.runtime.cuda_driver import GpuUnavailableError
steps = launch_plan(KernelConfig(80, 53, 100), ImageGeometry((480, 640), (800, 1067), (800, 1088), (1067 / 640, 800 / 480)),
                    programs=64)
print("steps", len(steps))
try:
    import pfpn.runtime.gpu.kernels
except ImportError:
    print("kernels need triton")
try:
    GpuPostprocessor(num_thing_classes=80, num_stuff_classes=53, max_detections=100)
except GpuUnavailableError as e:
    assert isinstance(e, RuntimeError)
    print("unavailable:", e)
else:
    print("gpu present")
loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("torch", "triton")]
assert not loaded, loaded
"""


def test_runtime_side_imports_without_torch_and_triton_and_fails_cleanly_without_gpu():
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_NO_TRITON], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps 205" in proc.stdout  # 2 memsets, sort, 2 x 100 per-instance, semantic, small stuff
    assert "kernels need triton" in proc.stdout
    if "gpu present" not in proc.stdout:
        line = next(l for l in proc.stdout.splitlines() if l.startswith("unavailable:"))
        assert "CUDA" in line or "GPU" in line or "PTX" in line, line


def test_select_target():
    targets = _manifest(PTX_DIR)["targets"]
    for major, minor in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (12, 0)]:
        assert launcher.select_target(targets, (major, minor)) == 75  # every TensorRT 10 GPU
    assert launcher.select_target([75, 90], (9, 0)) == 90  # its own target when built
    assert launcher.select_target([75, 90], (8, 9)) == 75  # else JIT forward from a lower one
    with pytest.raises(GpuUnavailableError, match="no PTX for this GPU.*7.0"):
        launcher.select_target(targets, (7, 0))  # V100: older than the PTX


class FakeContext:
    """What GpuPostprocessor needs of runtime.cuda_driver.CudaContext, for a GPU of any capability."""

    def __init__(self, capability):
        self.capability = capability
        self.sm_count = 80

    def make_current(self):
        pass

    def create_stream(self):
        raise AssertionError("not reached: no PTX for this GPU")

    def close(self):
        pass


def _metadata(max_detections=100):
    """The fields of runtime.contract.ModelMetadata that GpuPostprocessor.from_metadata reads."""
    return SimpleNamespace(num_thing_classes=80, num_stuff_classes=53, max_detections=max_detections,
                           mask_threshold=0.5, fusion=FusionConfig())


@pytest.mark.parametrize("capability", [(7, 0), (6, 1)])
def test_unsupported_gpu_falls_back_to_cpu_postprocessing_with_a_warning(monkeypatch, capability):
    from pfpn.runtime.gpu import device_fusion

    monkeypatch.setattr(cuda_driver, "CudaContext", lambda device=0: FakeContext(capability))
    warnings = []
    assert device_fusion.open_gpu_postprocessor(_metadata(), postprocess="auto", warn=warnings.append) is None
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("warning: GPU post-processing unavailable")
    assert f"compute capability {capability[0]}.{capability[1]}" in warnings[0]
    assert "CPU (numpy) post-processing" in warnings[0]
    with pytest.raises(GpuUnavailableError, match="no PTX for this GPU"):
        device_fusion.open_gpu_postprocessor(_metadata(), postprocess="gpu", warn=warnings.append)
    assert device_fusion.open_gpu_postprocessor(_metadata(), postprocess="cpu", warn=warnings.append) is None
    assert len(warnings) == 1  # "gpu" raises, "cpu" asked for numpy: no warning


def test_model_outside_the_kernels_limits_falls_back(monkeypatch):
    from pfpn.runtime.gpu import device_fusion

    monkeypatch.setattr(cuda_driver, "CudaContext", lambda device=0: FakeContext((9, 0)))
    warnings = []
    assert device_fusion.open_gpu_postprocessor(_metadata(300), warn=warnings.append) is None
    assert "detections" in warnings[0]
    with pytest.raises(ValueError):
        device_fusion.open_gpu_postprocessor(_metadata(300), postprocess="nonsense")


def test_predict_cli_has_the_postprocess_choice(tmp_path, capsys):
    from pfpn.runtime import predict

    with pytest.raises(SystemExit):
        predict.main(["--model", "m.onnx", "x.jpg", "--out", str(tmp_path), "--postprocess", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    from pfpn.runtime.predictor import Predictor

    with pytest.raises(ValueError, match="needs a TensorRT engine"):
        Predictor(tmp_path / "m.onnx", postprocess="gpu")


def test_plan_covers_every_kernel_with_matching_arguments():
    steps = launch_plan(KernelConfig(80, 53, 100), ImageGeometry((61, 83), (99, 135), (128, 160), (1.6, 1.6)),
                        programs=8)
    specs = {s.name: s for s in KERNEL_SPECS}
    launched = {s.kernel for s in steps if isinstance(s, Launch)}
    assert launched == set(specs)
    for s in steps:
        if isinstance(s, Launch):
            assert len(s.args) == len(specs[s.kernel].params)
    with pytest.raises(ValueError, match="detections"):
        launch_plan(KernelConfig(80, 53, 300), ImageGeometry((61, 83), (99, 135), (128, 160), (1.6, 1.6)), programs=8)


def test_image_pointers_follow_the_contract_layout():
    from pfpn.runtime.gpu.device_fusion import image_pointers

    base = {name: 1 << 20 for name in ("boxes", "scores", "labels", "mask_probs", "num_detections",
                                         "semantic_logits")}
    p = image_pointers(base, 2, max_detections=100, num_stuff_classes=53, logits_size=(200, 272))
    assert p["boxes"] - base["boxes"] == 2 * 100 * 4 * 4
    assert p["labels"] - base["labels"] == 2 * 100 * 8
    assert p["mask_probs"] - base["mask_probs"] == 2 * 100 * 28 * 28 * 4
    assert p["num_detections"] - base["num_detections"] == 2 * 8
    assert p["semantic_logits"] - base["semantic_logits"] == 2 * 54 * 200 * 272 * 4


# ----------------------------------------------------------------------------------------------
# the launcher's parameter packing, against a recording stand-in for the CUDA driver


class RecordingDriver:
    """Just enough of cuda.bindings.driver for KernelModule: records cuLaunchKernel calls and
    decodes the void** parameter array the launcher builds."""

    class CUresult:
        CUDA_SUCCESS = 0

    CUfunction_attribute = SimpleNamespace(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8)

    def __init__(self, infos):
        self.infos = infos
        self.launches = []

    def cuModuleLoadData(self, image):
        assert image.endswith(b"\0") and b".entry" in image
        return 0, "module"

    def cuModuleGetFunction(self, module, name):
        return 0, name.decode()

    def cuFuncSetAttribute(self, *a):
        return (0,)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        info = self.infos[f]
        array = (ctypes.c_void_p * len(info.params)).from_address(params)
        values = []
        for (pname, ptype), addr in zip(info.params, array):
            ct = ctypes.c_uint64 if ptype.startswith("*") else launcher.SCALAR_CTYPES[ptype]
            values.append(ct.from_address(addr).value)
        self.launches.append(dict(kernel=f, grid=(gx, gy, gz), block=(bx, by, bz), shared=shared, values=values))
        return (0,)


def test_launcher_packs_parameters_in_manifest_order(monkeypatch):
    manifest = launcher.read_manifest(PTX_DIR)
    infos = launcher.kernel_infos(manifest, 75)
    drv = RecordingDriver({i.entry: i for i in infos.values()})
    monkeypatch.setattr(cuda_driver, "driver", lambda: drv)
    ctx = SimpleNamespace(capability=(8, 7), make_current=lambda: None)
    module = launcher.KernelModule(ctx, PTX_DIR)
    assert module.target == 75
    args = (7, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 60, 80, 28, 1.5, 2.25, 0.5)
    module.launch("instance_stats_kernel", (5, 1, 1), args, cuda_driver.Stream("stream"))
    rec = drv.launches[-1]
    assert rec["grid"] == (5, 1, 1) and rec["block"] == (128, 1, 1)
    assert rec["shared"] == infos["instance_stats_kernel"].shared
    assert rec["values"][:-2] == list(args) and rec["values"][-2:] == [0, 0]  # NULL scratch pointers
    with pytest.raises(ValueError, match="13 parameters"):
        module.launch("instance_stats_kernel", (5, 1, 1), args[:-1], cuda_driver.Stream("stream"))


@pytest.mark.skipif(os.environ.get("CUDA_VISIBLE_DEVICES") == "", reason="GPUs hidden")
def test_on_a_real_gpu():
    """Runs only where a CUDA GPU and driver exist (never on the CI machine of this project)."""
    try:
        ctx = cuda_driver.CudaContext(0)
    except GpuUnavailableError as e:
        pytest.skip(f"needs a CUDA GPU: {e}")
    torch = pytest.importorskip("torch")
    from pfpn.runtime.gpu.device_fusion import GpuPostprocessor
    from pfpn.training.config import ModelConfig
    from pfpn.training.model.panoptic_fpn import Detections
    from pfpn.training.predictor import label_map_single_image

    rng = np.random.default_rng(0)
    d, t, s = 100, 80, 53
    geometry = ImageGeometry((480, 640), (800, 1067), (800, 1088), (1067 / 640, 800 / 480))
    n = 40
    x1 = rng.uniform(0, 900, n); y1 = rng.uniform(0, 700, n)
    boxes = np.zeros((d, 4), np.float32)
    boxes[:n] = np.stack([x1, y1, np.minimum(x1 + rng.uniform(5, 400, n), 1067), np.minimum(y1 + rng.uniform(5, 300, n), 800)], 1)
    scores = np.zeros(d, np.float32); scores[:n] = np.sort(rng.uniform(0.6, 1, n))[::-1]
    labels = np.zeros(d, np.int64); labels[:n] = rng.integers(0, t, n)
    probs = np.zeros((d, 28, 28), np.float32); probs[:n] = rng.random((n, 28, 28))
    logits = rng.standard_normal((s + 1, 200, 272)).astype(np.float32)
    host = dict(boxes=boxes, scores=scores, labels=labels, mask_probs=probs,
                num_detections=np.array([n], np.int64), semantic_logits=logits)
    post = GpuPostprocessor(num_thing_classes=t, num_stuff_classes=s, max_detections=d)
    bufs = {}
    for name, arr in host.items():
        bufs[name] = cuda_driver.DeviceBuffer(arr.nbytes)
        cuda_driver.copy_to_device(bufs[name].ptr, np.ascontiguousarray(arr), post.stream)
    label_map, kept = post.run(**{k: b.ptr for k, b in bufs.items()}, original_size=geometry.original_size,
                               resized_size=geometry.resized_size, padded_size=geometry.padded_size,
                               scale_factor=geometry.scale_factor)
    det = Detections(torch.from_numpy(boxes[:n]), torch.from_numpy(scores[:n]), torch.from_numpy(labels[:n]),
                     torch.from_numpy(probs[:n]))
    ref = label_map_single_image(det, torch.from_numpy(logits), ModelConfig(fusion=FusionConfig()),
                                 padded_size=geometry.padded_size, resized_size=geometry.resized_size,
                                 original_size=geometry.original_size, scale_factor=geometry.scale_factor)
    assert kept.tolist() == ref.kept
    np.testing.assert_array_equal(label_map, ref.label_map)
    for b in bufs.values():
        b.close()
    post.close()
    ctx.close()
