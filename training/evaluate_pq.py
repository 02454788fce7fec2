"""Panoptic quality of COCO panoptic predictions (PNG folder + JSON) against the ground truth.

    python -m pfpn.training.evaluate_pq --gt-json annotations/panoptic_val2017.json \
        --pred-json work_dirs/pred/panoptic_val2017.json [--out results.json] [--per-category]

Torch-free. The numbers agree with the reference COCO panoptic evaluation (panopticapi).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


from pfpn.runtime.files import atomic_write_json  # noqa: E402
from pfpn.training.evaluation.pq import format_pq_table, pq_compute  # noqa: E402


def evaluate_pq_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pfpn.training.evaluate_pq",
        description="Compute panoptic quality (PQ), segmentation quality (SQ) and recognition "
                    "quality (RQ) of COCO panoptic predictions, with the rules of the reference "
                    "COCO evaluation (panopticapi). Prints All / Things / Stuff rows (x100, "
                    "N = number of categories averaged).",
    )
    p.add_argument("--gt-json", required=True,
                   help="ground-truth COCO panoptic JSON (images, annotations with segments_info, "
                        "categories); its categories define the evaluated classes")
    p.add_argument("--gt-folder", default=None,
                   help="folder of the ground-truth panoptic PNGs (default: the --gt-json path "
                        "without '.json', as in panopticapi)")
    p.add_argument("--pred-json", required=True,
                   help="predicted COCO panoptic JSON: one annotation per ground-truth image_id, "
                        "with file_name and segments_info (id, category_id)")
    p.add_argument("--pred-folder", default=None,
                   help="folder of the predicted panoptic PNGs (default: the --pred-json path "
                        "without '.json')")
    p.add_argument("--out", default=None,
                   help="also write the results (fractions, not x100) to this JSON file: "
                        "All / Things / Stuff with pq, sq, rq, n and per_class by category id")
    p.add_argument("--per-category", action="store_true",
                   help="also print one row per category (PQ, SQ, RQ, TP, FP, FN)")
    p.add_argument("--workers", type=int, default=1,
                   help="threads reading and counting images; the result does not depend on it "
                        "(default: 1)")
    p.add_argument("--progress", action="store_true",
                   help="print progress to stderr every 100 images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = evaluate_pq_parser().parse_args(argv)
    start = time.monotonic()
    try:
        result = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                            progress=args.progress, workers=max(1, args.workers))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_pq_table(result, per_category=args.per_category))
    print(f"({time.monotonic() - start:.2f} s)")
    if args.out:
        atomic_write_json(args.out, result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
