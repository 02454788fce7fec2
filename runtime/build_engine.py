"""Build a TensorRT engine from an exported Panoptic FPN ONNX file (export/to_onnx.py).

    python runtime/build_engine.py --onnx model_trt.onnx --fp16
    python runtime/build_engine.py --onnx model_trt.onnx --int8 --calib-images val2017 --calib-count 256
    python runtime/build_engine.py --onnx model_ort.onnx --min-shape 1x320x320 --opt-shape 2x800x1344 \\
        --max-shape 4x1344x1344 --timing-cache trt.cache --out model.engine

Writes ``M.engine`` (default ``<onnx stem>_<precision>.engine`` beside the ONNX, e.g.
``model_trt_fp16.engine``; a plain TensorRT plan, trtexec loads it) and ``M.engine.json`` (its sidecar:
model metadata, TensorRT version, precision, profile, GPU, plugins; runtime/trt/engine_file.py).
The runtime refuses an engine built by another TensorRT version or for another GPU architecture
with a message saying so. Nothing is written unless the build succeeds.

TensorRT APIs (--trt-api):
  10  weakly typed network: --fp16 / --int8 are builder flags; --int8 calibrates with an
      IInt8EntropyCalibrator2 over --calib-images at the profile's opt shape. TensorRT 10 only.
  11  strongly typed network (TensorRT 11 has no precision flags and no calibrators; also works on
      TensorRT 10): the precision is written into the ONNX before parsing. --fp16 converts the
      graph to fp16 but keeps inputs/outputs, the normalisation, softmax/sigmoid/exp and the layers
      feeding them, box decoding, NMS/RoIAlign inputs and GroupNorm statistics in fp32
      (runtime/trt/fp16.py); --int8 inserts Q/DQ on the convolutions from activation ranges that
      ONNX Runtime measures on --calib-images (runtime/trt/qdq.py); everything else stays fp32.
  auto  (default) 10 on TensorRT 10.x, 11 on TensorRT >= 11.

Flavors: a ``trt``-flavor ONNX has MultiLevelRoIAlign / BatchedNMS nodes that need this project's
Python AOT plugins (plugins/trt_plugins.py, TensorRT >= 10.9; the kernels are compiled with Triton
for this GPU and embedded in the engine). An ``ort``-flavor ONNX has only standard ops
(NonMaxSuppression, RoiAlign via TensorRT's bundled ROIAlign plugin) and needs no plugin.

Every build first checks the ONNX the parser receives against TensorRT 10.x/11.x's documented
ONNX rules (runtime/trt/conformance.py) and refuses to start on a broken rule; ``--check`` prints
the whole report (errors, warnings, notes per node) and builds nothing.

Needs TensorRT and an NVIDIA GPU; without them it exits non-zero with a one-line reason. --dry-run
and --check do everything that needs neither (checks, profile, precision plan, fp16 / Q/DQ graph
with --save-onnx) and build nothing.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence


from pfpn.plugins.names import CUSTOM_DOMAIN  # noqa: E402
from pfpn.runtime.trt.profiles import Profile, ProfileError, make_profile  # noqa: E402

DEFAULT_WORKSPACE_GB = 4.0
EXIT_USAGE = 2  # bad arguments or input files
EXIT_ENVIRONMENT = 3  # no TensorRT / no GPU
EXIT_BUILD = 1  # TensorRT failed


class BuildError(RuntimeError):
    pass


class UsageError(ValueError):
    pass


class EnvironmentProblem(RuntimeError):
    pass


class ConformanceFailure(RuntimeError):
    """--check found rules the ONNX breaks."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="exported ONNX file (export/to_onnx.py, ort or trt flavor)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="fp16 engine (numerically sensitive parts stay fp32)")
    prec.add_argument("--int8", action="store_true",
                      help="int8 convolutions (needs --calib-images); the rest stays fp32")
    p.add_argument("--calib-images", metavar="DIR", help="folder of .jpg/.png images for --int8 calibration")
    p.add_argument("--calib-count", type=int, default=64, metavar="N",
                   help="use the first N images of --calib-images (default 64; batches of the opt shape's batch)")
    p.add_argument("--calib-cache", metavar="FILE",
                   help="TensorRT 10 calibration cache: read if present (skips calibration), written after")
    p.add_argument("--calib-method", choices=["percentile", "max"], default="percentile",
                   help="TensorRT 11 Q/DQ activation range: 99.99th percentile of |x| (default) or max |x|")
    p.add_argument("--workspace", type=float, default=DEFAULT_WORKSPACE_GB, metavar="GB",
                   help=f"builder workspace memory limit in GiB (default {DEFAULT_WORKSPACE_GB:g})")
    p.add_argument("--min-shape", metavar="BxHxW",
                   help="smallest input batch x height x width (default 1x32x32); H, W multiples of 32")
    p.add_argument("--opt-shape", metavar="BxHxW",
                   help="shape TensorRT optimises for, and INT8 calibrates at (default: 1 x the padded "
                        "max_short_side x max_long_side of the model, 1x800x1344 for the published config)")
    p.add_argument("--max-shape", metavar="BxHxW",
                   help="largest input (default: covers portrait and landscape, 1x1344x1344 for the published "
                        "config)")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="TensorRT timing cache: loaded if present, updated after the build (faster rebuilds)")
    p.add_argument("--out", metavar="M.engine", help="engine path (default: <onnx stem>_<precision>.engine "
                   "beside the ONNX, e.g. model_trt_fp16.engine); the sidecar is <out>.json")
    p.add_argument("--trt-api", choices=["auto", "10", "11"], default="auto",
                   help="10: weakly typed (builder precision flags, calibrator); 11: strongly typed (precision in "
                        "the ONNX); auto: by the installed TensorRT's major version")
    p.add_argument("--dry-run", action="store_true",
                   help="check arguments and files, print the build plan, prepare the fp16 / Q/DQ ONNX (see "
                        "--save-onnx), build nothing; needs neither TensorRT nor a GPU")
    p.add_argument("--check", action="store_true",
                   help="only check the ONNX TensorRT's parser would receive (after --fp16 / --int8 preparation) "
                        "against TensorRT 10.x/11.x's documented ONNX rules (runtime/trt/conformance.py); needs "
                        "neither TensorRT nor a GPU; exits 1 when a rule is broken")
    p.add_argument("--save-onnx", metavar="FILE", help="also write the ONNX given to TensorRT's parser")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# decisions (plain functions)

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


