"""Export a Panoptic FPN checkpoint to ONNX.

    python export/to_onnx.py --ckpt work_dirs/tiny/final.pt                      # -> final_ort.onnx
    python export/to_onnx.py --ckpt panoptic_fpn_r50.pth --flavor trt --verify --verify-images DIR

The file follows the export contract (runtime/contract.py): uint8 BGR images resized and padded
by the caller, normalisation inside the graph, fixed-size detections with a valid count, 28x28
mask probabilities of the detected class and stride-4 semantic logits. Height, width and batch
are dynamic. Its metadata carries the contract version, mean/std, input format, categories and
every threshold.

Flavors: `ort` lowers the custom RoIAlign / NMS ops to standard ONNX (ONNX Runtime, OpenVINO,
TensorRT's built-in layers); `trt` keeps them as custom nodes for the TensorRT plugins (they also
run on the CPU under ONNX Runtime with onnxruntime-extensions).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


MIN_OPSET = 17


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our checkpoint (.pt) or a published mmdetection one (.pth)")
    p.add_argument("--out", help="output .onnx path (default: next to the checkpoint, <name>_<flavor>.onnx)")
    p.add_argument("--flavor", choices=["ort", "trt"], default="ort",
                   help="ort: standard ONNX ops only; trt: custom RoIAlign/NMS nodes for TensorRT plugins")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})")
    p.add_argument("--export-size", default=None, metavar="HxW",
                   help="image size traced at export (any size runs later; default: the config's max short x "
                        "max long side)")
    p.add_argument("--categories", help="COCO panoptic JSON whose categories a published checkpoint with "
                   "non-COCO classes should use")
    p.add_argument("--simplify", action="store_true", help="run onnxslim on the exported graph (needs onnxslim)")
    knobs = p.add_argument_group("deployment settings (default: the checkpoint's; recorded in the file's metadata, "
                                 "which the runtime follows)")
    knobs.add_argument("--score-threshold", type=float, help="box score threshold, 0 <= t < 1 (published: 0.6)")
    knobs.add_argument("--max-detections", type=int, help="detections kept per image after NMS (published: 100)")
    knobs.add_argument("--mask-threshold", type=float, help="pasted mask probability threshold (published: 0.5)")
    knobs.add_argument("--mask-overlap-threshold", type=float,
                       help="fusion: drop an instance when more than this fraction is taken (published: 0.5)")
    knobs.add_argument("--stuff-area-limit", type=int,
                       help="fusion: stuff segments with fewer pixels become VOID (published: 4096)")
    p.add_argument("--verify", action="store_true",
                   help="run ONNX Runtime against PyTorch on real images and print the parity (non-zero exit if any "
                        "image is outside the thresholds)")
    p.add_argument("--verify-images", help="folder of images for --verify (default: generated synthetic images "
                   "at 6 sizes, portrait and landscape, not multiples of 32)")
    p.add_argument("--verify-count", type=int, default=24, help="number of images to verify on (default 24)")
    p.add_argument("--verify-backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="run the exported file with ONNX Runtime (CPU) or OpenVINO (CPU, f32; ort flavor only)")
    p.add_argument("--verify-json", help="also write the parity rows to this JSON file")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime CPU threads")
    return p.parse_args(argv)


class ExportError(RuntimeError):
    pass


def export(args: argparse.Namespace) -> tuple[Path, Any, Any]:
    """-> (the .onnx written, the model it was traced from, its loaded checkpoint)."""
    import onnx
    import torch

    from pfpn.export.graph import ExportablePanopticFPN
    from pfpn.export.metadata import build_metadata, write_metadata
    from pfpn.plugins.torch_ops import export_flavor
    from pfpn.runtime.contract import (DEPLOYMENT_SETTINGS, DYNAMIC_AXES, INPUT_NAMES, OUTPUT_NAMES,
                                  format_deployment_settings)
    from pfpn.runtime.files import atomic_output
    from pfpn.runtime.categories import CategoryTable
    from pfpn.training.checkpoint import load_model
    from pfpn.training.config import deployment_settings, with_deployment_settings
    from pfpn.training.model.panoptic_fpn import rebuild_with_config

    if args.opset < MIN_OPSET:
        raise ExportError(f"--opset {args.opset} is not supported: RoiAlign's half_pixel mode needs opset >= 16 and "
                          f"this exporter emits opset >= {MIN_OPSET}")
    ckpt_path = Path(args.ckpt)
    categories = None
    if args.categories:
        categories = CategoryTable(json.loads(Path(args.categories).read_text())["categories"])
    model, ckpt = load_model(ckpt_path, categories=categories)
    try:
        config = with_deployment_settings(ckpt.config.model, **{k: getattr(args, k) for k in DEPLOYMENT_SETTINGS})
    except ValueError as e:
        raise ExportError(str(e)) from None
    if config != ckpt.config.model:
        # the PyTorch model (traced, and compared with by --verify) follows the same settings
        ckpt = replace(ckpt, config=replace(ckpt.config, model=config))
        model = rebuild_with_config(model, config)
    out = Path(args.out) if args.out else ckpt_path.with_name(f"{ckpt_path.stem}_{args.flavor}.onnx")
    if out.suffix != ".onnx":
        raise ExportError(f"--out must end with .onnx, got {out}")
    if args.export_size:
        try:
            h, w = (int(v) for v in args.export_size.lower().split("x"))
        except ValueError:
            raise ExportError(f"--export-size must look like 800x1344, got {args.export_size!r}") from None
    else:
        h, w = config.input.max_short_side, config.input.max_long_side
    div = config.input.size_divisor
    ph, pw = -(-h // div) * div, -(-w // div) * div
    images = torch.zeros(1, ph, pw, 3, dtype=torch.uint8)
    images[:, :h, :w] = torch.randint(0, 256, (1, h, w, 3), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8)
    sizes = torch.tensor([[h, w]], dtype=torch.int64)
    # TensorRT keeps static shapes; ONNX Runtime / OpenVINO run the mask head on the detections only
    graph = ExportablePanopticFPN(model, config, mask_head_on_detections_only=args.flavor == "ort").eval()

    t0 = time.time()
    with atomic_output(out) as tmp:
        with export_flavor(args.flavor), torch.no_grad(), _quiet_export_warnings():
            torch.onnx.export(graph, (images, sizes), tmp, dynamo=False, opset_version=args.opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
        proto = onnx.load(tmp)
        if args.simplify:
            proto = _simplify(proto)
        write_metadata(proto, build_metadata(config, ckpt.categories, flavor=args.flavor,
                                             source=f"{ckpt_path.name} ({ckpt.source})"))
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
    print(f"exported {out} ({args.flavor}, opset {args.opset}, {out.stat().st_size / 1e6:.1f} MB) "
          f"in {time.time() - t0:.1f} s; {format_deployment_settings(deployment_settings(config))}")
    return out, model, ckpt


class _quiet_export_warnings:
    """The TorchScript exporter warns about every traced shape computation; keep the console readable."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        raise ExportError("--simplify needs onnxslim (pip install onnxslim)") from None
    return onnxslim.slim(proto)


