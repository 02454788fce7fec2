"""Write the synthetic COCO-panoptic shapes dataset (see training/data/synthetic.py).

Usage (from the repository root)::

    python -m pfpn.training.make_synthetic --root data/synthetic --num-train 500 --num-val 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfpn.training.data.synthetic import generate_synthetic_panoptic


def make_synthetic_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pfpn.training.make_synthetic",
        description=(
            "Generate a synthetic panoptic dataset in the COCO panoptic layout: "
            "<root>/annotations/panoptic_{train,val}2017.json, the id PNGs in "
            "<root>/annotations/panoptic_{train,val}2017/ and JPEG images in <root>/{train,val}2017/. "
            "4 thing classes (coloured shapes: circle, rectangle, triangle, ellipse), 3 stuff classes "
            "(sky, grass, wall textures), some crowd segments and VOID pixels. Deterministic in --seed."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--root", type=Path, default=Path("data/synthetic"),
                   help="output directory (the dataset root); created if missing")
    p.add_argument("--num-train", type=int, default=500, help="number of training images")
    p.add_argument("--num-val", type=int, default=100, help="number of validation images")
    p.add_argument("--height", type=int, default=192, help="image height in pixels (>= 8)")
    p.add_argument("--width", type=int, default=256, help="image width in pixels (>= 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed and sizes give byte-identical files")
    p.add_argument("--overwrite", action="store_true",
                   help="allow writing into a root that already holds a panoptic JSON "
                        "(files of the same names are replaced)")
    p.add_argument("--no-progress", action="store_true", help="do not show the tqdm progress bars")
    return p


def make_synthetic(*, root: str | Path = Path("data/synthetic"), num_train: int = 500, num_val: int = 100,
                   height: int = 192, width: int = 256, seed: int = 0, overwrite: bool = False,
                   no_progress: bool = False):
    """Write the dataset (the command line's flags as keywords, same defaults) and print one line
    per split. -> the ``generate_synthetic_panoptic`` result. Raises ValueError for bad sizes or
    counts, FileExistsError when ``root`` holds a dataset and ``overwrite`` is False."""
    root = Path(root)
    if num_train < 0 or num_val < 0:
        raise ValueError("--num-train and --num-val must be >= 0")
    if height < 8 or width < 8:
        raise ValueError("--height and --width must be >= 8")
    existing = sorted((root / "annotations").glob("panoptic_*2017.json"))
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace the dataset")
    t0 = time.perf_counter()
    ds = generate_synthetic_panoptic(root, num_train=num_train, num_val=num_val, height=height, width=width,
                                     seed=seed, progress=not no_progress)
    dt = time.perf_counter() - t0
    for s in ds.splits.values():
        print(f"{s.name}: {s.num_images} images, {s.num_segments} segments -> {s.json_path}")
    print(f"done in {dt:.1f} s")
    return ds


def main(argv: list[str] | None = None) -> int:
    args = make_synthetic_parser().parse_args(argv)
    try:
        make_synthetic(**vars(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
