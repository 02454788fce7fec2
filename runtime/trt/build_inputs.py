"""What an engine build reads, checked, and the ONNX it gives TensorRT's parser, TensorRT-free
(runtime/build_engine.py): :func:`check_inputs` (the ONNX file, the contract, the profile, the
calibration images) and :func:`prepare_onnx` (fp16 conversion or Q/DQ insertion by plan)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pfpn.runtime.trt.build_plan import BuildPlan, UsageError, custom_ops, default_out, one_line, precision_of
from pfpn.runtime.trt.profiles import Profile, ProfileError, make_profile


@dataclass
class Inputs:
    onnx_path: Path
    out: Path
    model: Any  # onnx.ModelProto
    metadata: Any  # runtime.contract.ModelMetadata
    profile: Profile
    calib_paths: list[Path]


def check_inputs(*, onnx: str | os.PathLike, out: str | os.PathLike | None, fp16: bool, int8: bool,
                 calib_images: str | os.PathLike | None, calib_count: int, calib_cache: str | os.PathLike | None,
                 workspace: float, min_shape: str | None, opt_shape: str | None, max_shape: str | None,
                 save_onnx: str | os.PathLike | None) -> Inputs:
    """Everything about the build's arguments and files that can be checked without TensorRT
    (the keywords are build_engine.py's flags); UsageError names the first problem."""
    import onnx as onnx_lib

    from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata
    from pfpn.runtime.images import ImageError, list_images
    from pfpn.runtime.trt.calibration import CalibrationError

    onnx_path = Path(onnx)
    if not onnx_path.is_file():
        raise UsageError(f"--onnx {onnx_path}: no such file")
    try:
        model = onnx_lib.load(str(onnx_path))
    except Exception as e:
        raise UsageError(f"--onnx {onnx_path}: not a readable ONNX file ({one_line(e)})") from None
    try:
        metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    except (ValueError, KeyError) as e:
        raise UsageError(f"--onnx {onnx_path}: {one_line(e)}") from None
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != list(INPUT_NAMES) or sorted(names_out) != sorted(OUTPUT_NAMES):
        raise UsageError(f"--onnx {onnx_path}: I/O {names_in} -> {names_out} is not the export contract's")
    out_path = Path(out) if out else default_out(onnx_path, precision_of(fp16, int8))
    if out_path.resolve() == onnx_path.resolve():
        raise UsageError(f"--out {out_path} would overwrite the ONNX file")
    if out_path.exists() and out_path.is_dir():
        raise UsageError(f"--out {out_path} is a folder")
    if not workspace > 0:
        raise UsageError(f"--workspace must be > 0 GiB, got {workspace}")
    try:
        profile = make_profile(min_shape, opt_shape, max_shape, size_divisor=metadata.size_divisor,
                               max_long_side=metadata.max_long_side, max_short_side=metadata.max_short_side)
    except ProfileError as e:
        raise UsageError(str(e)) from None
    calib_paths: list[Path] = []
    if int8:
        if not calib_images:
            raise UsageError("--int8 needs --calib-images DIR (real images like the deployment's)")
        try:
            calib_paths = list_images(calib_images, count=calib_count, what="--calib-images")
        except (CalibrationError, ImageError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
        if len(calib_paths) < profile.opt.batch:
            raise UsageError(f"--calib-images: {len(calib_paths)} images are fewer than the opt shape's batch "
                             f"{profile.opt.batch}")
    elif calib_images or calib_cache:
        raise UsageError("--calib-images / --calib-cache are only used with --int8")
    if save_onnx and Path(save_onnx).resolve() == onnx_path.resolve():
        raise UsageError("--save-onnx would overwrite the input ONNX")
    return Inputs(onnx_path, out_path, model, metadata, profile, calib_paths)


def calibration_batches(inputs: Inputs) -> Iterator[dict[str, Any]]:
    """The calibration feeds at the profile's opt shape (batch, height, width)."""
    from pfpn.runtime.trt.calibration import calibration_feeds

    opt = inputs.profile.opt
    return calibration_feeds(inputs.calib_paths, max_long_side=inputs.metadata.max_long_side,
                             max_short_side=inputs.metadata.max_short_side, batch=opt.batch,
                             box=(opt.height, opt.width))


def prepare_onnx(inputs: Inputs, plan: BuildPlan, *, calib_method: str) -> tuple[Any, list[str]]:
    """The ONNX given to TensorRT's parser, and notes for the log. TensorRT-free."""
    notes: list[str] = []
    model = inputs.model
    if plan.onnx_transform == "fp16":
        from pfpn.runtime.trt.fp16 import convert_to_fp16

        model, fp16_report = convert_to_fp16(model)
        notes.append(fp16_report.summary())
    elif plan.onnx_transform == "qdq":
        from pfpn.runtime.trt.qdq import activation_tensors, collect_ranges, insert_qdq, quantizable_nodes

        nodes, _ = quantizable_nodes(model)
        tensors = activation_tensors(model, nodes)
        factory = None
        if custom_ops(model):
            from pfpn.plugins.ort_ops import session_options

            factory = session_options
        t0 = time.time()
        ranges = collect_ranges(model, tensors, calibration_batches(inputs), session_options=factory,
                                method=calib_method)
        model, qdq_report = insert_qdq(model, ranges)
        notes.append(f"calibrated {len(tensors)} activation ranges on {len(inputs.calib_paths)} images in "
                     f"{time.time() - t0:.1f} s ({calib_method}); {qdq_report.summary()}")
    return model, notes
