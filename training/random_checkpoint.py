"""Write a randomly initialised checkpoint of a preset, in the published (mmdetection) layout.

No pretrained weights can be downloaded here; this stands in for the published R-50 wherever
only the architecture and speed matter (export parity at full resolution, benchmarks).
``--firing`` biases the classifier and mask logits so that the detector produces detections
(scores above the 0.6 threshold) and masks, exercising the whole post-processing.

    python training/random_checkpoint.py --config r50_fpn_1x --out work_dirs/r50_random.pth --firing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pfpn.runtime.categories import CategoryTable, coco_panoptic_categories
from pfpn.training.checkpoint import save_mmdet_checkpoint
from pfpn.training.config import PRESETS
from pfpn.training.model.panoptic_fpn import PanopticFPN, build_model


def make_firing(model: PanopticFPN) -> PanopticFPN:
    """Bias a random model so that it detects (two classes well above the score threshold)."""
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.bias[0] = 8.0
        model.roi_head.bbox_head.fc_cls.bias[1] = 7.5
        model.roi_head.mask_head.conv_logits.bias[:] = 0.5
    return model


def random_checkpoint(*, out: str | Path, config: str = "r50_fpn_1x", seed: int = 0, firing: bool = False) -> Path:
    """Write a random ``config`` model (initialised from ``seed``; ``firing``: :func:`make_firing`)
    to ``out`` in the published layout with the COCO panoptic classes. -> ``out``."""
    torch.manual_seed(seed)
    model = build_model(PRESETS[config]().model).eval()
    if firing:
        make_firing(model)
    save_mmdet_checkpoint(out, model, CategoryTable(coco_panoptic_categories()))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=[k for k in PRESETS if k != "tiny_synthetic"], default="r50_fpn_1x",
                   help="a published preset (80 thing + 53 stuff COCO classes)")
    p.add_argument("--out", required=True, help="output .pth path")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--firing", action="store_true", help="bias the heads so that the model detects")
    print(f"wrote {random_checkpoint(**vars(p.parse_args(argv)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
