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

from pfpn.benchmarks.targets import Target


@dataclass
class ServeRow:
    mode: str  # "in-process" or "http" / "grpc"
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float


def serve_row(mode: str, concurrency: int, latencies: Sequence[float], seconds: float) -> ServeRow:
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


def run_serve_bench(*, target: Target, images: Sequence, requests: int, concurrencies: Sequence[int],
                    protocols: Sequence[str], threads: int, instances: int, workdir: Path) -> list[ServeRow]:
    """All rows: in-process (1 and ``threads`` callers of the opened ``target``'s runtime
    Predictor), then each protocol x concurrency against a repository of the target's model file.
    The target's predictor is released before the server starts."""
    import cv2

    from pfpn.runtime.triton_client import TritonPanopticClient
    from pfpn.runtime.triton_repo import write_model_repository
    from pfpn.runtime.triton_server import TritonServer

    pngs = [cv2.imencode(".png", im)[1].tobytes() for im in images]
    payloads = [pngs[i % len(pngs)] for i in range(requests)]
    decoded = [images[i % len(images)] for i in range(requests)]  # PNG is lossless: the payloads' pixels
    rows = []
    predictor, target.predictor = target.predictor, None
    predictor.predict(decoded[0])  # warm-up
    for callers in sorted({1, threads}):
        latencies, seconds = timed_calls(predictor.predict, decoded, callers)
        rows.append(serve_row("in-process", callers, latencies, seconds))
        print(f"[in-process x{callers}] {rows[-1].images_per_s:.2f} images/s", flush=True)
    del predictor
    repo = write_model_repository(model=target.model_file, out=workdir / "serve_bench_repo", instances=instances,
                                  threads=max(1, threads // instances), overwrite=True)
    with TritonServer(repo) as server:
        for protocol in protocols:
            client = TritonPanopticClient(server.http_url if protocol == "http" else server.grpc_url,
                                          protocol=protocol, timeout=600)
            for concurrency in concurrencies:
                timed_calls(client.predict, payloads[:max(2, concurrency)], concurrency)  # warm-up
                latencies, seconds = timed_calls(client.predict, payloads, concurrency)
                rows.append(serve_row(protocol, concurrency, latencies, seconds))
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


def benchmark_serving(*, ckpt: str | Path, backend: str = "ort_fp32", images: str | Path | None = None,
                      size: tuple[int, int] | None = None, count: int = 8, calib_count: int = 16,
                      workdir: str | Path | None = None, requests: int = 64, concurrencies: Sequence[int] = (1, 4, 16),
                      protocols: Sequence[str] = ("http", "grpc"), threads: int = 2, instances: int = 1,
                      out: str | Path = "work_dirs/bench", command: str = "python benchmarks/serve_bench.py"
                      ) -> list[ServeRow]:
    """The served-vs-in-process comparison of ``backend``'s exported file (built and cached as
    fps.py does) -> the rows; writes OUT/serve_bench.json / .md. ValueError for a missing
    checkpoint or an unknown protocol, TritonUnavailable without a tritonserver, RuntimeError
    when the model cannot be built."""
    from pfpn.benchmarks.cli import (benchmark_images, calibration_images, checked_cli_inputs, default_workdir,
                                     describe_images, env_threads, save_results)
    from pfpn.benchmarks.targets import make_target

    env_threads(threads)
    ckpt, _ = checked_cli_inputs(ckpt, [backend])
    if set(protocols) - {"http", "grpc"}:
        raise ValueError(f"protocols are http and grpc, got {','.join(protocols)!r}")
    image_list = benchmark_images(images=images, size=size, count=count)
    workdir = default_workdir(ckpt, workdir)
    calib = calibration_images(workdir=workdir, size=size, count=calib_count)[0] if backend == "ort_int8" else []
    target = make_target(backend, ckpt=ckpt, workdir=workdir, threads=threads, calib_images=calib)
    if target.status != "ok":
        raise RuntimeError(f"{backend} {target.status}: {target.reason}")
    model = target.model_file
    rows = run_serve_bench(target=target, images=image_list, requests=requests, concurrencies=concurrencies,
                           protocols=protocols, threads=threads, instances=instances, workdir=workdir)
    what = f"{model.name}, {describe_images(len(image_list), size)}, {threads} threads, {instances} network instance(s)"
    save_results(Path(out), "serve_bench", what=what, table=format_serve_table(rows), rows=rows, command=command)
    return rows


def main(argv: list[str] | None = None) -> int:
    from pfpn.benchmarks.cli import benchmark_parser, script_command
    from pfpn.runtime.triton_server import TritonUnavailable

    p = benchmark_parser(__doc__, count=8, count_help="distinct images")
    p.add_argument("--backend", choices=["ort_fp32", "ort_int8"], default="ort_fp32", help="which exported file")
    p.add_argument("--requests", type=int, default=64, help="requests per configuration (default 64)")
    p.add_argument("--concurrency", default="1,4,16", help="requests in flight (default 1,4,16)")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--threads", type=int, default=2, help="total CPU threads, in process and served")
    p.add_argument("--instances", type=int, default=1, help="network model instances on the server")
    p.add_argument("--out", default="work_dirs/bench", help="folder for serve_bench.json / .md")
    args = p.parse_args(argv)
    try:
        benchmark_serving(ckpt=args.ckpt, backend=args.backend, images=args.images, size=args.size, count=args.count,
                          calib_count=args.calib_count, workdir=args.workdir, requests=args.requests,
                          concurrencies=[int(c) for c in args.concurrency.split(",")],
                          protocols=[x for x in args.protocols.split(",") if x], threads=args.threads,
                          instances=args.instances, out=args.out, command=script_command("serve_bench.py", argv))
    except (ValueError, TritonUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
