"""Latency and throughput of every backend on the same weights and images.

    python benchmarks/fps.py                                   # demo model, synthetic images
    python benchmarks/fps.py --ckpt work_dirs/r50_random.pth --size 480x800 --threads 2
    python benchmarks/fps.py --backends pytorch,ort_fp32 --runs 10 --out work_dirs/bench

Per backend: status (ok / skipped with the reason / failed with the error), model file size,
end-to-end latency min / median / max / p90 per image, fps (1 / median), and the median split into
pre-processing (decode checks, resize, pad), network and post-processing (pasting, fusion,
COCO conversion). Warm-up runs are excluded; GPU backends synchronise before the clock stops.
Writes OUT/fps.json, OUT/fps.md and OUT/fps.png.

Noise: the backends run in interleaved rounds (round r times every backend once over the images
before round r + 1 starts), so a machine that gets busier slows all of them alike; the speed-up
over PyTorch is reported per round (min / median / max over the rounds).

The limit: the machine's float32 and u8 x s8 GEMM peaks (ONNX Runtime, the same threads;
benchmarks/machine_limits.py) are measured before and after the backends (a change over 15 % is
flagged), the network's GFLOP are counted once (PyTorch's FLOP counter, first image), and each
backend's network time is reported as achieved G(FL)OP/s and % of the matching peak.

Backends: pytorch, ort_fp32, ort_int8, openvino, trt_fp16, trt_int8 (models are exported /
quantized / built on first use and cached in --workdir).
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

# the GEMM peak each backend's arithmetic is bounded by (GPU backends: none measured here)
PEAK_KIND = {"pytorch": "fp32", "mmdet": "fp32", "ort_fp32": "fp32", "openvino": "fp32", "ort_int8": "int8",
             "openvino_int8": "int8"}


@dataclass
class FpsRow:
    backend: str
    status: str
    reason: str = ""
    file_mb: float | None = None
    images: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    fps: float | None = None
    preprocess_ms: float | None = None
    network_ms: float | None = None
    postprocess_ms: float | None = None
    round_median_ms: list[float] | None = None  # median latency of each interleaved round
    peak_kind: str | None = None  # "fp32" / "int8"
    achieved_gops: float | None = None  # network GFLOP (or GOP) / network time
    peak_pct: float | None = None  # % of the matching GEMM peak
    op_profile: list[dict] | None = None  # ONNX Runtime backends: ms per image per op type (first image)
    agreement: dict | None = None  # reference backend -> {"pq", "pixels"} (training/evaluation/pq.py)


def _row_from_samples(name: str, file_mb: float | None, samples: list[tuple[float, object]],
                      rounds: list[list[float]]) -> FpsRow:
    totals = sorted(t for t, _ in samples)
    med = statistics.median(totals)
    p90 = totals[min(len(totals) - 1, int(round(0.9 * (len(totals) - 1))))]
    timings = [timing for _, timing in samples]
    return FpsRow(name, "ok", file_mb=file_mb, images=len(totals), median_ms=1000 * med, p90_ms=1000 * p90,
                  min_ms=1000 * totals[0], max_ms=1000 * totals[-1], fps=1.0 / med,
                  preprocess_ms=1000 * statistics.median(t.preprocess for t in timings),
                  network_ms=1000 * statistics.median(t.network for t in timings),
                  postprocess_ms=1000 * statistics.median(t.postprocess for t in timings),
                  round_median_ms=[1000 * statistics.median(r) for r in rounds])


def measure_interleaved(targets: list, images: list, runs: int, warmup: int,
                        results: dict[str, list] | None = None) -> dict[str, FpsRow]:
    """Time every target over the images in ``runs`` interleaved rounds (after ``warmup`` untimed
    passes each): round r runs target 1, 2, ... once over all images before round r + 1. A target
    that raises is reported as failed and left out of later rounds. ``results``, when given,
    receives each target's PanopticResults of the last round."""
    samples: dict[str, list] = {t.name: [] for t in targets}
    rounds: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    failed: dict[str, FpsRow] = {}
    for _ in range(warmup):
        for target in targets:
            for image in images:
                target.predict_timed(image)
    for r in range(runs):
        for target in targets:
            if target.name in failed:
                continue
            this_round, outputs = [], []
            try:
                for image in images:
                    timed = target.predict_timed(image)
                    samples[target.name].append((timed.seconds, timed.timings))
                    this_round.append(timed.seconds)
                    outputs.append(timed.result)
            except Exception as e:
                failed[target.name] = FpsRow(target.name, "failed", f"{type(e).__name__}: {e}",
                                             file_mb=target.file_size_mb)
                continue
            rounds[target.name].append(this_round)
            if results is not None and all(o is not None for o in outputs):
                results[target.name] = outputs
            print(f"[round {r + 1}/{runs}] {target.name} {1000 * statistics.median(this_round):.1f} ms", flush=True)
    out = {}
    for target in targets:
        out[target.name] = failed.get(target.name) or _row_from_samples(target.name, target.file_size_mb,
                                                                        samples[target.name], rounds[target.name])
    return out


