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
import warnings
from dataclasses import dataclass, replace
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


@dataclass
class ExportResult:
    """What :func:`export_onnx` did: the file written and, with ``verify``, the parity rows."""

    path: Path
    parity: list | None = None  # [export.verify.ImageParity], None without verification

    @property
    def passed(self) -> bool:
        """True unless verification ran and some image is outside the thresholds."""
        if self.parity is None:
            return True
        from pfpn.export.verify import passed

        return passed(self.parity)


def export_onnx(*, ckpt: str | Path, out: str | Path | None = None, flavor: str = "ort", opset: int = MIN_OPSET,
                export_size: str | None = None, categories: str | Path | None = None, simplify: bool = False,
                score_threshold: float | None = None, max_detections: int | None = None,
                mask_threshold: float | None = None, mask_overlap_threshold: float | None = None,
                stuff_area_limit: int | None = None, verify: bool = False, verify_images: str | Path | None = None,
                verify_count: int = 24, verify_backend: str = "onnxruntime", verify_json: str | Path | None = None,
                threads: int | None = None) -> ExportResult:
    """Export ``ckpt`` (the command line's flags as keywords, same defaults) and, with ``verify``,
    compare the file with the PyTorch model it was traced from (the table is printed).

    Raises ExportError (bad options, a failed --simplify or --verify-images), CheckpointError,
    FileNotFoundError or ValueError; a failed parity check is ``result.passed == False``.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    settings = dict(score_threshold=score_threshold, max_detections=max_detections, mask_threshold=mask_threshold,
                    mask_overlap_threshold=mask_overlap_threshold, stuff_area_limit=stuff_area_limit)
    path, model, loaded = export_model(ckpt=ckpt, out=out, flavor=flavor, opset=opset, export_size=export_size,
                                       categories=categories, simplify=simplify, settings=settings)
    if not verify:
        return ExportResult(path)
    rows = verify_export(path, model, loaded, images=verify_images, count=verify_count, backend=verify_backend,
                         json_path=verify_json, threads=threads)
    return ExportResult(path, rows)


def export_model(*, ckpt: str | Path, out: str | Path | None, flavor: str, opset: int, export_size: str | None,
                 categories: str | Path | None, simplify: bool, settings: dict[str, Any]) -> tuple[Path, Any, Any]:
    """Trace and write the file. settings: the deployment settings (None = the checkpoint's).
    -> (the .onnx written, the model it was traced from, its loaded checkpoint)."""
    import onnx
    import torch

    from pfpn.export.graph import ExportablePanopticFPN
    from pfpn.export.metadata import build_metadata, write_metadata
    from pfpn.plugins.torch_ops import export_flavor
    from pfpn.runtime.categories import CategoryTable
    from pfpn.runtime.contract import DYNAMIC_AXES, INPUT_NAMES, OUTPUT_NAMES, format_deployment_settings
    from pfpn.runtime.files import atomic_output
    from pfpn.runtime.preprocess import padded_size
    from pfpn.training.checkpoint import load_model
    from pfpn.training.config import deployment_settings, with_deployment_settings
    from pfpn.training.model.panoptic_fpn import rebuild_with_config

    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is not supported: RoiAlign's half_pixel mode needs opset >= 16 and "
                          f"this exporter emits opset >= {MIN_OPSET}")
    ckpt_path = Path(ckpt)
    table = CategoryTable(json.loads(Path(categories).read_text())["categories"]) if categories else None
    model, loaded = load_model(ckpt_path, categories=table)
    try:
        config = with_deployment_settings(loaded.config.model, **settings)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if config != loaded.config.model:
        # the PyTorch model (traced, and compared with by --verify) follows the same settings
        loaded = replace(loaded, config=replace(loaded.config, model=config))
        model = rebuild_with_config(model, config)
    out = Path(out) if out else ckpt_path.with_name(f"{ckpt_path.stem}_{flavor}.onnx")
    if out.suffix != ".onnx":
        raise ExportError(f"--out must end with .onnx, got {out}")
    if export_size:
        try:
            h, w = (int(v) for v in export_size.lower().split("x"))
        except ValueError:
            raise ExportError(f"--export-size must look like 800x1344, got {export_size!r}") from None
    else:
        h, w = config.input.max_short_side, config.input.max_long_side
    images = torch.zeros(1, *padded_size(h, w, config.input.size_divisor), 3, dtype=torch.uint8)
    images[:, :h, :w] = torch.randint(0, 256, (1, h, w, 3), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8)
    sizes = torch.tensor([[h, w]], dtype=torch.int64)
    # TensorRT keeps static shapes; ONNX Runtime / OpenVINO run the mask head on the detections only
    graph = ExportablePanopticFPN(model, config, mask_head_on_detections_only=flavor == "ort").eval()

    t0 = time.time()
    with atomic_output(out) as tmp:
        with export_flavor(flavor), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns about every traced shape computation
            torch.onnx.export(graph, (images, sizes), tmp, dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
        proto = onnx.load(tmp)
        if simplify:
            proto = _simplify(proto)
        write_metadata(proto, build_metadata(config, loaded.categories, flavor=flavor,
                                             source=f"{ckpt_path.name} ({loaded.source})"))
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
    print(f"exported {out} ({flavor}, opset {opset}, {out.stat().st_size / 1e6:.1f} MB) "
          f"in {time.time() - t0:.1f} s; {format_deployment_settings(deployment_settings(config))}")
    return out, model, loaded


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        raise ExportError("--simplify needs onnxslim (pip install onnxslim)") from None
    return onnxslim.slim(proto)


def verify_export(onnx_path: Path, model, ckpt, *, images: str | Path | None = None, count: int = 24,
                  backend: str = "onnxruntime", json_path: str | Path | None = None,
                  threads: int | None = None) -> list:
    """Run the export against the PyTorch predictor of the model it was traced from (no second
    checkpoint load, and the same ``--categories``), with the runtime's own backend (``backend``:
    onnxruntime or openvino), on the images of the folder ``images`` (default: synthetic ones).
    Prints the table. -> the parity rows ([export.verify.ImageParity])."""
    from pfpn.export.verify import compare, format_parity, parity_dicts
    from pfpn.runtime.backends import open_backend
    from pfpn.training.predictor import PanopticPredictor

    if images:
        from pfpn.runtime.images import ImageError, list_images

        try:
            inputs = list_images(images, count=count, what="--verify-images")
        except (FileNotFoundError, ImageError) as e:
            raise ExportError(str(e)) from None
    else:
        inputs = _synthetic_images(count)
    predictor = PanopticPredictor(model, ckpt.config.model, ckpt.categories)
    rows = compare(predictor, open_backend(onnx_path, "openvino" if backend == "openvino" else "onnxruntime",
                                           threads=threads), inputs)
    print(format_parity(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(parity_dicts(rows), indent=2))
    return rows


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
    from pfpn.training.checkpoint import CheckpointError

    try:
        result = export_onnx(**vars(args))
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as e:  # one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not result.passed:
        print("error: parity check failed (see the table above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
