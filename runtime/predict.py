"""Run an exported Panoptic FPN on images: COCO panoptic PNGs + JSON, and overlay pictures.

    python runtime/predict.py --model model.onnx street.jpg more/*.jpg --out predictions/
    python runtime/predict.py --model model.engine images/ --out predictions/ --no-overlay

Writes OUT/panoptic_pred/<name>.png (COCO panoptic ids: R + 256 G + 256^2 B, 0 = VOID),
OUT/panoptic_pred.json (segments_info with id, category_id, area, bbox, score) and
OUT/overlay/<name>.png (colour per segment, outlines, class names). Torch-free.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence


def main(argv: list[str] | None = None) -> int:
    from pfpn.runtime.gpu.device_fusion import POSTPROCESS_CHOICES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported .onnx (ONNX Runtime) or .engine (TensorRT) file")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="default: by the model's file type")
    p.add_argument("--providers", default="cpu",
                   help="ONNX Runtime execution providers in priority order, comma-separated (cpu, cuda, tensorrt)")
    p.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime")
    p.add_argument("--batch-size", type=int, default=1, help="images per network call")
    p.add_argument("--postprocess", choices=POSTPROCESS_CHOICES, default="auto",
                   help="post-processing for TensorRT engines: auto = the GPU kernels where they run on this GPU, "
                        "else numpy with a warning (default); gpu = kernels or fail; cpu = numpy")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay pictures")
    args = p.parse_args(argv)

    try:
        done, failed = predict_images(model=args.model, images=args.images, out=args.out, backend=args.backend,
                                      providers=tuple(args.providers.split(",")), threads=args.threads,
                                      batch_size=args.batch_size, postprocess=args.postprocess,
                                      overlays=not args.no_overlay)
    except PredictSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


class PredictSetupError(RuntimeError):
    """Nothing could be predicted: no images found, or the model cannot be opened (the message says why)."""


def predict_images(*, model: str | Path, images: Sequence[str | Path], out: str | Path, backend: str | None = None,
                   providers: Sequence[str] = ("cpu",), threads: int | None = None, batch_size: int = 1,
                   postprocess: str = "auto", overlays: bool = True) -> tuple[int, int]:
    """Predict every image of ``images`` (files and/or folders) with the exported ``model`` and
    write the COCO panoptic PNGs + JSON (and overlays) under ``out``. An image that cannot be read
    is reported on stderr and counted, the others go on. -> (images written, images failed).
    Raises :class:`PredictSetupError` when there is nothing to run."""
    from pfpn.runtime.backends import ModelError
    from pfpn.runtime.contract import format_deployment_settings
    from pfpn.runtime.images import ImageError, list_images, read_image
    from pfpn.runtime.predictor import Predictor
    from pfpn.runtime.writers import save_overlay, write_coco_panoptic

    try:
        paths = list_images(images)
    except (FileNotFoundError, ImageError) as e:
        raise PredictSetupError(str(e)) from None
    try:
        predictor = Predictor(model, backend=backend, providers=list(providers), threads=threads,
                              batch_size=batch_size, postprocess=postprocess)
    except (FileNotFoundError, ModelError, ImportError, RuntimeError, ValueError) as e:
        raise PredictSetupError(str(e)) from None
    print(f"model {model} ({predictor.backend.name}): {format_deployment_settings(predictor.settings)}", flush=True)
    out = Path(out)
    results, failed = [], 0
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        try:
            decoded = [read_image(path) for path in chunk]  # decoded once: for the model and the overlay
            predictions = predictor.predict_batch(decoded)
        except (FileNotFoundError, ImageError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += len(chunk)
            continue
        for path, image, result in zip(chunk, decoded, predictions):
            info = {"image_id": path.stem, "file_name": path.name, "png_name": f"{path.stem}.png"}
            results.append((info, result))
            if overlays:
                save_overlay(out / "overlay" / f"{path.stem}.png", image, result, predictor.categories)
            print(f"{path}: {len(result.segments_info)} segments", flush=True)
    if results:
        json_path, folder = write_coco_panoptic(results, predictor.categories.to_json(), out)
        print(f"{len(results)} images in {time.perf_counter() - t0:.1f} s -> {json_path}, {folder}")
    return len(results), failed

if __name__ == "__main__":
    sys.exit(main())
