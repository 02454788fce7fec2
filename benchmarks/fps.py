"""Latency and throughput of every backend on the same weights and images.

    python benchmarks/fps.py                                   # demo model, synthetic images
    python benchmarks/fps.py --ckpt work_dirs/r50_random.pth --size 480x800 --threads 2
    python benchmarks/fps.py --backends pytorch,ort_fp32 --runs 10 --out work_dirs/bench

Per backend: status (ok / skipped with the reason / failed with the error), model file size,
end-to-end latency median and p90 per image, fps (1 / median), and the median split into
pre-processing (decode checks, resize, pad), network and post-processing (pasting, fusion,
COCO conversion). Warm-up runs are excluded; GPU backends synchronise before the clock stops.
Writes OUT/fps.json, OUT/fps.md and OUT/fps.png.

Backends: pytorch, ort_fp32, ort_int8, openvino, trt_fp16, trt_int8 (models are exported /
quantized / built on first use and cached in --workdir).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.progress import progress_line  # noqa: E402

DEFAULT_CKPT = Path("work_dirs/tiny/final.pt")
DEFAULT_IMAGES = Path("data/synthetic/val2017")


@dataclass
class FpsRow:
    backend: str
    status: str
    reason: str = ""
    file_mb: float | None = None
    images: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    fps: float | None = None
    preprocess_ms: float | None = None
    network_ms: float | None = None
    postprocess_ms: float | None = None


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --size must look like 480x800, got {text!r}") from None
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.targets import BACKEND_HELP, BACKENDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT),
                   help=f"checkpoint (ours or published mmdetection); default {DEFAULT_CKPT} (make demo writes it)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, any of: " + "; ".join(f"{k} = {v}" for k, v in BACKEND_HELP.items()))
    p.add_argument("--images", help=f"folder of images (default: {DEFAULT_IMAGES} if it exists and no --size, "
                                    "else generated synthetic images)")
    p.add_argument("--size", help="generate synthetic images of this HxW (e.g. 480x800: the published config "
                                  "resizes it to exactly 800x1333)")
    p.add_argument("--count", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--runs", type=int, default=3, help="timed passes over the images (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every backend (default 2)")
    p.add_argument("--calib-count", type=int, default=16, help="calibration images for the int8 backends")
    p.add_argument("--workdir", help="where exported/quantized/built models are cached (default: next to the "
                                     "checkpoint, in <ckpt dir>/deploy)")
    p.add_argument("--out", default="work_dirs/bench", help="folder for fps.json, fps.md, fps.png")
    return p.parse_args(argv)


def measure(target, images: list, runs: int, warmup: int) -> FpsRow:
    totals, pre, net, post = [], [], [], []
    for _ in range(warmup):
        for image in images:
            target.predictor.predict_timed(image)
    for _ in range(runs):
        for image in images:
            t0 = time.perf_counter()
            _, timing = target.predictor.predict_timed(image)
            totals.append(time.perf_counter() - t0)
            pre.append(timing.preprocess)
            net.append(timing.network)
            post.append(timing.postprocess)
    totals.sort()
    med = statistics.median(totals)
    p90 = totals[min(len(totals) - 1, int(round(0.9 * (len(totals) - 1))))]
    return FpsRow(target.name, "ok", file_mb=target.file_size_mb, images=len(totals), median_ms=1000 * med,
                  p90_ms=1000 * p90, fps=1.0 / med, preprocess_ms=1000 * statistics.median(pre),
                  network_ms=1000 * statistics.median(net), postprocess_ms=1000 * statistics.median(post))


def format_table(rows: list[FpsRow]) -> str:
    head = ("| backend | status | file MB | median ms | p90 ms | fps | pre ms | network ms | post ms | post % |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.backend} | {r.status}: {r.reason} | {'' if r.file_mb is None else f'{r.file_mb:.1f}'}"
                         " | | | | | | | |")
            continue
        share = 100 * r.postprocess_ms / r.median_ms if r.median_ms else 0
        lines.append(f"| {r.backend} | ok | {r.file_mb or 0:.1f} | {r.median_ms:.1f} | {r.p90_ms:.1f} | {r.fps:.2f} | "
                     f"{r.preprocess_ms:.1f} | {r.network_ms:.1f} | {r.postprocess_ms:.1f} | {share:.1f} |")
    return "\n".join(lines)


def speedups(rows: list[FpsRow], baseline: str = "pytorch") -> dict[str, float]:
    base = next((r for r in rows if r.backend == baseline and r.status == "ok"), None)
    if base is None:
        return {}
    return {r.backend: base.median_ms / r.median_ms for r in rows if r.status == "ok"}


def plot(rows: list[FpsRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.targets import save_figure

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.targets import checked_cli_inputs, default_images, env_threads, make_target

    env_threads(args.threads)
    try:
        ckpt, backends = checked_cli_inputs(args.ckpt, args.backends)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    folder = Path(args.images) if args.images else (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() and not size else None)
    images = default_images(args.count, size, folder)
    calib = default_images(args.calib_count, size, None)
    workdir = Path(args.workdir) if args.workdir else ckpt.parent / "deploy"
    calib_dir = workdir / f"calib_{size[0]}x{size[1]}" if size else workdir / "calib"
    calib_paths = _save_calibration(calib, calib_dir)

    rows = []
    for done, name in enumerate(backends):
        print(progress_line(done, len(backends), next=name), flush=True)
        print(f"[{name}] preparing ...", flush=True)
        target = make_target(name, ckpt=ckpt, workdir=workdir, threads=args.threads, calib_images=calib_paths,
                             calib_dir=calib_dir)
        if target.status != "ok":
            rows.append(FpsRow(name, target.status, target.reason, file_mb=target.file_size_mb))
            print(f"[{name}] {target.status}: {target.reason}", flush=True)
            continue
        try:
            row = measure(target, images, args.runs, args.warmup)
        except Exception as e:
            row = FpsRow(name, "failed", f"{type(e).__name__}: {e}", file_mb=target.file_size_mb)
        rows.append(row)
        print(f"[{name}] {row.status} {'' if row.median_ms is None else f'{row.median_ms:.1f} ms'}", flush=True)
    print(progress_line(len(backends), len(backends)), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    what = f"{ckpt.name}, {len(images)} images{f' of {size[0]}x{size[1]}' if size else ''}, {args.threads} threads"
    table = format_table(rows)
    ups = speedups(rows)
    md = [f"# fps: {what}", "", table, ""]
    if ups:
        md.append("Speed-up over the PyTorch eager predictor (median latency): "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items() if k != "pytorch"))
    (out / "fps.md").write_text("\n".join(md) + "\n")
    (out / "fps.json").write_text(json.dumps({"what": what, "rows": [asdict(r) for r in rows], "speedup": ups},
                                             indent=2))
    plot(rows, out / "fps.png", f"Panoptic FPN latency: {what}")
    print(table)
    if ups:
        print(md[-1])
    print(f"wrote {out / 'fps.json'}, {out / 'fps.md'}, {out / 'fps.png'}")
    return 1 if any(r.status == "failed" for r in rows) else 0


def _save_calibration(images: list, folder: Path) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"calib_{i:03d}.png"
        if not path.exists():
            cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


if __name__ == "__main__":
    sys.exit(main())
