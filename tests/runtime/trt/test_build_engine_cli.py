"""runtime/build_engine.py without TensorRT / GPU: --help, one-line refusals with no file left
behind, argument checks, the build plan for TensorRT 10 / 11, and --dry-run preparing the fp16 /
Q/DQ ONNX that a strongly typed build would parse."""
from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import onnx
import pytest
from onnx import TensorProto, helper

from pfpn.plugins.names import CUSTOM_DOMAIN
from pfpn.runtime import build_engine as be
from pfpn.runtime.trt.build_plan import UsageError, choose_api, default_out, make_plan, network_flags
from pfpn.training.data.coco_panoptic import CocoPanopticDataset

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "runtime" / "build_engine.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_root, tiny_onnx, tiny_trt_onnx):
    """A folder of its own (the tests write engines and models next to the inputs)."""
    tmp = tmp_path_factory.mktemp("build_engine")
    ds = CocoPanopticDataset(synthetic_root, "val")
    shutil.copy(tiny_onnx, tmp / "tiny_ort.onnx")
    shutil.copy(tiny_trt_onnx, tmp / "tiny_trt.onnx")
    images = tmp / "calib"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), ds[i]["image"])
    return tmp


def _tensorrt_available() -> bool:
    from pfpn.runtime.trt.runner import import_tensorrt

    try:
        import_tensorrt()
        return True
    except ImportError:
        return False


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_help_explains_everything():
    proc = _cli("--help")
    assert proc.returncode == 0
    for word in ("--onnx", "--fp16", "--int8", "--calib-images", "--calib-count", "--workspace", "--min-shape",
                 "--opt-shape", "--max-shape", "--timing-cache", "--out", "--trt-api", "strongly typed",
                 "sidecar", "--dry-run", "multiples of 32"):
        assert word in proc.stdout, word


def test_without_tensorrt_or_gpu_one_line_and_no_file(exported):
    if _tensorrt_available():
        pytest.skip("TensorRT is installed here (the GPU case is checked instead)")
    out = exported / "m.engine"
    proc = _cli("--onnx", exported / "tiny_trt.onnx", "--fp16", "--out", out)
    assert proc.returncode == be.EXIT_ENVIRONMENT
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed"), proc.stderr
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert not [p for p in exported.iterdir() if p.name.startswith(".m.engine")]  # no temporaries


def test_no_gpu_message(exported, monkeypatch, capsys):
    """With TensorRT importable but no GPU (simulated): one line, exit 3, nothing written."""
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.trt import runner

    fake = types.SimpleNamespace(__version__="10.13.3.9")
    monkeypatch.setattr(runner, "import_tensorrt", lambda: fake)

    def no_gpu():
        raise cuda_driver.CudaError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setattr(cuda_driver, "gpus", no_gpu)
    out = exported / "g.engine"
    assert be.main(["--onnx", str(exported / "tiny_ort.onnx"), "--out", str(out)]) == be.EXIT_ENVIRONMENT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA GPU found (cudaErrorInsufficientDriver")
    assert not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--opt-shape", "1x100x200"], "height 100 is not a multiple of 32 (use 128)"),
    (["--min-shape", "1x64x64", "--opt-shape", "1x32x32"], "min <= opt <= max"),
    (["--int8"], "--int8 needs --calib-images"),
    (["--calib-images", "x"], "only used with --int8"),
    (["--workspace", "0"], "--workspace must be > 0"),
])
def test_argument_errors_are_one_line(exported, capsys, extra, match):
    assert be.main(["--onnx", str(exported / "tiny_ort.onnx"), *extra]) == be.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]


def test_file_errors(exported, tmp_path, capsys):
    assert be.main(["--onnx", str(tmp_path / "missing.onnx")]) == be.EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert be.main(["--onnx", str(tmp_path / "junk.onnx")]) == be.EXIT_USAGE
    assert "not a readable ONNX" in capsys.readouterr().err
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    assert be.main(["--onnx", str(tmp_path / "plain.onnx")]) == be.EXIT_USAGE
    assert "metadata lacks" in capsys.readouterr().err
    onnx_path = exported / "tiny_ort.onnx"
    assert be.main(["--onnx", str(onnx_path), "--out", str(onnx_path)]) == be.EXIT_USAGE
    assert "overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --fp16 and --int8 exclude each other
        be.parse_args(["--onnx", "m.onnx", "--fp16", "--int8"])


