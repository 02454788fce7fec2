"""Panoptic quality of every backend: against the ground truth, and against the PyTorch
model's own output (parity).

    python benchmarks/pq_parity.py                             # demo model, synthetic val split
    python benchmarks/pq_parity.py --ckpt CKPT --data-root DIR --backends pytorch,ort_fp32,ort_int8

For each backend: PQ / SQ / RQ for all, things and stuff against the ground truth; COCO box AP
and mask AP of its detections before fusion against the ground truth's thing instances
(pycocotools), with their deltas against PyTorch's (how deployers report accuracy loss); PQ of
its predictions scored against the PyTorch predictor's predictions taken as ground truth (100 =
identical segments); and the fraction of identical pixels. One evaluation code for all
(training/evaluation/evaluate_dataset.py). Writes OUT/pq_parity.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pfpn.benchmarks.cli import DEFAULT_DATA


@dataclass
class PQRow:
    backend: str
    status: str
    reason: str = ""
    images: int = 0
    pq: float | None = None
    sq: float | None = None
    rq: float | None = None
    pq_things: float | None = None
    pq_stuff: float | None = None
    box_ap: float | None = None  # COCO AP@[.5:.95] x100 of the detections' boxes
    mask_ap: float | None = None  # ... of their masks
    box_ap_delta: float | None = None  # box_ap - PyTorch's
    mask_ap_delta: float | None = None
    pq_vs_pytorch: float | None = None
    pixels_vs_pytorch: float | None = None
    ms_per_image: float | None = None


def number_or_dash(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_parity_table(rows: list[PQRow]) -> str:
    lines = ["| backend | status | PQ | SQ | RQ | PQ things | PQ stuff | box AP | box AP delta | mask AP | "
             "mask AP delta | PQ vs PyTorch | identical pixels | ms/image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.backend} | {r.status}: {r.reason} |" + " |" * 12)
            continue
        lines.append(f"| {r.backend} | ok | {r.pq:.2f} | {r.sq:.2f} | {r.rq:.2f} | {r.pq_things:.2f} | "
                     f"{r.pq_stuff:.2f} | {number_or_dash(r.box_ap)} | {number_or_dash(r.box_ap_delta, '+.2f')} | {number_or_dash(r.mask_ap)} | "
                     f"{number_or_dash(r.mask_ap_delta, '+.2f')} | {r.pq_vs_pytorch:.2f} | {100 * r.pixels_vs_pytorch:.3f}% | "
                     f"{r.ms_per_image:.1f} |")
    return "\n".join(lines)


def plot_parity(rows: list[PQRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfpn.benchmarks.cli import save_figure
    import numpy as np

    ok = [r for r in rows if r.status == "ok"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(ok))
    for i, (key, label) in enumerate((("pq", "PQ"), ("pq_things", "PQ things"), ("pq_stuff", "PQ stuff"),
                                      ("pq_vs_pytorch", "PQ vs PyTorch"))):
        vals = [getattr(r, key) for r in ok]
        bars = ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=label)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, [r.backend for r in ok])
    ax.set_ylim(0, 105)
    ax.set_ylabel("x100")
    ax.legend(fontsize=7, ncol=4, loc="lower center")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def folder_pixel_agreement(reference_folder: Path, folder: Path, file_names: Sequence[str]) -> float:
    """The fraction of identical pixels between two folders of panoptic PNGs (the same names)."""
    import numpy as np

    from pfpn.runtime.panoptic_io import read_panoptic_png

    same = total = 0
    for name in file_names:
        a = read_panoptic_png(reference_folder / name)
        b = read_panoptic_png(folder / name)
        same += int(np.sum(a == b))
        total += a.size
    return same / max(total, 1)


def run_pq_parity(*, ckpt: str | Path, backends: str | Sequence[str], data_root: str | Path = DEFAULT_DATA,
                  split: str = "val", max_images: int | None = None, threads: int = 2, calib_count: int = 32,
                  workdir: str | Path | None = None, out: str | Path = "work_dirs/bench",
                  command: str = "python benchmarks/pq_parity.py") -> list[PQRow]:
    """PQ of every backend (pytorch first: the parity reference) on ``split`` of the dataset at
    ``data_root`` -> the rows; writes OUT/pq_parity.json, .md, .png and the predictions.
    ValueError / FileNotFoundError for a missing checkpoint or dataset, an unknown backend."""
    from pfpn.benchmarks.cli import checked_cli_inputs, default_workdir, env_threads, save_results
    from pfpn.benchmarks.targets import open_targets
    from pfpn.training.data.coco_panoptic import CocoPanopticDataset
    from pfpn.training.evaluation.evaluate_dataset import evaluate
    from pfpn.training.evaluation.pq import pq_compute

    env_threads(threads)
    ckpt, names = checked_cli_inputs(ckpt, backends)
    dataset = CocoPanopticDataset(data_root, split)
    calib_set = CocoPanopticDataset(data_root, "train")
    names = ["pytorch"] + [n for n in names if n != "pytorch"]  # the parity reference is evaluated first
    workdir = default_workdir(ckpt, workdir)
    calib = [calib_set.image_info(i)["image_path"] for i in range(min(calib_count, len(calib_set)))]
    out = Path(out)
    rows: list[PQRow] = []
    reference = None
    for target in open_targets(names, ckpt=ckpt, workdir=workdir, threads=threads, calib_images=calib):
        name = target.name
        if target.status != "ok":
            rows.append(PQRow(name, target.status, target.reason))
            continue
        try:
            ev = evaluate(target.predictor, dataset, out / "predictions" / name, max_images=max_images, desc=name)
        except Exception as e:
            rows.append(PQRow(name, "failed", f"{type(e).__name__}: {e}"))
            continue
        row = PQRow(name, "ok", images=ev.num_images, pq=100 * ev.pq.all["pq"], sq=100 * ev.pq.all["sq"],
                    rq=100 * ev.pq.all["rq"], pq_things=100 * ev.pq.things["pq"], pq_stuff=100 * ev.pq.stuff["pq"],
                    ms_per_image=1000 * ev.seconds_per_image)
        if ev.ap is not None:
            row.box_ap, row.mask_ap = 100 * ev.ap.box_ap, 100 * ev.ap.mask_ap
        if name == "pytorch":
            reference = ev
        if reference is not None and reference.ap is not None and ev.ap is not None:
            row.box_ap_delta = 100 * (ev.ap.box_ap - reference.ap.box_ap)
            row.mask_ap_delta = 100 * (ev.ap.mask_ap - reference.ap.mask_ap)
        if reference is not None:
            row.pq_vs_pytorch = 100 * pq_compute(reference.pred_json, ev.pred_json, reference.pred_folder,
                                                 ev.pred_folder).all["pq"]
            annotations = json.loads(Path(ev.pred_json).read_text())["annotations"]
            row.pixels_vs_pytorch = folder_pixel_agreement(Path(reference.pred_folder), Path(ev.pred_folder),
                                                    [ann["file_name"] for ann in annotations])
        rows.append(row)
        print(f"[{name}] PQ {row.pq:.2f}, box AP {number_or_dash(row.box_ap)} ({number_or_dash(row.box_ap_delta, '+.2f')} "
              f"vs PyTorch), mask AP {number_or_dash(row.mask_ap)} ({number_or_dash(row.mask_ap_delta, '+.2f')})",
              flush=True)

    what = f"{ckpt.name} on {data_root} {split} ({rows[0].images if rows and rows[0].images else '?'} images)"
    save_results(out, "pq_parity", what=what, table=format_parity_table(rows), rows=rows, command=command,
                 title="PQ and parity")
    plot_parity(rows, out / "pq_parity.png", f"PQ per backend: {what}")
    print(f"wrote {out / 'pq_parity.png'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    from pfpn.benchmarks.cli import DEFAULT_CKPT, backends_help, script_command
    from pfpn.benchmarks.targets import RESULT_BACKENDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help=f"checkpoint (default {DEFAULT_CKPT})")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help=f"COCO panoptic dataset root (default {DEFAULT_DATA})")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split to evaluate")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--backends", default=",".join(RESULT_BACKENDS), help=backends_help(RESULT_BACKENDS))
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every backend")
    p.add_argument("--calib-count", type=int, default=32, help="training images used to calibrate int8")
    p.add_argument("--workdir", help="model cache (default <ckpt dir>/deploy)")
    p.add_argument("--out", default="work_dirs/bench", help="folder for pq_parity.json/.md/.png and predictions")
    args = p.parse_args(argv)
    try:
        rows = run_pq_parity(ckpt=args.ckpt, backends=args.backends, data_root=args.data_root, split=args.split,
                             max_images=args.max_images, threads=args.threads, calib_count=args.calib_count,
                             workdir=args.workdir, out=args.out, command=script_command("pq_parity.py", argv))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
