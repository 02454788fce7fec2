"""Served against in-process: throughput and latency of the Triton repository (runtime/triton_repo.py)
on the real tritonserver, next to runtime.Predictor in this process, with the same total threads.

    python benchmarks/serve_bench.py                                    # demo model, its val images
    python benchmarks/serve_bench.py --ckpt work_dirs/r50/r50_random.pth --size 480x800 --backend ort_int8 --requests 16

In-process: one Predictor with ``--threads`` threads, the images one after the other (what one
process does at best here), and the same Predictor called from ``--threads`` client threads.
Served: the repository with ``--instances`` network instances of ``--threads / --instances``
threads each; per protocol (HTTP, gRPC) and concurrency (1, 4, 16 requests in flight) the images
are sent ``--requests`` times in all, as PNG bytes; latency is per request at the client
(p50 / p99), throughput is requests / wall second. Writes OUT/serve_bench.json and .md.
"""
from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence



@dataclass
class ServeRow:
    mode: str  # "in-process" or "http" / "grpc"
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float


def _row(mode: str, concurrency: int, latencies: Sequence[float], seconds: float) -> ServeRow:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return ServeRow(mode, concurrency, len(ordered), seconds, len(ordered) / seconds,
                    1000 * statistics.median(ordered), 1000 * p99)


def timed_calls(call, payloads: Sequence, concurrency: int) -> tuple[list[float], float]:
    """Run ``call(payload)`` for every payload with ``concurrency`` in flight -> (latencies, wall s)."""
    def one(payload):
        t0 = time.perf_counter()
        call(payload)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, payloads))
    return latencies, time.perf_counter() - t0


def run_serve_bench(*, model: Path, images: Sequence, requests: int, concurrencies: Sequence[int],
                    protocols: Sequence[str], threads: int, instances: int, workdir: Path) -> list[ServeRow]:
    """All rows: in-process (1 and ``threads`` callers), then each protocol x concurrency."""
    import cv2

    from pfpn.runtime.predictor import Predictor
    from pfpn.runtime.triton_client import TritonPanopticClient
    from pfpn.runtime.triton_repo import write_model_repository
    from pfpn.runtime.triton_server import TritonServer

    pngs = [cv2.imencode(".png", im)[1].tobytes() for im in images]
    payloads = [pngs[i % len(pngs)] for i in range(requests)]
    decoded = [images[i % len(images)] for i in range(requests)]  # PNG is lossless: the payloads' pixels
    rows = []
    predictor = Predictor(model, threads=threads)
    predictor.predict(decoded[0])  # warm-up
    for callers in sorted({1, threads}):
        latencies, seconds = timed_calls(predictor.predict, decoded, callers)
        rows.append(_row("in-process", callers, latencies, seconds))
        print(f"[in-process x{callers}] {rows[-1].images_per_s:.2f} images/s", flush=True)
    del predictor
    repo = write_model_repository(model=model, out=workdir / "serve_bench_repo", instances=instances,
                                  threads=max(1, threads // instances), overwrite=True)
    with TritonServer(repo) as server:
        for protocol in protocols:
            client = TritonPanopticClient(server.http_url if protocol == "http" else server.grpc_url,
                                          protocol=protocol, timeout=600)
            for concurrency in concurrencies:
                timed_calls(client.predict, payloads[:max(2, concurrency)], concurrency)  # warm-up
                latencies, seconds = timed_calls(client.predict, payloads, concurrency)
                rows.append(_row(protocol, concurrency, latencies, seconds))
                print(f"[{protocol} x{concurrency}] {rows[-1].images_per_s:.2f} images/s, p50 {rows[-1].p50_ms:.0f} ms, "
                      f"p99 {rows[-1].p99_ms:.0f} ms", flush=True)
    return rows


def format_serve_table(rows: Sequence[ServeRow]) -> str:
    best = max((r.images_per_s for r in rows if r.mode == "in-process"), default=None)
    lines = ["| mode | concurrency | requests | images / s | vs in-process | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{100 * r.images_per_s / best:.0f} %" if best else "-"
        lines.append(f"| {r.mode} | {r.concurrency} | {r.requests} | {r.images_per_s:.2f} | {ratio} | {r.p50_ms:.0f} | "
                     f"{r.p99_ms:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pfpn.benchmarks.fps import parse_size
    from pfpn.benchmarks.targets import benchmark_parser

    p = benchmark_parser(__doc__, count=8, count_help="distinct images")
    p.add_argument("--backend", choices=["ort_fp32", "ort_int8"], default="ort_fp32", help="which exported file")
    p.add_argument("--requests", type=int, default=64, help="requests per configuration (default 64)")
    p.add_argument("--concurrency", default="1,4,16", help="requests in flight (default 1,4,16)")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--threads", type=int, default=2, help="total CPU threads, in process and served")
    p.add_argument("--instances", type=int, default=1, help="network model instances on the server")
    p.add_argument("--out", default="work_dirs/bench", help="folder for serve_bench.json / .md")
    args = p.parse_args(argv)

    from pfpn.benchmarks.fps import save_calibration
    from pfpn.benchmarks.machine_limits import save_results
    from pfpn.benchmarks.targets import (benchmark_images, checked_cli_inputs, default_images, env_threads, int8_file,
                                    onnx_file)
    from pfpn.runtime.triton_server import TritonUnavailable

    env_threads(args.threads)
    try:
        ckpt, _ = checked_cli_inputs(args.ckpt, "pytorch")
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        protocols = [x for x in args.protocols.split(",") if x]
        if set(protocols) - {"http", "grpc"}:
            raise ValueError(f"protocols are http and grpc, got {args.protocols!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    images = benchmark_images(images=args.images, size=size, count=args.count)
    workdir = Path(args.workdir) if args.workdir else ckpt.parent / "deploy"
    if args.backend == "ort_int8":
        calib_dir = workdir / f"calib_{size[0]}x{size[1]}" if size else workdir / "calib"
        model = int8_file(ckpt, workdir, save_calibration(default_images(args.calib_count, size, None), calib_dir))
    else:
        model = onnx_file(ckpt, workdir)
    try:
        rows = run_serve_bench(model=model, images=images, requests=args.requests, concurrencies=concurrencies,
                               protocols=protocols, threads=args.threads, instances=args.instances, workdir=workdir)
    except TritonUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = (f"{model.name}, {len(images)} images{f' of {size[0]}x{size[1]}' if size else ''}, {args.threads} threads, "
            f"{args.instances} network instance(s)")
    save_results(Path(args.out), "serve_bench", what=what, table=format_serve_table(rows), rows=rows,
                 script="serve_bench.py", argv=argv)
    return 0

if __name__ == "__main__":
    sys.exit(main())