def test_choose_api_and_plan():
    assert choose_api("auto", "10.13.3.9") == "10" and choose_api("auto", "11.4.0.106") == "11"
    assert choose_api("auto", None) == "11" and choose_api("11", "10.13.3.9") == "11"
    with pytest.raises(UsageError, match="TensorRT 11 removed the weakly typed API"):
        choose_api("10", "11.0.0.114")
    p = make_plan("10", fp16=True, int8=False)
    assert (p.builder_flags, p.strongly_typed, p.onnx_transform, p.calibrator) == (["FP16"], False, "none", False)
    p = make_plan("10", fp16=False, int8=True)
    assert (p.builder_flags, p.calibrator, p.needs_calibration_images) == (["INT8"], True, True)
    p = make_plan("11", fp16=True, int8=False)
    assert (p.builder_flags, p.strongly_typed, p.onnx_transform) == ([], True, "fp16")
    p = make_plan("11", fp16=False, int8=True)
    assert (p.onnx_transform, p.calibrator, p.needs_calibration_images) == ("qdq", False, True)
    p = make_plan("11", fp16=False, int8=False)
    assert p.precision == "fp32" and p.clear_flags == ["TF32"] and "strongly typed" in p.describe()


def test_network_flags():
    class Flags:
        STRONGLY_TYPED = 1
        PREFER_AOT_PYTHON_PLUGINS = 3

    trt10 = types.SimpleNamespace(NetworkDefinitionCreationFlag=Flags)
    strong, weak = make_plan("11", True, False), make_plan("10", True, False)
    assert network_flags(trt10, strong, has_python_plugins=True) == (1 << 1) | (1 << 3)
    assert network_flags(trt10, weak, has_python_plugins=False) == 0
    trt11 = types.SimpleNamespace(NetworkDefinitionCreationFlag=type("F", (), {}))  # always strongly typed
    assert network_flags(trt11, strong, has_python_plugins=True) == 0


def test_dry_run_fp16_strongly_typed(exported, capsys):
    saved = exported / "fp16_for_trt.onnx"
    assert be.main(["--onnx", str(exported / "tiny_trt.onnx"), "--fp16", "--trt-api", "11", "--dry-run",
                    "--save-onnx", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "TensorRT API 11 (strongly typed), fp16" in out and "plugins BatchedNMS, MultiLevelRoIAlign" in out
    assert "opt 1x192x256" in out and "dry run: no engine built" in out
    model = onnx.load(str(saved))
    types_ = collections.Counter(i.data_type for i in model.graph.initializer)
    assert types_[TensorProto.FLOAT16] > 40
    assert sorted({n.op_type for n in model.graph.node if n.domain == CUSTOM_DOMAIN}) == \
        ["BatchedNMS", "MultiLevelRoIAlign"]
    assert not (exported / "tiny_trt.engine").exists()


def test_dry_run_int8_qdq_from_calibration_images(exported, capsys):
    saved = exported / "qdq_for_trt.onnx"
    assert be.main(["--onnx", str(exported / "tiny_ort.onnx"), "--int8", "--calib-images", str(exported / "calib"),
                    "--calib-count", "2", "--trt-api", "11", "--dry-run", "--save-onnx", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "calibrated" in out and "on 2 images" in out and "convolutions quantized" in out
    ops = collections.Counter(n.op_type for n in onnx.load(str(saved)).graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > ops["QuantizeLinear"]


def test_dry_run_weakly_typed_plan(exported, capsys):
    assert be.main(["--onnx", str(exported / "tiny_ort.onnx"), "--fp16", "--trt-api", "10", "--dry-run",
                    "--opt-shape", "2x192x256", "--max-shape", "4x256x256"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT API 10 (weakly typed), fp16, builder flags FP16" in out and "max 4x256x256" in out


def test_default_engine_name_is_the_one_the_readme_predicts_with():
    """Each README build command without --out is followed by a predict command on the file the
    build writes by default."""
    import re
    import shlex

    assert default_out(Path("w/model_trt.onnx"), "fp16") == Path("w/model_trt_fp16.engine")
    assert default_out(Path("model_ort.onnx"), "fp32") == Path("model_ort_fp32.engine")
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in readme.splitlines()]
    builds = [i for i, line in enumerate(lines) if line.startswith("python runtime/build_engine.py")]
    checked = 0
    for i in builds:
        argv = shlex.split(lines[i])[2:]
        if "--out" in argv or "--check" in argv or "--dry-run" in argv:
            continue
        onnx_path = Path(argv[argv.index("--onnx") + 1])
        precision = "fp16" if "--fp16" in argv else "int8" if "--int8" in argv else "fp32"
        engine = str(default_out(onnx_path, precision))
        later = [line for line in lines[i + 1:] if line.startswith("python runtime/predict.py")]
        assert later and re.search(rf"--model {re.escape(engine)}(\s|$)", later[0]), (lines[i], later[:1])
        checked += 1
    assert checked >= 1