@dataclass
class Inputs:
    onnx_path: Path
    out: Path
    model: Any  # onnx.ModelProto
    metadata: Any  # runtime.contract.ModelMetadata
    profile: Profile
    calib_paths: list[Path]


def check_inputs(args: argparse.Namespace) -> Inputs:
    """Everything about the arguments and files that can be checked without TensorRT."""
    import onnx

    from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata
    from pfpn.runtime.images import ImageError, list_images
    from pfpn.runtime.trt.calibration import CalibrationError

    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise UsageError(f"--onnx {onnx_path}: no such file")
    try:
        model = onnx.load(str(onnx_path))
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
    out = Path(args.out) if args.out else default_out(onnx_path, precision_of(args.fp16, args.int8))
    if out.resolve() == onnx_path.resolve():
        raise UsageError(f"--out {out} would overwrite the ONNX file")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder")
    if not args.workspace > 0:
        raise UsageError(f"--workspace must be > 0 GiB, got {args.workspace}")
    try:
        profile = make_profile(args.min_shape, args.opt_shape, args.max_shape, size_divisor=metadata.size_divisor,
                               max_long_side=metadata.max_long_side, max_short_side=metadata.max_short_side)
    except ProfileError as e:
        raise UsageError(str(e)) from None
    calib_paths: list[Path] = []
    if args.int8:
        if not args.calib_images:
            raise UsageError("--int8 needs --calib-images DIR (real images like the deployment's)")
        try:
            calib_paths = list_images(args.calib_images, count=args.calib_count, what="--calib-images")
        except (CalibrationError, ImageError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
        if len(calib_paths) < profile.opt.batch:
            raise UsageError(f"--calib-images: {len(calib_paths)} images are fewer than the opt shape's batch "
                             f"{profile.opt.batch}")
    elif args.calib_images or args.calib_cache:
        raise UsageError("--calib-images / --calib-cache are only used with --int8")
    if args.save_onnx and Path(args.save_onnx).resolve() == onnx_path.resolve():
        raise UsageError("--save-onnx would overwrite the input ONNX")
    return Inputs(onnx_path, out, model, metadata, profile, calib_paths)


def calibration_batches(inputs: Inputs) -> Iterator[dict[str, Any]]:
    from pfpn.runtime.trt.calibration import iter_batches

    opt = inputs.profile.opt
    return iter_batches(inputs.calib_paths, opt.batch, opt.height, opt.width, inputs.metadata.max_long_side,
                        inputs.metadata.max_short_side)


def prepare_onnx(inputs: Inputs, plan: BuildPlan, args: argparse.Namespace) -> tuple[Any, list[str]]:
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
                                method=args.calib_method)
        model, qdq_report = insert_qdq(model, ranges)
        notes.append(f"calibrated {len(tensors)} activation ranges on {len(inputs.calib_paths)} images in "
                     f"{time.time() - t0:.1f} s ({args.calib_method}); {qdq_report.summary()}")
    return model, notes


# ----------------------------------------------------------------------------------------------
# TensorRT (thin)

