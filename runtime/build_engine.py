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
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pfpn.runtime.trt.build_inputs import Inputs, calibration_batches, check_inputs, prepare_onnx
from pfpn.runtime.trt.build_plan import (DEFAULT_WORKSPACE_GB, BuildError, BuildPlan, ConformanceFailure,
                                         EnvironmentProblem, UsageError, choose_api, custom_ops, make_plan, one_line)

EXIT_USAGE = 2  # bad arguments or input files
EXIT_ENVIRONMENT = 3  # no TensorRT / no GPU
EXIT_BUILD = 1  # TensorRT failed

Echo = Callable[[str], None]


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


def _silent(_line: str) -> None:
    pass


def _describe(plan: BuildPlan, inputs: Inputs) -> str:
    plugins = f"plugins {', '.join(custom_ops(inputs.model))}" if custom_ops(inputs.model) else "no plugins"
    return (f"plan: {plan.describe()}; profile min {inputs.profile.min} / opt {inputs.profile.opt} / max "
            f"{inputs.profile.max} (BxHxW); {plugins}")


def _parser_onnx(inputs: Inputs, plan: BuildPlan, *, calib_method: str, save_onnx: str | os.PathLike | None,
                 say: Echo) -> tuple[Any, bytes, Any]:
    """The ONNX TensorRT's parser receives (prepared, saved when asked) -> (model, bytes, its
    conformance report)."""
    from pfpn.runtime.trt.conformance import check_onnx

    model, notes = prepare_onnx(inputs, plan, calib_method=calib_method)
    for note in notes:
        say(note)
    onnx_bytes = model.SerializeToString()
    if save_onnx:
        from pfpn.runtime.files import atomic_write_bytes

        atomic_write_bytes(save_onnx, onnx_bytes)
        say(f"wrote {save_onnx}")
    return model, onnx_bytes, check_onnx(model)


def check_engine_onnx(*, onnx: str | os.PathLike, out: str | os.PathLike | None = None, fp16: bool = False,
                      int8: bool = False, calib_images: str | os.PathLike | None = None, calib_count: int = 64,
                      calib_cache: str | os.PathLike | None = None, calib_method: str = "percentile",
                      workspace: float = DEFAULT_WORKSPACE_GB, min_shape: str | None = None,
                      opt_shape: str | None = None, max_shape: str | None = None, trt_api: str = "auto",
                      save_onnx: str | os.PathLike | None = None, echo: Echo | None = print) -> Any:
    """``--check``: the ONNX TensorRT's parser would receive (after the --fp16 / --int8 preparation
    of ``trt_api``'s plan) against TensorRT 10.x/11.x's documented ONNX rules; TensorRT-free.
    Prints the whole report (``echo``; None: silent) and returns it (a ConformanceReport);
    ConformanceFailure when a rule is broken. The keywords are :func:`build_engine`'s, checked alike."""
    say = echo or _silent
    inputs = check_inputs(onnx=onnx, out=out, fp16=fp16, int8=int8, calib_images=calib_images,
                          calib_count=calib_count, calib_cache=calib_cache, workspace=workspace, min_shape=min_shape,
                          opt_shape=opt_shape, max_shape=max_shape, save_onnx=save_onnx)
    plan = make_plan(choose_api(trt_api, None), fp16, int8)  # the check is TensorRT-free, whatever is installed
    say(_describe(plan, inputs))
    _, _, report = _parser_onnx(inputs, plan, calib_method=calib_method, save_onnx=save_onnx, say=say)
    say(report.format())
    if report.errors:
        raise ConformanceFailure(f"{len(report.errors)} TensorRT conformance errors (listed above)")
    return report


