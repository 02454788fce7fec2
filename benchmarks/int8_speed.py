"""ONNX Runtime fp32 vs int8 latency on the CPU, plus where the time goes (ORT profiler).

    python benchmarks/int8_speed.py --fp32 work_dirs/parity/r50_ort.onnx --int8 r50_int8.onnx
    python benchmarks/int8_speed.py --fp32 r50_ort.onnx --calib-images DIR --int8 r50_int8.onnx  # quantize first
    python benchmarks/int8_speed.py --fp32 r50_ort.onnx --int8 r50_int8.onnx --torch-ckpt work_dirs/r50_random.pth

One image (``--image``, default a synthetic 480x800 scene, which this model resizes to exactly
800x1333), ``--threads`` intra-op threads (default 2). Each model in turn is warmed up and run
``--runs`` times, and the median end-to-end / pre-processing / network / post-processing seconds
are printed. The models are not interleaved: ONNX Runtime's worker threads spin-wait for a while
after each run and would slow the next model down (measured: the small demo model's PyTorch
predictor took 81 ms interleaved with ONNX Runtime vs 49 ms alone). With
``--torch-ckpt`` the PyTorch eager predictor is timed the same way (torch.set_num_threads).
Then one profiled run per ONNX model (SessionOptions.enable_profiling, same threads) gives the
top ``--top`` op types and nodes by kernel time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


import numpy as np  # noqa: E402


def synthetic_image(seed: int = 0, height: int = 480, width: int = 800) -> np.ndarray:
    from pfpn.training.data.synthetic import make_synthetic_sample

    return make_synthetic_sample(np.random.default_rng(seed), height, width)[0]


def load_image(path: str | None) -> np.ndarray:
    if path is None:
        return synthetic_image()
    from pfpn.runtime.images import read_image

    return read_image(path)


class _Ort:
    def __init__(self, label: str, path: Path, threads: int) -> None:
        from pfpn.runtime import Predictor

        self.label, self.path = label, path
        self.predictor = Predictor(path, threads=threads)

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        t0 = time.perf_counter()
        pred = self.predictor.predict_detailed([image])[0]
        total = time.perf_counter() - t0
        t = pred.timings
        return {"total": total, "preprocess": t.preprocess, "network": t.network, "postprocess": t.postprocess,
                "detections": float(len(pred.scores))}


class _Torch:
    def __init__(self, ckpt: Path, threads: int) -> None:
        import torch

        from pfpn.training.predictor import PanopticPredictor

        torch.set_num_threads(threads)
        self.label, self.path = "pytorch eager", ckpt
        self.predictor = PanopticPredictor.from_checkpoint(ckpt)

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        t0 = time.perf_counter()
        self.predictor.predict(image)
        return {"total": time.perf_counter() - t0}


def time_models(models: list, image: np.ndarray, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[dict[str, float]]] = {m.label: [] for m in models}
    for model in models:  # one model at a time, see the module docstring
        for _ in range(warmup):
            model(image)
        for _ in range(runs):
            samples[model.label].append(model(image))
    return {label: {key: statistics.median(s[key] for s in runs_) for key in runs_[0]}
            for label, runs_ in samples.items()}


def profile_ops(path: Path, image: np.ndarray, threads: int, top: int) -> dict:
    """Kernel time per op type and per node of one run (after a warm-up run), from
    benchmarks/op_profile.py."""
    from pfpn.benchmarks.op_profile import aggregate_nodes, aggregate_trace, profile_events

    events, wall = profile_events(path, [image], threads=threads)
    types = aggregate_trace(events, skip_runs=1)
    nodes = aggregate_nodes(events, skip_runs=1)
    return {"wall_s": wall, "kernel_s": sum(r["ms"] for r in types) / 1000,
            "op_types": [(r["op"], r["ms"] / 1000) for r in types[:top]],
            "nodes": [(r["node"], r["op"], r["ms"] / 1000) for r in nodes[:top]]}


def print_profile(label: str, prof: dict) -> None:
    total = prof["kernel_s"] or 1.0
    print(f"\n{label}: one profiled run {prof['wall_s']:.3f} s, kernels {prof['kernel_s']:.3f} s")
    print("  top op types:")
    for op, s in prof["op_types"]:
        print(f"    {op:<28} {s * 1e3:9.1f} ms {100 * s / total:5.1f} %")
    print("  top nodes:")
    for name, op, s in prof["nodes"]:
        print(f"    {s * 1e3:9.1f} ms  {op:<16} {name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", required=True, help="ort-flavor .onnx exported by export/to_onnx.py")
    p.add_argument("--int8", help="int8 .onnx (runtime/quantize_int8.py); written first when --calib-images is given")
    p.add_argument("--calib-images", help="quantize --fp32 into --int8 with these calibration images first")
    p.add_argument("--calib-count", type=int, default=8, help="calibration images used with --calib-images (default 8)")
    p.add_argument("--torch-ckpt", help="also time the PyTorch eager predictor of this checkpoint")
    p.add_argument("--image", help="image to run (default: synthetic 480x800 scene)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model (median; default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--top", type=int, default=10, help="op types / nodes listed from the profile (0: no profile)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)

    fp32 = Path(args.fp32)
    if not fp32.is_file():
        print(f"error: model not found: {fp32}", file=sys.stderr)
        return 2
    int8 = Path(args.int8) if args.int8 else None
    if args.calib_images:
        if int8 is None:
            int8 = fp32.with_name(fp32.stem + "_int8.onnx")
        from pfpn.runtime.images import ImageError, list_images

        try:
            images = list_images(args.calib_images, count=args.calib_count, what="--calib-images")
        except (FileNotFoundError, ImageError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        from pfpn.runtime.quantize_int8 import quantize_int8

        t0 = time.perf_counter()
        quantize_int8(fp32, int8, images)
        print(f"quantized {fp32} -> {int8} with {len(images)} images in {time.perf_counter() - t0:.1f} s")
    if int8 is not None and not int8.is_file():
        print(f"error: model not found: {int8}", file=sys.stderr)
        return 2

    image = load_image(args.image)
    models: list = [_Ort("ort fp32", fp32, args.threads)]
    if int8 is not None:
        models.append(_Ort("ort int8", int8, args.threads))
    if args.torch_ckpt:
        models.append(_Torch(Path(args.torch_ckpt), args.threads))
    print(f"image {image.shape[1]}x{image.shape[0]}, {args.threads} threads, median of {args.runs} runs "
          f"after {args.warmup} warm-up")
    results = time_models(models, image, args.runs, args.warmup)
    print(f"{'':16} {'total s':>9} {'pre s':>8} {'network s':>10} {'post s':>8} {'dets':>5}")
    for label, r in results.items():
        cells = [f"{r[k]:>{w}.3f}" if k in r else " " * w for k, w in
                 (("total", 9), ("preprocess", 8), ("network", 10), ("postprocess", 8))]
        dets = f"{int(r['detections']):>5}" if "detections" in r else ""
        print(f"{label:16} {' '.join(cells)} {dets}")
    base = results["ort fp32"]
    if "ort int8" in results:
        q = results["ort int8"]
        print(f"int8 vs fp32: end to end x{base['total'] / q['total']:.2f}, network x{base['network'] / q['network']:.2f}")
        if "pytorch eager" in results:
            print(f"int8 vs pytorch eager: end to end x{results['pytorch eager']['total'] / q['total']:.2f}")
    if "pytorch eager" in results:
        print(f"fp32 vs pytorch eager: end to end x{results['pytorch eager']['total'] / base['total']:.2f}")

    profiles = {}
    if args.top > 0:
        for model in models:
            if isinstance(model, _Ort):
                del model.predictor  # free the timed session before profiling
                profiles[model.label] = profile_ops(model.path, image, args.threads, args.top)
                print_profile(model.label, profiles[model.label])
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "runs": args.runs, "image": list(image.shape),
                                               "latency": results, "profile": profiles}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
