"""The decisions of an engine build, TensorRT-free (runtime/build_engine.py): which TensorRT API
(weakly typed 10 / strongly typed 11), the precision plan, the network flags, the default engine
name; and the build's typed problems (only ``build_engine.main`` turns them into exit codes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfpn.plugins.names import CUSTOM_DOMAIN

DEFAULT_WORKSPACE_GB = 4.0


class BuildError(RuntimeError):
    """TensorRT failed (parser, builder)."""


class UsageError(ValueError):
    """Bad arguments or input files."""


class EnvironmentProblem(RuntimeError):
    """No TensorRT, no GPU, or a TensorRT that cannot host the plugins."""


class ConformanceFailure(RuntimeError):
    """--check found rules the ONNX breaks."""


def one_line(message: object) -> str:
    """``message`` on one line (runs of white space, newlines included, become one space)."""
    return " ".join(str(message).split())


@dataclass
class BuildPlan:
    api: str  # "10" or "11"
    precision: str  # "fp32", "fp16", "int8"
    strongly_typed: bool
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag names to set
    clear_flags: list[str] = field(default_factory=list)  # BuilderFlag names to clear
    onnx_transform: str = "none"  # "none", "fp16", "qdq"
    calibrator: bool = False  # TensorRT 10 entropy calibrator
    needs_calibration_images: bool = False

    def describe(self) -> str:
        how = {"none": "", "fp16": ", ONNX converted to fp16 before parsing",
               "qdq": ", Q/DQ inserted in the ONNX from ONNX Runtime calibration ranges"}[self.onnx_transform]
        flags = f", builder flags {'+'.join(self.builder_flags)}" if self.builder_flags else ""
        calib = ", IInt8EntropyCalibrator2" if self.calibrator else ""
        typing_ = "strongly typed" if self.strongly_typed else "weakly typed"
        return f"TensorRT API {self.api} ({typing_}), {self.precision}{flags}{calib}{how}"


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UsageError(f"cannot read the TensorRT version {version!r}") from None


def choose_api(requested: str, trt_version: str | None) -> str:
    """'10' or '11' for the --trt-api choice and the installed TensorRT version (None: unknown)."""
    if requested == "auto":
        if trt_version is None:
            return "11"
        return "10" if trt_major(trt_version) <= 10 else "11"
    if trt_version is not None:
        major = trt_major(trt_version)
        if requested == "10" and major >= 11:
            raise UsageError(f"--trt-api 10 needs TensorRT 10, this is TensorRT {trt_version} (TensorRT 11 removed the "
                             f"weakly typed API: no FP16/INT8 flags, no calibrators); use --trt-api 11 or auto")
        if requested == "11" and major < 10:
            raise UsageError(f"--trt-api 11 (strongly typed networks) needs TensorRT >= 10, this is {trt_version}")
    return requested


def precision_of(fp16: bool, int8: bool) -> str:
    return "fp16" if fp16 else "int8" if int8 else "fp32"


def make_plan(api: str, fp16: bool, int8: bool) -> BuildPlan:
    precision = precision_of(fp16, int8)
    if api == "10":
        flags = ["FP16"] if fp16 else ["INT8"] if int8 else []
        return BuildPlan(api="10", precision=precision, strongly_typed=False, builder_flags=flags,
                         clear_flags=["TF32"] if precision == "fp32" else [], calibrator=int8,
                         needs_calibration_images=int8)
    if api == "11":
        transform = "fp16" if fp16 else "qdq" if int8 else "none"
        return BuildPlan(api="11", precision=precision, strongly_typed=True, onnx_transform=transform,
                         clear_flags=["TF32"] if precision == "fp32" else [], needs_calibration_images=int8)
    raise UsageError(f"unknown TensorRT API {api!r}")


def network_flags(trt: Any, plan: BuildPlan, has_python_plugins: bool) -> int:
    """create_network() flags: STRONGLY_TYPED where the API has it (TensorRT 11 is always strongly
    typed and may not list it), PREFER_AOT_PYTHON_PLUGINS (>= 10.9) for our plugins."""
    flags = 0
    enum = trt.NetworkDefinitionCreationFlag
    if plan.strongly_typed and hasattr(enum, "STRONGLY_TYPED"):
        flags |= 1 << int(enum.STRONGLY_TYPED)
    if has_python_plugins and hasattr(enum, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(enum.PREFER_AOT_PYTHON_PLUGINS)
    return flags


def default_out(onnx_path: Path, precision: str) -> Path:
    """``model_trt.onnx`` + fp16 -> ``model_trt_fp16.engine`` beside it: one name per ONNX and
    precision, the name the README's build-then-predict commands use."""
    return onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")


def custom_ops(model: Any) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.domain == CUSTOM_DOMAIN})
