"""Time the torch-free post-processing (runtime/fusion.py) on synthetic model outputs.

    python runtime/bench_postprocess.py                      # 800x1333, 100 instances, 54 channels
    python runtime/bench_postprocess.py --scene random --runs 30
    python runtime/bench_postprocess.py --height 480 --width 640 --instances 30

Single-threaded numpy / BLAS / OpenCV (threadpoolctl when installed, else the usual thread
variables, set for this process only). Prints the median over ``--runs`` of each part and of
the total, plus what the inputs looked like (summed box area, boundary pixels evaluated).

Scenes: ``realistic``: a handful of stuff classes (smooth regions) and the things channel high
inside the boxes, every other channel well below, as a trained model's logits look;
``random``: all S + 1 channels are smooth random fields (dozens of small regions: a worst case
for the semantic boundary work). Box sizes follow COCO's mix (40 % small, 35 % medium, 25 %
large); masks are soft blobs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_var, "1")  # this process only, before numpy loads its BLAS


import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pfpn.runtime.contract import MASK_SIZE, SEMANTIC_STRIDE  # noqa: E402
from pfpn.runtime.categories import Category, CategoryTable  # noqa: E402
from pfpn.runtime.fusion import postprocess_single_image  # noqa: E402
from pfpn.runtime.result import to_panoptic_result  # noqa: E402
from pfpn.runtime.preprocess import rescale_size  # noqa: E402


def synthetic_outputs(height: int, width: int, num_instances: int, num_stuff: int, *, scene: str = "realistic",
                      active_stuff: int = 8, num_things: int = 80, seed: int = 0,
                      max_long_side: int = 1333, max_short_side: int = 800) -> dict:
    """Model outputs of one image as the contract gives them, plus the post-processing keywords."""
    rng = np.random.default_rng(seed)
    new_w, new_h, _ = rescale_size(width, height, max_long_side, max_short_side)
    pad_h, pad_w = -(-new_h // 32) * 32, -(-new_w // 32) * 32
    low_h, low_w = pad_h // SEMANTIC_STRIDE, pad_w // SEMANTIC_STRIDE

    # boxes (resized-input pixels): COCO-like size mix, aspect ratio 1/2..2
    kind = rng.choice(3, size=num_instances, p=[0.40, 0.35, 0.25])
    side = np.exp(rng.uniform(np.log([8, 32, 96])[kind], np.log([32, 96, 400])[kind]))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), num_instances))
    bw = np.minimum(side * np.sqrt(aspect), new_w - 1)
    bh = np.minimum(side / np.sqrt(aspect), new_h - 1)
    x1 = rng.uniform(0, new_w - bw)
    y1 = rng.uniform(0, new_h - bh)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    scores = np.sort(rng.uniform(0.6, 1.0, num_instances).astype(np.float32))[::-1].copy()
    labels = rng.integers(0, num_things, num_instances)
    yy, xx = np.mgrid[0:MASK_SIZE, 0:MASK_SIZE] / (MASK_SIZE - 1.0)
    probs = np.empty((num_instances, MASK_SIZE, MASK_SIZE), dtype=np.float32)
    for i in range(num_instances):
        cx, cy = rng.uniform(0.35, 0.65, 2)
        rx, ry = rng.uniform(0.25, 0.55, 2)
        d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        p = 1.0 / (1.0 + np.exp((d - 1.0) * rng.uniform(4, 10))) + rng.normal(0, 0.03, d.shape)
        probs[i] = np.clip(p, 0, 1)

    # stride-4 logits of the padded input
    def smooth(n: int, amp: float) -> np.ndarray:
        coarse = rng.normal(size=(n, 5, 8)).astype(np.float32) * amp
        return np.stack([cv2.resize(c, (low_w, low_h), interpolation=cv2.INTER_CUBIC) for c in coarse])

    channels = num_stuff + 1
    if scene == "random":
        logits = smooth(channels, 4.0)
    elif scene == "realistic":
        logits = smooth(channels, 0.7) - 8.0
        active = rng.choice(num_stuff, size=min(active_stuff, num_stuff), replace=False)
        logits[active] = smooth(len(active), 3.0) + 2.0
        things = np.zeros((low_h, low_w), dtype=np.float32)
        for x_a, y_a, x_b, y_b in (boxes / SEMANTIC_STRIDE).astype(int):
            things[y_a:y_b + 1, x_a:x_b + 1] = 6.0
        logits[num_stuff] = cv2.GaussianBlur(things, (0, 0), 1.5) + logits[num_stuff] * 0.3
    else:
        raise ValueError(f"unknown scene {scene!r}")
    logits[:, new_h // SEMANTIC_STRIDE + 2:] *= 0.2  # the padding looks different
    logits += rng.normal(0, 0.02, logits.shape).astype(np.float32)
    return dict(boxes=boxes, scores=scores, labels=labels, mask_probs=probs,
                semantic_logits=logits.astype(np.float32), resized_size=(new_h, new_w),
                original_size=(height, width), scale_factor=(new_w / width, new_h / height),
                num_thing_classes=num_things)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=800, help="original image height")
    p.add_argument("--width", type=int, default=1333, help="original image width")
    p.add_argument("--instances", type=int, default=100, help="detections")
    p.add_argument("--stuff", type=int, default=53, help="stuff classes (logit channels = stuff + 1)")
    p.add_argument("--scene", choices=["realistic", "random"], default="realistic")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except ImportError:
        pass
    cv2.setNumThreads(1)

    inputs = synthetic_outputs(args.height, args.width, args.instances, args.stuff, scene=args.scene, seed=args.seed)
    cats = CategoryTable([Category(i + 1, f"thing{i}", True) for i in range(80)]
                         + [Category(200 + i, f"stuff{i}", False) for i in range(args.stuff)])
    parts: dict[str, list[float]] = {}
    out = None
    for _ in range(args.runs + 1):  # the first run warms up
        t0 = time.perf_counter()
        out = postprocess_single_image(**inputs)
        t1 = time.perf_counter()
        to_panoptic_result(out, cats)
        t2 = time.perf_counter()
        for key, value in out.part_seconds.items():
            parts.setdefault(key, []).append(value)
        parts.setdefault("boundary_pixels", []).append(out.boundary_pixels)
        parts.setdefault("to_panoptic_result", []).append(t2 - t1)
        parts.setdefault("postprocess + to_panoptic_result", []).append(t2 - t0)
    assert out is not None
    boxes = inputs["boxes"] / np.array(inputs["scale_factor"] * 2, dtype=np.float32)
    box_area = float(np.sum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    h, w = args.height, args.width
    print(f"image {h}x{w} (resized {inputs['resized_size'][0]}x{inputs['resized_size'][1]}), "
          f"logits {inputs['semantic_logits'].shape}, {args.instances} detections ({len(out.kept)} kept), "
          f"summed box area {box_area / (h * w):.2f} x image, scene {args.scene}, {args.runs} runs, 1 thread")
    for key, values in parts.items():
        values = values[1:]
        if key == "boundary_pixels":
            continue
        print(f"  {key:34s} {1e3 * np.median(values):8.2f} ms")
    print(f"  boundary pixels evaluated in full: {int(np.median(parts['boundary_pixels']))}")
    if limiter is not None:
        limiter.unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())
