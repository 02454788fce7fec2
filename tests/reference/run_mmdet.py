"""The reference side of the parity tests: mmdetection 3.3.0 itself, run in its own process.

Runs with the reference install on ``PYTHONPATH`` (``reference_env.reference_environment()``)
and imports nothing from this project: it builds the published model with mmdetection's own
registry and ``init_weights``, and predicts with mmdetection's own test pipeline, data
pre-processor, heads and fusion. The two compiled operators come from ``mmcv_ext_standin``.

    python tests/reference/run_mmdet.py init --out r50.pth --seed 0 --cls-scale 40 --semantic-bias-std 1
    python tests/reference/run_mmdet.py predict --ckpt r50.pth --score-thr 0.6 --images a.jpg b.png --out maps.npz

``predict`` writes one int64 (H, W) panoptic id map per image (key = the image's position),
mmdetection's ``pred_panoptic_seg.sem_seg``: label + k * 1000 for instance k, stuff labels,
VOID = number of classes.

``serve`` (for benchmarks/fps.py's mmdetection row) loads the model once, then reads one image
path per line on stdin and answers each with a JSON line ``{"pipeline_s", "test_step_s",
"segments"}``: the test pipeline (load, resize, pack) and ``test_step`` (data pre-processor,
network, fusion) times.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmcv_ext_standin  # noqa: E402

PUBLISHED_CONFIG = "panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py"


def published_config_path() -> str:
    import mmdet

    return os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", PUBLISHED_CONFIG)


def load_config(config_path: str | None, score_thr: float | None = None):
    from mmengine.config import Config

    cfg = Config.fromfile(config_path or published_config_path())
    cfg.model.backbone.init_cfg = None  # no download of ImageNet weights; init_weights is seeded instead
    if score_thr is not None:
        cfg.model.test_cfg.rcnn.score_thr = float(score_thr)
    return cfg


def build(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS.build(cfg.model)


def init_checkpoint(*, out: str, config_path: str | None, seed: int, cls_scale: float, rpn_scale: float,
                    semantic_bias_std: float) -> None:
    """mmdetection's own initialisation, seeded; the classifier (and RPN objectness) weights
    multiplied so that scores spread instead of all sitting at 1 / (classes + 1), and the
    semantic logits given random per-class biases (N(0, semantic_bias_std)) so that flat image
    regions have a clear class instead of 54 logits within 1e-6 of each other."""
    import torch

    cfg = load_config(config_path)
    torch.manual_seed(seed)
    model = build(cfg)
    model.init_weights()
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.weight.mul_(cls_scale)
        model.rpn_head.rpn_cls.weight.mul_(rpn_scale)
        bias = model.semantic_head.conv_logits.bias
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)) * semantic_bias_std)
    torch.save({"state_dict": model.state_dict(), "meta": {"init": f"mmdet init_weights, seed {seed}, "
                                                                   f"fc_cls x{cls_scale}, rpn_cls x{rpn_scale}, "
                                                                   f"semantic bias std {semantic_bias_std}"}}, out)


def predict(*, ckpt: str, config_path: str | None, score_thr: float | None, images: list[str], out: str) -> None:
    import numpy as np
    import torch
    from mmcv.transforms import Compose
    from mmengine.runner import load_checkpoint

    cfg = load_config(config_path, score_thr)
    model = build(cfg)
    load_checkpoint(model, ckpt, map_location="cpu", strict=True, logger="silent")
    model.eval()
    steps = [dict(t) for t in cfg.test_pipeline if t["type"] != "LoadPanopticAnnotations"]
    pipeline = Compose(steps)
    maps = {}
    for i, path in enumerate(images):
        t0 = time.perf_counter()
        data = pipeline(dict(img_path=path, img_id=i))
        batch = dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]])
        with torch.no_grad():
            result = model.test_step(batch)[0]
        maps[str(i)] = result.pred_panoptic_seg.sem_seg[0].cpu().numpy().astype(np.int64)
        print(f"{Path(path).name}: {time.perf_counter() - t0:.1f} s", flush=True)
    np.savez_compressed(out, **maps)


def serve(*, ckpt: str, config_path: str | None, score_thr: float | None) -> None:
    import json

    import torch
    from mmcv.transforms import Compose
    from mmengine.runner import load_checkpoint

    cfg = load_config(config_path, score_thr)
    model = build(cfg)
    load_checkpoint(model, ckpt, map_location="cpu", strict=True, logger="silent")
    model.eval()
    pipeline = Compose([dict(t) for t in cfg.test_pipeline if t["type"] != "LoadPanopticAnnotations"])
    print(json.dumps({"ready": True}), flush=True)
    for i, line in enumerate(sys.stdin):
        path = line.strip()
        if not path:
            break
        t0 = time.perf_counter()
        data = pipeline(dict(img_path=path, img_id=i))
        t1 = time.perf_counter()
        with torch.no_grad():
            result = model.test_step(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]))[0]
        t2 = time.perf_counter()
        segments = len(set(result.pred_panoptic_seg.sem_seg[0].unique().tolist()))
        print(json.dumps({"pipeline_s": t1 - t0, "test_step_s": t2 - t1, "segments": segments}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="write a seeded, mmdetection-initialised checkpoint")
    i.add_argument("--out", required=True)
    i.add_argument("--config", default=None, help="mmdetection config (default: the published R-50 1x)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--cls-scale", type=float, default=1.0)
    i.add_argument("--rpn-scale", type=float, default=1.0)
    i.add_argument("--semantic-bias-std", type=float, default=0.0)
    r = sub.add_parser("predict", help="panoptic id maps of images")
    r.add_argument("--ckpt", required=True)
    r.add_argument("--config", default=None)
    r.add_argument("--score-thr", type=float, default=None, help="test_cfg.rcnn.score_thr (default: the config's)")
    r.add_argument("--images", nargs="+", required=True)
    r.add_argument("--out", required=True)
    v = sub.add_parser("serve", help="time images given on stdin, one JSON line each")
    v.add_argument("--ckpt", required=True)
    v.add_argument("--config", default=None)
    v.add_argument("--score-thr", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    mmcv_ext_standin.install()
    logging.getLogger("mmengine").setLevel(logging.ERROR)
    from mmengine.logging import MMLogger

    MMLogger.get_instance("mmengine", log_level="ERROR")
    if args.command == "init":
        init_checkpoint(out=args.out, config_path=args.config, seed=args.seed, cls_scale=args.cls_scale,
                        rpn_scale=args.rpn_scale, semantic_bias_std=args.semantic_bias_std)
    elif args.command == "serve":
        serve(ckpt=args.ckpt, config_path=args.config, score_thr=args.score_thr)
    else:
        predict(ckpt=args.ckpt, config_path=args.config, score_thr=args.score_thr, images=args.images, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
