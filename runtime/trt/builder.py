"""TensorRT itself, thin (runtime/build_engine.py; benchmarks/gpu_check.py's one-node networks):
parse an ONNX into a network, build a serialized engine. ``trt`` is the imported ``tensorrt``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from pfpn.runtime.trt.build_plan import BuildError, BuildPlan, network_flags, one_line
from pfpn.runtime.trt.profiles import Profile


def parse_network(trt: Any, onnx_bytes: bytes, *, logger: Any, flags: int, path: str | None = None
                  ) -> tuple[Any, Any, Any]:
    """TensorRT's bundled plugins loaded (ROIAlign for the ort flavor's RoiAlign), ``onnx_bytes``
    parsed into a network created with ``flags`` -> (builder, network, parser); BuildError when the
    parser refuses it. ``path``: the file name TensorRT resolves external weights against."""
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_bytes, path) if path is not None else parser.parse(onnx_bytes)
    if not ok:
        errors = [one_line(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT's ONNX parser failed ({len(errors)} errors): {errors[0] if errors else '?'}")
    return builder, network, parser


def serialize_network(builder: Any, network: Any, config: Any) -> bytes:
    """``builder.build_serialized_network`` as bytes; BuildError when TensorRT fails."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def build_serialized(onnx_bytes: bytes, plan: BuildPlan, *, onnx_path: Path, profile: Profile, workspace: float,
                     has_plugins: bool, calibration: Iterator[dict[str, Any]] | None = None,
                     calib_cache: str | os.PathLike | None = None, timing_cache: str | os.PathLike | None = None,
                     verbose: bool = False) -> bytes:
    """The engine of ``plan`` for ``profile`` (workspace in GiB). ``calibration``: the TensorRT 10
    calibrator's feeds (plan.calibrator); ``timing_cache`` is loaded if present and written after."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder, network, _parser = parse_network(trt, onnx_bytes, logger=logger,
                                              flags=network_flags(trt, plan, has_plugins), path=str(onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace * (1 << 30)))
    for name in plan.builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} (use --trt-api 11)")
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    optimization_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.input_shapes().items():
        optimization_profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(optimization_profile)
    calibrator = None
    if plan.calibrator:
        from pfpn.runtime.trt.calibration import make_trt10_calibrator

        if calibration is None:
            raise ValueError("a TensorRT 10 INT8 plan needs the calibration feeds")
        calibrator = make_trt10_calibrator(calibration, profile.opt.batch, calib_cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(optimization_profile)
    cache = None
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, False)
    try:
        engine = serialize_network(builder, network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if cache_path is not None:
        from pfpn.runtime.files import atomic_write_bytes

        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return engine
