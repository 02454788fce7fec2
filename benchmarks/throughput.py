"""Throughput, not only latency: images per second over a set of images for several batch sizes
and process x thread layouts, and the peak resident memory of each.

    python benchmarks/throughput.py --ckpt work_dirs/tiny/final.pt --backends ort_fp32,ort_int8
    python benchmarks/throughput.py --ckpt work_dirs/r50/r50_random.pth --size 480x800 --count 8 \\
        --batch-sizes 1,2,4 --layouts 1x2,2x1

Every configuration runs in fresh worker processes (spawned, so peak memory is the
configuration's own): P processes with T threads each (layout PxT) share the images, each opens
its own predictor with ``batch_size`` images per network call; all start together once every
worker has loaded its model, and images / s = images / (last finish - start). Batch sizes are
measured with one process using all threads (1 x threads); layouts with batch size 1. Peak memory
is the largest ``ru_maxrss`` of the configuration's workers (model, arena and buffers included).

Backends: those of benchmarks/fps.py that open a runtime Predictor (ort_fp32, ort_int8, openvino_int8,
openvino) and pytorch (batch size 1 only: the PyTorch predictor takes one image per call here).
Models come from the same cache as fps.py (--workdir). Writes OUT/throughput.json and .md.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


RUNTIME_BACKENDS = ("ort_fp32", "ort_int8", "openvino", "openvino_int8")


@dataclass
class ThroughputRow:
    backend: str
    batch_size: int
    processes: int
    threads: int
    images: int
    seconds: float
    images_per_s: float
    peak_rss_mb: float  # the largest worker's peak resident memory
    total_rss_mb: float  # summed over the workers: what the configuration takes of the machine


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """'1x2,2x1' -> [(1, 2), (2, 1)] (processes x threads)."""
    out = []
    for item in text.split(","):
        try:
            p, t = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"layout {item!r} must look like 2x1 (processes x threads)") from None
        if p < 1 or t < 1:
            raise ValueError(f"layout {item!r}: processes and threads must be >= 1")
        out.append((p, t))
    return out


def _worker(backend: str, model: str, threads: int, batch_size: int, images: list, ready, start, results) -> None:
    """One worker: open the predictor, say ready, wait for the start, run its images."""
    from pfpn.benchmarks.cli import env_threads
    from pfpn.benchmarks.targets import open_predictor

    env_threads(threads)
    predictor = open_predictor(backend, Path(model), threads=threads, batch_size=batch_size)
    if backend == "pytorch":  # one image per call (its predict_batch would batch them in one network call)
        run = lambda chunk: [predictor.predict(im) for im in chunk]  # noqa: E731
    else:
        run = predictor.predict_batch
    run(images[:batch_size])  # warm-up
    ready.put(1)
    start.wait()
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        run(images[i:i + batch_size])
    results.put((time.perf_counter() - t0, time.perf_counter(), len(images),
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))


def measure_config(backend: str, model: Path, images: Sequence, *, processes: int, threads: int,
                   batch_size: int) -> ThroughputRow:
    """images / s of one configuration (see the module docstring)."""
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [list(images[i::processes]) for i in range(processes)]
    workers = [ctx.Process(target=_worker, args=(backend, str(model), threads, batch_size, share, ready, start,
                                                 results), daemon=True) for share in shares if share]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=900)
    t_start = time.perf_counter()
    start.set()
    outs = [results.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    seconds = max(end for _, end, _, _ in outs) - t_start
    count = sum(n for _, _, n, _ in outs)
    return ThroughputRow(backend=backend, batch_size=batch_size, processes=len(workers), threads=threads,
                         images=count, seconds=seconds, images_per_s=count / seconds,
                         peak_rss_mb=max(rss for _, _, _, rss in outs), total_rss_mb=sum(rss for _, _, _, rss in outs))


def run_throughput(*, ckpt: Path, backends: Sequence[str], images: Sequence, batch_sizes: Sequence[int],
                   layouts: Sequence[tuple[int, int]], threads: int, workdir: Path, calib_images: Sequence[Path]
                   ) -> list[ThroughputRow]:
    """Every backend x (batch sizes at 1 x threads, layouts at batch 1). ValueError for a backend
    this script does not measure."""
    from pfpn.benchmarks.targets import open_targets

    wrong = [name for name in backends if name not in RUNTIME_BACKENDS + ("pytorch",)]
    if wrong:
        raise ValueError(f"throughput measures {', '.join(('pytorch',) + RUNTIME_BACKENDS)}, not {wrong[0]!r}")
    rows = []
    for target in open_targets(backends, ckpt=ckpt, workdir=workdir, threads=threads, calib_images=calib_images):
        if target.status != "ok":
            continue
        name, model = target.name, target.model_file
        target.predictor = None  # the workers open their own
        configs = [(1, threads, b) for b in batch_sizes if name != "pytorch" or b == 1]
        configs += [(p, t, 1) for p, t in layouts if (p, t) != (1, threads) or 1 not in batch_sizes]
        for processes, t, batch in configs:
            row = measure_config(name, model, images, processes=processes, threads=t, batch_size=batch)
            print(f"[{name}] batch {batch}, {processes}x{t}: {row.images_per_s:.2f} images/s, peak "
                  f"{row.peak_rss_mb:.0f} MB per process, {row.total_rss_mb:.0f} MB in all", flush=True)
            rows.append(row)
    return rows


def format_throughput_table(rows: Sequence[ThroughputRow]) -> str:
    lines = ["| backend | batch | processes x threads | images | seconds | images / s | peak RSS MB per process "
             "| all processes MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.backend} | {r.batch_size} | {r.processes}x{r.threads} | {r.images} | {r.seconds:.2f} | "
                     f"{r.images_per_s:.2f} | {r.peak_rss_mb:.0f} | {r.total_rss_mb:.0f} |")
    return "\n".join(lines)


def benchmark_throughput(*, ckpt: str | Path, backends: str | Sequence[str] = "ort_fp32,ort_int8",
                         images: str | Path | None = None, size: tuple[int, int] | None = None, count: int = 8,
                         calib_count: int = 16, workdir: str | Path | None = None,
                         batch_sizes: Sequence[int] = (1, 2, 4), layouts: Sequence[tuple[int, int]] = ((1, 2), (2, 1)),
                         threads: int = 2, out: str | Path = "work_dirs/bench",
                         command: str = "python benchmarks/throughput.py") -> list[ThroughputRow]:
    """:func:`run_throughput` on the benchmark images, models from fps.py's cache -> the rows;
    writes OUT/throughput.json / .md. ValueError for a missing checkpoint or a backend not measured."""
    from pfpn.benchmarks.cli import (benchmark_images, calibration_images, checked_cli_inputs, default_workdir,
                                     describe_images, save_results)

    ckpt, names = checked_cli_inputs(ckpt, backends)
    image_list = benchmark_images(images=images, size=size, count=count)
    workdir = default_workdir(ckpt, workdir)
    calib, _ = calibration_images(workdir=workdir, size=size, count=calib_count)
    rows = run_throughput(ckpt=ckpt, backends=names, images=image_list, batch_sizes=batch_sizes, layouts=layouts,
                          threads=threads, workdir=workdir, calib_images=calib)
    save_results(Path(out), "throughput", what=f"{ckpt.name}, {describe_images(len(image_list), size)}",
                 table=format_throughput_table(rows), rows=rows, command=command)
    return rows


def main(argv: list[str] | None = None) -> int:
    from pfpn.benchmarks.cli import benchmark_parser, script_command

    p = benchmark_parser(__doc__, count=8, count_help="images per configuration")
    p.add_argument("--backends", default="ort_fp32,ort_int8", help="comma-separated: pytorch, " + ", ".join(RUNTIME_BACKENDS))
    p.add_argument("--batch-sizes", default="1,2,4", help="batch sizes at 1 x --threads (default 1,2,4)")
    p.add_argument("--layouts", default="1x2,2x1", help="processes x threads at batch 1 (default 1x2,2x1)")
    p.add_argument("--threads", type=int, default=2, help="threads of the single-process configurations")
    p.add_argument("--out", default="work_dirs/bench", help="folder for throughput.json / .md")
    args = p.parse_args(argv)
    try:
        benchmark_throughput(ckpt=args.ckpt, backends=args.backends, images=args.images, size=args.size,
                             count=args.count, calib_count=args.calib_count, workdir=args.workdir,
                             batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                             layouts=parse_layouts(args.layouts), threads=args.threads, out=args.out,
                             command=script_command("throughput.py", argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