def add_limits(rows: list[FpsRow], gflop: float | None, peaks: dict) -> None:
    """Fill achieved G(FL)OP/s and % of the matching peak (network time) into the ok rows."""
    from pfpn.benchmarks.machine_limits import percent_of_peak

    for r in rows:
        kind = PEAK_KIND.get(r.backend)
        if r.status != "ok" or kind is None:
            continue
        r.peak_kind = kind
        r.achieved_gops, r.peak_pct = percent_of_peak(gflop, r.network_ms, peaks.get(kind))


def add_op_profiles(rows: list[FpsRow], targets: list, images: list, threads: int) -> None:
    """Per-op-type profile (benchmarks/op_profile.py) of the ONNX Runtime backends' networks."""
    from pfpn.benchmarks.op_profile import onnx_op_profile

    files = {t.name: t.model_file for t in targets if t.name.startswith("ort_") and t.model_file}
    for r in rows:
        if r.status == "ok" and r.backend in files:
            print(f"[{r.backend}] per-op profile ...", flush=True)
            try:
                r.op_profile = onnx_op_profile(files[r.backend], images, threads=threads)[:12]
            except Exception as e:  # a report, never a reason to fail the benchmark
                print(f"warning: {r.backend}: no per-op profile ({type(e).__name__}: {e})", flush=True)


AGREEMENT_REFERENCES = {"ort_int8": ("pytorch", "ort_fp32"),  # int8: also against its own float model
                        "openvino_int8": ("pytorch", "openvino")}


def add_agreement(rows: list[FpsRow], results: dict[str, list], categories) -> None:
    """Per backend, how closely its output follows the PyTorch predictor's (int8 backends also
    their own float model's) on the benchmark images: PQ against that output, identical pixels."""
    from pfpn.training.evaluation.pq import agreement_with_reference

    as_pairs = {name: [(r.id_map, r.segments_info) for r in res] for name, res in results.items()}
    for r in rows:
        if r.backend not in as_pairs:
            continue
        refs = [ref for ref in AGREEMENT_REFERENCES.get(r.backend, ("pytorch",)) if ref in as_pairs and ref != r.backend]
        if refs:
            r.agreement = {ref: agreement_with_reference(as_pairs[ref], as_pairs[r.backend], categories) for ref in refs}


def round_speedups(rows: list[FpsRow], baseline: str = "pytorch") -> dict[str, dict[str, float]]:
    """Per backend, the speed-up over ``baseline`` in each round (median latency of the round) ->
    {"min", "median", "max"} over the rounds."""
    base = next((r for r in rows if r.backend == baseline and r.status == "ok"), None)
    if base is None or not base.round_median_ms:
        return {}
    out = {}
    for r in rows:
        if r.status != "ok" or not r.round_median_ms or r.backend == baseline:
            continue
        ratios = [b / x for b, x in zip(base.round_median_ms, r.round_median_ms)]
        out[r.backend] = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}
    return out


def format_fps_table(rows: list[FpsRow]) -> str:
    head = ("| backend | status | file MB | median ms | min / max ms | p90 ms | fps | pre ms | network ms | post ms "
            "| post % | network G(FL)OP/s | % of peak |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.backend} | {r.status}: {r.reason} | {'' if r.file_mb is None else f'{r.file_mb:.1f}'}"
                         " | | | | | | | | | | |")
            continue
        share = 100 * r.postprocess_ms / r.median_ms if r.median_ms else 0
        rate = "" if r.achieved_gops is None else f"{r.achieved_gops:.0f}"
        pct = "" if r.peak_pct is None else f"{r.peak_pct:.0f} % of {r.peak_kind}"
        lines.append(f"| {r.backend} | ok | {r.file_mb or 0:.1f} | {r.median_ms:.1f} | {r.min_ms:.0f} / {r.max_ms:.0f} | "
                     f"{r.p90_ms:.1f} | {r.fps:.2f} | {r.preprocess_ms:.1f} | {r.network_ms:.1f} | "
                     f"{r.postprocess_ms:.1f} | {share:.1f} | {rate} | {pct} |")
    return "\n".join(lines)