def build_engine(*, onnx: str | os.PathLike, out: str | os.PathLike | None = None, fp16: bool = False,
                 int8: bool = False, calib_images: str | os.PathLike | None = None, calib_count: int = 64,
                 calib_cache: str | os.PathLike | None = None, calib_method: str = "percentile",
                 workspace: float = DEFAULT_WORKSPACE_GB, min_shape: str | None = None, opt_shape: str | None = None,
                 max_shape: str | None = None, timing_cache: str | os.PathLike | None = None, trt_api: str = "auto",
                 dry_run: bool = False, save_onnx: str | os.PathLike | None = None, verbose: bool = False,
                 echo: Echo | None = print) -> Path | None:
    """Build the engine (and its sidecar) of ``onnx``; one keyword per command-line flag, same
    defaults. -> the engine path (``out``, default ``<onnx stem>_<precision>.engine`` beside the
    ONNX), or None for ``dry_run`` (everything but the build; needs neither TensorRT nor a GPU).
    ``echo``: the progress lines (None: silent). Raises UsageError (arguments, files, an ONNX that
    breaks TensorRT's rules), EnvironmentProblem (no TensorRT / GPU / plugin support), BuildError."""
    import onnx as onnx_lib

    from pfpn.runtime.cuda_driver import CudaError, GpuUnavailableError, gpus
    from pfpn.runtime.trt.builder import build_serialized
    from pfpn.runtime.trt.engine_file import EngineInfo, PluginInfo, sha256_file, write_engine
    from pfpn.runtime.trt.runner import import_tensorrt

    say = echo or _silent
    inputs = check_inputs(onnx=onnx, out=out, fp16=fp16, int8=int8, calib_images=calib_images,
                          calib_count=calib_count, calib_cache=calib_cache, workspace=workspace, min_shape=min_shape,
                          opt_shape=opt_shape, max_shape=max_shape, save_onnx=save_onnx)
    needs_plugins = bool(custom_ops(inputs.model))
    trt: Any = None
    try:
        trt = import_tensorrt()
    except ImportError as e:
        if not dry_run:
            raise EnvironmentProblem(str(e)) from None
    version = trt.__version__ if trt is not None else None
    plan = make_plan(choose_api(trt_api, version), fp16, int8)
    say(_describe(plan, inputs))
    if not dry_run:
        try:
            gpu = gpus()[0]
        except (CudaError, GpuUnavailableError) as e:
            raise EnvironmentProblem(f"no CUDA GPU found ({one_line(e)})") from None
    model, onnx_bytes, report = _parser_onnx(inputs, plan, calib_method=calib_method, save_onnx=save_onnx, say=say)
    say(report.summary() + (" (details: --check)" if report.findings else ""))
    if report.errors:
        say(report.format(notes=False))
        raise UsageError(f"the ONNX breaks {len(report.errors)} TensorRT parser rules (listed above); TensorRT "
                         f"would refuse it")
    if dry_run:
        say("dry run: no engine built")
        return None
    if needs_plugins:
        from pfpn.plugins.trt_plugins import plugin_infos, register_plugins

        try:
            register_plugins()
        except ImportError as e:
            raise EnvironmentProblem(f"{one_line(e)}") from None
    t0 = time.time()
    engine = build_serialized(onnx_bytes, plan, onnx_path=inputs.onnx_path, profile=inputs.profile,
                              workspace=workspace, has_plugins=needs_plugins,
                              calibration=calibration_batches(inputs) if plan.calibrator else None,
                              calib_cache=calib_cache, timing_cache=timing_cache, verbose=verbose)
    info = EngineInfo(
        tensorrt_version=version or "", trt_api=plan.api, precision=plan.precision, profile=inputs.profile.to_dict(),
        model_metadata=inputs.metadata.to_props(), device_name=gpu.name, compute_capability=gpu.compute_capability,
        plugins=[PluginInfo(**p) for p in plugin_infos()] if needs_plugins else [],
        onnx_file=inputs.onnx_path.name, onnx_sha256=sha256_file(inputs.onnx_path),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_options={"fp16": fp16, "int8": int8, "workspace_gb": workspace,
                       "calib_count": len(inputs.calib_paths), "calib_method": calib_method if int8 else None,
                       "onnx_opset": max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")),
                                         default=0), "onnx_ir": onnx_lib.IR_VERSION})
    write_engine(inputs.out, engine, info)
    say(f"built {inputs.out} ({len(engine) / 1e6:.1f} MB, {plan.precision}, TensorRT {version}, {gpu.name}) in "
        f"{time.time() - t0:.1f} s; sidecar {inputs.out}.json")
    say(f"next: python runtime/predict.py --model {inputs.out} IMAGES... --out DIR")
    return inputs.out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common = dict(onnx=args.onnx, out=args.out, fp16=args.fp16, int8=args.int8, calib_images=args.calib_images,
                  calib_count=args.calib_count, calib_cache=args.calib_cache, calib_method=args.calib_method,
                  workspace=args.workspace, min_shape=args.min_shape, opt_shape=args.opt_shape,
                  max_shape=args.max_shape, trt_api=args.trt_api, save_onnx=args.save_onnx)
    try:
        if args.check:
            check_engine_onnx(**common)
        else:
            build_engine(**common, timing_cache=args.timing_cache, dry_run=args.dry_run, verbose=args.verbose)
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
