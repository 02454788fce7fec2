"""Evaluate a checkpoint on a COCO panoptic split with the PyTorch predictor: PQ/SQ/RQ for
all, things, stuff and per category, COCO box AP and mask AP of the detections, plus COCO
panoptic predictions (PNGs + JSON).

    python training/evaluate.py --ckpt work_dirs/tiny/final.pt --data-root data/synthetic --out work_dirs/tiny/eval
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from pfpn.training.checkpoint import CheckpointError
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.evaluation.evaluate_dataset import Evaluation, evaluate
from pfpn.training.evaluation.pq import format_pq_table
from pfpn.training.predictor import PanopticPredictor


def evaluate_checkpoint(*, ckpt: str | os.PathLike, data_root: str | os.PathLike, out: str | os.PathLike,
                        split: str = "val", max_images: int | None = None, threads: int | None = None,
                        device: str = "cpu", progress: bool = True) -> Evaluation:
    """PQ of the checkpoint ``ckpt`` on ``split`` of the COCO panoptic dataset at ``data_root``,
    predictions written under ``out``. Raises FileNotFoundError, ValueError (also for a checkpoint
    whose categories differ from the dataset's) or CheckpointError before anything is written."""
    if threads:
        torch.set_num_threads(threads)
    dataset = CocoPanopticDataset(data_root, split)
    # published checkpoints carry no category ids: they get the dataset's
    predictor = PanopticPredictor.from_checkpoint(ckpt, categories=dataset.categories, device=device)
    if [c.id for c in predictor.categories.by_label] != [c.id for c in dataset.categories.by_label]:
        raise ValueError("the checkpoint's categories differ from the dataset's")
    return evaluate(predictor, dataset, out, max_images=max_images, progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our checkpoint (.pt) or a published mmdetection one (.pth)")
    p.add_argument("--data-root", required=True, help="dataset root in COCO panoptic layout")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split to evaluate (default val)")
    p.add_argument("--out", required=True, help="folder for predictions (panoptic_pred/, panoptic_pred.json) "
                   "and pq.json")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--per-category", action="store_true", help="also print one row per category")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        result = evaluate_checkpoint(ckpt=args.ckpt, data_root=args.data_root, out=args.out, split=args.split,
                                     max_images=args.max_images, threads=args.threads, device=args.device,
                                     progress=not args.no_progress)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_pq_table(result.pq, per_category=args.per_category))
    if result.ap is not None:
        print(f"box AP {100 * result.ap.box_ap:.2f} (AP50 {100 * result.ap.box_ap50:.2f}), mask AP "
              f"{100 * result.ap.mask_ap:.2f} (AP50 {100 * result.ap.mask_ap50:.2f}) over "
              f"{result.ap.num_instances} instances, {result.ap.num_detections} detections")
    print(f"{result.num_images} images, {result.seconds_per_image * 1000:.0f} ms/image; "
          f"predictions in {result.pred_json}, PQ in {Path(args.out) / 'pq.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