def speedups(rows: list[FpsRow], baseline: str = "pytorch") -> dict[str, float]:
    base = next((r for r in rows if r.backend == baseline and r.status == "ok"), None)
    if base is None:
        return {}
    return {r.backend: base.median_ms / r.median_ms for r in rows if r.status == "ok"}


def plot_fps(rows: list[FpsRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfpn.benchmarks.cli import save_figure

    ok = [r for r in rows if r.status == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r.backend for r in ok]
    ax1.barh(names, [r.fps for r in ok], color="#4c72b0")
    ax1.set_xlabel("images / s (1 / median latency)")
    ax1.invert_yaxis()
    for y, r in enumerate(ok):
        ax1.text(r.fps, y, f" {r.fps:.2f}", va="center", fontsize=8)
    left = [0.0] * len(ok)
    for part, color in (("preprocess_ms", "#dd8452"), ("network_ms", "#55a868"), ("postprocess_ms", "#c44e52")):
        vals = [getattr(r, part) for r in ok]
        ax2.barh(names, vals, left=left, color=color, label=part.replace("_ms", ""))
        left = [a + b for a, b in zip(left, vals)]
    ax2.set_xlabel("median ms per image")
    ax2.invert_yaxis()
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    skipped = [f"{r.backend}: {r.status}" for r in rows if r.status != "ok"]
    fig.suptitle(title + (f"\nnot run: {'; '.join(skipped)}" if skipped else ""), fontsize=9)
    save_figure(fig, path)


def run_fps(*, ckpt: str | Path, backends: str | Sequence[str], images: str | Path | None = None,
            size: tuple[int, int] | None = None, count: int = 4, runs: int = 3, warmup: int = 1, threads: int = 2,
            calib_count: int = 16, workdir: str | Path | None = None, out: str | Path = "work_dirs/bench",
            command: str = "python benchmarks/fps.py") -> list[FpsRow]:
    """Every backend of ``backends`` on the same images (see the module docstring) -> the rows, in
    the order asked; writes OUT/fps.json, fps.md and fps.png. ValueError for a missing checkpoint
    or an unknown backend."""
    from pfpn.benchmarks.cli import (benchmark_images, calibration_images, checked_cli_inputs, default_workdir,
                                     describe_images, env_threads)
    from pfpn.benchmarks.machine_limits import busier, gemm_peak
    from pfpn.benchmarks.targets import open_targets

    env_threads(threads)
    ckpt, backends = checked_cli_inputs(ckpt, backends)
    image_list = benchmark_images(images=images, size=size, count=count, decode=False)
    workdir = default_workdir(ckpt, workdir)
    calib_paths, calib_dir = calibration_images(workdir=workdir, size=size, count=calib_count)

    print("[limits] GEMM peaks before the backends ...", flush=True)
    peaks = {kind: gemm_peak(kind, threads=threads) for kind in ("fp32", "int8")}
    prepared, not_run = [], {}
    for target in open_targets(backends, ckpt=ckpt, workdir=workdir, threads=threads, calib_images=calib_paths,
                               calib_dir=calib_dir, progress=True):
        if target.status == "ok":
            prepared.append(target)
        else:
            not_run[target.name] = FpsRow(target.name, target.status, target.reason, file_mb=target.file_size_mb)
    results: dict[str, list] = {}
    measured = measure_interleaved(prepared, image_list, runs, warmup, results)
    rows = [measured.get(name) or not_run[name] for name in backends]
    peaks_after = {kind: gemm_peak(kind, threads=threads) for kind in ("fp32", "int8")}
    gflop = _count_gflop(ckpt, image_list[0], prepared)
    add_limits(rows, gflop["total"] if gflop else None, peaks)
    add_op_profiles(rows, prepared, image_list[:1], threads)
    categories = next((t.predictor.categories for t in prepared if hasattr(t.predictor, "categories")), None)
    if categories is not None:
        add_agreement(rows, results, categories)
    what = f"{ckpt.name}, {describe_images(len(image_list), size)}, {threads} threads"
    write_fps_outputs(Path(out), rows, what=what, threads=threads, runs=runs, peaks=peaks, peaks_after=peaks_after,
                      load_warnings=[w for w in (busier(peaks[k], peaks_after[k]) for k in peaks) if w], gflop=gflop,
                      command=command)
    return rows


def write_fps_outputs(out: Path, rows: list[FpsRow], *, what: str, threads: int, runs: int, peaks: dict,
                      peaks_after: dict, load_warnings: list[str], gflop: dict | None, command: str) -> None:
    """OUT/fps.md (the table and the summary lines), fps.json and fps.png; prints the table and
    the summary."""
    from pfpn.benchmarks.machine_limits import provenance
    from pfpn.benchmarks.op_profile import format_profile

    for w in load_warnings:
        print(f"warning: {w}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    table = format_fps_table(rows)
    ups = speedups(rows)
    per_round = round_speedups(rows)
    md = [f"# fps: {what}", "", table, ""]
    peak_line = (f"Machine limit ({threads} threads, ONNX Runtime {peaks['fp32'].size}^3 GEMM, best of 5): "
                 f"float32 {peaks['fp32'].best_per_s:.0f} GFLOP/s (after the backends "
                 f"{peaks_after['fp32'].best_per_s:.0f}), u8 x s8 {peaks['int8'].best_per_s:.0f} GOP/s (after "
                 f"{peaks_after['int8'].best_per_s:.0f}); network "
                 + (f"{gflop['total']:.1f} GFLOP per image (first image)" if gflop else "GFLOP not counted"))
    md += [peak_line, ""] + [f"Warning: {w}" for w in load_warnings]
    if ups:
        md.append("Speed-up over the PyTorch eager predictor (median latency): "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items() if k != "pytorch"))
    if per_round:
        md.append(f"Per round ({runs} interleaved rounds, min / median / max): "
                  + ", ".join(f"{k} {v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}x" for k, v in per_round.items()))
    agree = [f"{r.backend} vs {ref} PQ {a['pq']:.2f}, identical pixels {100 * a['pixels']:.3f} %"
             for r in rows if r.agreement for ref, a in r.agreement.items()]
    if agree:
        md.append("Agreement on these images (PQ of the output scored against the reference's output, 100 = the "
                  "same segments): " + "; ".join(agree))
    for r in rows:
        if r.op_profile:
            md.append(f"Where {r.backend}'s network time goes (ONNX Runtime profiler, ms per image): "
                      + format_profile(r.op_profile))
    (out / "fps.md").write_text("\n".join(md) + "\n")
    (out / "fps.json").write_text(json.dumps({
        "what": what, "rows": [asdict(r) for r in rows], "speedup": ups, "speedup_per_round": per_round,
        "gemm_peak_before": {k: v.to_dict() for k, v in peaks.items()},
        "gemm_peak_after": {k: v.to_dict() for k, v in peaks_after.items()},
        "load_warnings": load_warnings, "network_gflop": gflop, "provenance": provenance(), "command": command},
        indent=2))
    plot_fps(rows, out / "fps.png", f"Panoptic FPN latency: {what}")
    print(table)
    for line in md[4:]:
        if line:
            print(line)
    print(f"wrote {out / 'fps.json'}, {out / 'fps.md'}, {out / 'fps.png'}")


def _count_gflop(ckpt: Path, image, prepared: list) -> dict | None:
    """The network's GFLOP on ``image`` (PyTorch's FLOP counter on the PyTorch model), or None
    when PyTorch cannot load the checkpoint."""
    from pfpn.benchmarks.machine_limits import network_flops

    try:
        from pfpn.runtime.images import load_image
        from pfpn.training.predictor import PanopticPredictor

        torch_target = next((t for t in prepared if t.name == "pytorch"), None)
        predictor = torch_target.predictor if torch_target is not None else PanopticPredictor.from_checkpoint(ckpt)
        batch = predictor.prepare([load_image(image)])
        return network_flops(predictor.model, batch.images, batch.image_sizes)
    except Exception as e:  # the limits are a report, never a reason to fail the benchmark
        print(f"warning: network FLOPs not counted ({type(e).__name__}: {e})", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    from pfpn.benchmarks.cli import backends_help, benchmark_parser, script_command
    from pfpn.benchmarks.targets import BACKENDS

    p = benchmark_parser(__doc__, count=4, count_help="number of images")
    p.add_argument("--backends", default=",".join(BACKENDS), help=backends_help(BACKENDS))
    p.add_argument("--runs", type=int, default=3, help="timed passes over the images (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every backend (default 2)")
    p.add_argument("--out", default="work_dirs/bench", help="folder for fps.json, fps.md, fps.png")
    args = p.parse_args(argv)
    try:
        rows = run_fps(ckpt=args.ckpt, backends=args.backends, images=args.images, size=args.size, count=args.count,
                       runs=args.runs, warmup=args.warmup, threads=args.threads, calib_count=args.calib_count,
                       workdir=args.workdir, out=args.out, command=script_command("fps.py", argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