def build_serialized(onnx_bytes: bytes, plan: BuildPlan, inputs: Inputs, args: argparse.Namespace,
                     has_plugins: bool) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # TensorRT's bundled plugins (ROIAlign for the ort flavor's RoiAlign)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan, has_plugins))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(inputs.onnx_path)):
        errors = [one_line(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT's ONNX parser failed ({len(errors)} errors): {errors[0] if errors else '?'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace * (1 << 30)))
    for name in plan.builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} (use --trt-api 11)")
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in inputs.profile.input_shapes().items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)
    calibrator = None
    if plan.calibrator:
        from pfpn.runtime.trt.calibration import make_trt10_calibrator

        calibrator = make_trt10_calibrator(calibration_batches(inputs), inputs.profile.opt.batch, args.calib_cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    cache = None
    if args.timing_cache:
        data = Path(args.timing_cache).read_bytes() if Path(args.timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine (see the TensorRT log above)")
    if cache is not None:
        from pfpn.runtime.files import atomic_write_bytes

        atomic_write_bytes(args.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def run(args: argparse.Namespace) -> Path | None:
    import onnx

    from pfpn.runtime.trt.engine_file import EngineInfo, PluginInfo, sha256_file, write_engine
    from pfpn.runtime.cuda_driver import CudaError, GpuUnavailableError, gpus
    from pfpn.runtime.trt.conformance import check_onnx
    from pfpn.runtime.trt.runner import import_tensorrt

    inputs = check_inputs(args)
    needs_plugins = bool(custom_ops(inputs.model))
    trt: Any = None
    if not args.check:  # the check is TensorRT-free, whatever is installed
        try:
            trt = import_tensorrt()
        except ImportError as e:
            if not args.dry_run:
                raise EnvironmentProblem(str(e)) from None
    version = trt.__version__ if trt is not None else None
    api = choose_api(args.trt_api, version)
    plan = make_plan(api, args.fp16, args.int8)
    plugins = f"plugins {', '.join(custom_ops(inputs.model))}" if needs_plugins else "no plugins"
    print(f"plan: {plan.describe()}; profile min {inputs.profile.min} / opt {inputs.profile.opt} / max "
          f"{inputs.profile.max} (BxHxW); {plugins}")
    if not (args.dry_run or args.check):
        try:
            gpu = gpus()[0]
        except (CudaError, GpuUnavailableError) as e:
            raise EnvironmentProblem(f"no CUDA GPU found ({one_line(e)})") from None
    model, notes = prepare_onnx(inputs, plan, args)
    for note in notes:
        print(note)
    onnx_bytes = model.SerializeToString()
    if args.save_onnx:
        from pfpn.runtime.files import atomic_write_bytes

        atomic_write_bytes(args.save_onnx, onnx_bytes)
        print(f"wrote {args.save_onnx}")
    report = check_onnx(model)
    if args.check:
        print(report.format())
        if report.errors:
            raise ConformanceFailure(f"{len(report.errors)} TensorRT conformance errors (listed above)")
        return None
    print(report.summary() + (" (details: --check)" if report.findings else ""))
    if report.errors:
        print(report.format(notes=False))
        raise UsageError(f"the ONNX breaks {len(report.errors)} TensorRT parser rules (listed above); TensorRT "
                         f"would refuse it")
    if args.dry_run:
        print("dry run: no engine built")
        return None
    if needs_plugins:
        from pfpn.plugins.trt_plugins import plugin_infos, register_plugins

        try:
            register_plugins()
        except ImportError as e:
            raise EnvironmentProblem(f"{one_line(e)}") from None
    t0 = time.time()
    engine = build_serialized(onnx_bytes, plan, inputs, args, needs_plugins)
    info = EngineInfo(
        tensorrt_version=version or "", trt_api=plan.api, precision=plan.precision, profile=inputs.profile.to_dict(),
        model_metadata=inputs.metadata.to_props(), device_name=gpu.name, compute_capability=gpu.compute_capability,
        plugins=[PluginInfo(**p) for p in plugin_infos()] if needs_plugins else [],
        onnx_file=inputs.onnx_path.name, onnx_sha256=sha256_file(inputs.onnx_path),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_options={"fp16": args.fp16, "int8": args.int8, "workspace_gb": args.workspace,
                       "calib_count": len(inputs.calib_paths), "calib_method": args.calib_method if args.int8 else None,
                       "onnx_opset": max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")),
                                         default=0), "onnx_ir": onnx.IR_VERSION})
    write_engine(inputs.out, engine, info)
    print(f"built {inputs.out} ({len(engine) / 1e6:.1f} MB, {plan.precision}, TensorRT {version}, {gpu.name}) in "
          f"{time.time() - t0:.1f} s; sidecar {inputs.out}.json")
    print(f"next: python runtime/predict.py --model {inputs.out} IMAGES... --out DIR")
    return inputs.out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except EnvironmentProblem as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except (BuildError, ConformanceFailure) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BUILD
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