def verify(args: argparse.Namespace, onnx_path: Path, model, ckpt) -> bool:
    """Run the export against the PyTorch predictor of the model it was traced from (no second
    checkpoint load, and the same ``--categories``), with the runtime's own backend."""
    from pfpn.runtime.backends import open_backend
    from pfpn.training.predictor import PanopticPredictor

    predictor = PanopticPredictor(model, ckpt.config.model, ckpt.categories)
    backend = open_backend(onnx_path, "openvino" if args.verify_backend == "openvino" else "onnxruntime",
                           threads=args.threads)
    return _verify_with(args, predictor, backend)


def _verify_with(args: argparse.Namespace, predictor, backend) -> bool:
    from pfpn.export.verify import compare, format_parity, parity_dicts, passed

    if args.verify_images:
        from pfpn.runtime.images import ImageError, list_images

        try:
            images = list_images(args.verify_images, count=args.verify_count, what="--verify-images")
        except (FileNotFoundError, ImageError) as e:
            raise ExportError(str(e)) from None
    else:
        images = _synthetic_images(args.verify_count)
    rows = compare(predictor, backend, images)
    print(format_parity(rows))
    if args.verify_json:
        Path(args.verify_json).write_text(json.dumps(parity_dicts(rows), indent=2))
    return passed(rows)


# default --verify images: landscape, portrait, sizes that are not multiples of 32, and 480x800
# (which the published config resizes to exactly 800x1333)
VERIFY_SIZES = ((192, 256), (256, 192), (200, 301), (333, 250), (480, 800), (97, 131))


def _synthetic_images(count: int = 24) -> list:
    import numpy as np

    from pfpn.training.data.synthetic import make_synthetic_sample

    rng = np.random.default_rng(0)
    return [make_synthetic_sample(rng, *VERIFY_SIZES[i % len(VERIFY_SIZES)])[0] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        out, model, ckpt = export(args)
        if args.verify and not verify(args, out, model, ckpt):
            print("error: parity check failed (see the table above)", file=sys.stderr)
            return 1
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # checkpoint problems etc.: one clear line, no traceback
        from pfpn.training.checkpoint import CheckpointError

        if isinstance(e, (CheckpointError, FileNotFoundError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
