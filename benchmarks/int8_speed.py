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

import numpy as np

from pfpn.benchmarks.targets import Target, TimedPrediction


def timed_sample(timed: TimedPrediction, *, stages: bool) -> dict[str, float]:
    """One run's seconds end to end, with ``stages`` also per stage and the network's detections."""
    if not stages:
        return {"total": timed.seconds}
    t = timed.timings
    return {"total": timed.seconds, "preprocess": t.preprocess, "network": t.network, "postprocess": t.postprocess,
            "detections": float(timed.detections or 0)}


def time_models(models: dict[str, Target], image: np.ndarray, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """label -> the median of every :func:`timed_sample` key over ``runs`` runs, one model at a
    time (see the module docstring); the ONNX models with their stages, PyTorch end to end."""
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in models}
    for label, target in models.items():
        for _ in range(warmup):
            target.predict_timed(image)
        for _ in range(runs):
            samples[label].append(timed_sample(target.predict_timed(image), stages=target.name != "pytorch"))
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


def print_latency(results: dict[str, dict[str, float]]) -> None:
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


def run_int8_speed(*, fp32: str | Path, int8: str | Path | None = None, calib_images: str | Path | None = None,
                   calib_count: int = 8, torch_ckpt: str | Path | None = None, image: str | Path | None = None,
                   threads: int = 2, runs: int = 5, warmup: int = 1, top: int = 10,
                   json_path: str | Path | None = None) -> dict:
    """Quantize first when ``calib_images`` is given (into ``int8``, default <fp32 stem>_int8.onnx),
    time the models, profile the ONNX ones (``top`` > 0) -> {"threads", "runs", "image", "latency":
    {label: medians}, "profile": {label: ...}}, also written to ``json_path``. FileNotFoundError
    for a missing model; ImageError when ``calib_images`` holds no image."""
    from pfpn.benchmarks.cli import benchmark_images
    from pfpn.benchmarks.targets import open_target

    fp32 = Path(fp32)
    if not fp32.is_file():
        raise FileNotFoundError(f"model not found: {fp32}")
    int8 = Path(int8) if int8 else None
    if calib_images:
        int8 = int8 or fp32.with_name(fp32.stem + "_int8.onnx")
        from pfpn.runtime.images import list_images
        from pfpn.runtime.quantize_int8 import quantize_int8

        images = list_images(calib_images, count=calib_count, what="--calib-images")
        t0 = time.perf_counter()
        quantize_int8(fp32, int8, images)
        print(f"quantized {fp32} -> {int8} with {len(images)} images in {time.perf_counter() - t0:.1f} s")
    if int8 is not None and not int8.is_file():
        raise FileNotFoundError(f"model not found: {int8}")

    picture = benchmark_images(images=image, size=(480, 800), count=1, first_seed=0)[0]
    models = {"ort fp32": open_target("ort_fp32", fp32, threads=threads)}
    if int8 is not None:
        models["ort int8"] = open_target("ort_int8", int8, threads=threads)
    if torch_ckpt:
        models["pytorch eager"] = open_target("pytorch", Path(torch_ckpt), threads=threads)
    print(f"image {picture.shape[1]}x{picture.shape[0]}, {threads} threads, median of {runs} runs "
          f"after {warmup} warm-up")
    results = time_models(models, picture, runs, warmup)
    print_latency(results)
    profiles = {}
    if top > 0:
        for label, target in models.items():
            if target.name != "pytorch":
                target.predictor = None  # free the timed session before profiling
                profiles[label] = profile_ops(target.model_file, picture, threads, top)
                print_profile(label, profiles[label])
    report = {"threads": threads, "runs": runs, "image": list(picture.shape), "latency": results, "profile": profiles}
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    return report


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
    from pfpn.runtime.images import ImageError

    try:
        run_int8_speed(fp32=args.fp32, int8=args.int8, calib_images=args.calib_images, calib_count=args.calib_count,
                       torch_ckpt=args.torch_ckpt, image=args.image, threads=args.threads, runs=args.runs,
                       warmup=args.warmup, top=args.top, json_path=args.json)
    except (FileNotFoundError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
