"""What the benchmark scripts share around their targets (benchmarks/targets.py): the common
arguments and their checks, the images and calibration images, the thread settings, and the
result files (NAME.json / NAME.md, figures)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_CKPT = Path("work_dirs/tiny/final.pt")
DEFAULT_IMAGES = Path("data/synthetic/val2017")
DEFAULT_DATA = Path("data/synthetic")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'480x800' -> (480, 800); None or '' -> None. An ``argparse`` type: a malformed size is a
    usage error (exit 2) with the expected form."""
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 480x800, got {text!r}") from None
    return h, w


def checked_cli_inputs(ckpt: str | os.PathLike, backends: str | Sequence[str]) -> tuple[Path, list[str]]:
    """The benchmark scripts' ``--ckpt`` and ``--backends`` (comma-separated or a list), checked;
    ValueError names the problem."""
    from pfpn.benchmarks.targets import BACKENDS

    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (run `make demo` first, or pass --ckpt)")
    items = backends.split(",") if isinstance(backends, str) else list(backends)
    names = [b.strip() for b in items if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return path, names


def default_workdir(ckpt: Path, workdir: str | os.PathLike | None) -> Path:
    """The model cache: ``workdir``, or <ckpt dir>/deploy."""
    return Path(workdir) if workdir else ckpt.parent / "deploy"


def default_images(count: int, size: tuple[int, int] | None, folder: Path | None = None, *,
                   first_seed: int = 1000) -> list:
    """``count`` image paths from ``folder`` (a folder or an image file) when given, else
    generated synthetic scenes (BGR arrays, deterministic: seeds ``first_seed``, +1, ...) of
    ``size`` (default 192x256)."""
    from pfpn.training.data.synthetic import make_synthetic_sample

    if folder is not None:
        from pfpn.runtime.images import list_images

        return list_images(folder, count=count)
    h, w = size or (192, 256)
    return [make_synthetic_sample(np.random.default_rng(first_seed + i), h, w)[0] for i in range(count)]


def benchmark_images(*, images: str | os.PathLike | None, size: tuple[int, int] | None, count: int,
                     decode: bool = True, first_seed: int = 1000) -> list:
    """The images of a benchmark script: from ``images`` (a folder or a file), else the demo's val
    split when it exists and no ``size`` is asked, else generated synthetic images of ``size``.
    With ``decode`` the files are read into BGR arrays; without, they stay paths (the predictors
    then decode them inside their timed pre-processing)."""
    from pfpn.runtime.images import read_image

    folder = Path(images) if images else (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() and not size else None)
    found = default_images(count, size, folder, first_seed=first_seed)
    return [read_image(im) if decode and isinstance(im, Path) else im for im in found]


def save_calibration(images: Sequence[np.ndarray], folder: Path) -> list[Path]:
    """The images as folder/calib_NNN.png (an existing file is kept) -> their paths."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"calib_{i:03d}.png"
        if not path.exists():
            cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def calibration_images(*, workdir: Path, size: tuple[int, int] | None, count: int) -> tuple[list[Path], Path]:
    """The int8 backends' calibration images: ``count`` generated scenes of ``size`` saved once
    in workdir/calib (workdir/calib_HxW with a size) -> (paths, folder)."""
    folder = workdir / f"calib_{size[0]}x{size[1]}" if size else workdir / "calib"
    return save_calibration(default_images(count, size), folder), folder


def benchmark_parser(doc: str | None, *, count: int, count_help: str, calib_count: int = 16) -> argparse.ArgumentParser:
    """The argument parser of a benchmark script with the arguments they share: --ckpt, --images,
    --size (parsed into (h, w)), --count, --calib-count, --workdir."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT),
                   help=f"checkpoint (ours or published mmdetection); default {DEFAULT_CKPT} (make demo writes it)")
    p.add_argument("--images", help=f"folder of images (default: {DEFAULT_IMAGES} if it exists and no --size, "
                                    "else generated synthetic images)")
    p.add_argument("--size", type=parse_size, help="generate synthetic images of this HxW instead (e.g. 480x800: "
                                                   "the published config resizes it to exactly 800x1333)")
    p.add_argument("--count", type=int, default=count, help=f"{count_help} (default {count})")
    p.add_argument("--calib-count", type=int, default=calib_count, help="calibration images for the int8 backends")
    p.add_argument("--workdir", help="where exported/quantized/built models are cached (default: next to the "
                                     "checkpoint, in <ckpt dir>/deploy)")
    return p


def backends_help(names: Sequence[str]) -> str:
    """--backends help: the backends and what each is (targets.BACKEND_HELP)."""
    from pfpn.benchmarks.targets import BACKEND_HELP

    return "comma-separated, any of: " + "; ".join(f"{k} = {BACKEND_HELP[k]}" for k in names)


def env_threads(threads: int) -> None:
    """Apply the thread count to this process's libraries: the OpenMP/BLAS variables for those
    that have not started their threads yet, and OpenCV's pool (resize, pasting) directly, as it
    is already loaded by the time the arguments are parsed. Torch, ONNX Runtime and OpenVINO get
    it through their own settings (targets.open_predictor)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2

    cv2.setNumThreads(threads)


def describe_images(count: int, size: tuple[int, int] | None) -> str:
    """'2 images of 480x800' / '4 images'."""
    return f"{count} images{f' of {size[0]}x{size[1]}' if size else ''}"


def script_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces a run: ``argv`` (this process's when None)."""
    return f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def save_results(out: Path, name: str, *, what: str, table: str, rows: list, command: str,
                 title: str | None = None) -> None:
    """A benchmark's OUT/NAME.md (the table under "# TITLE: what", TITLE default NAME) and
    OUT/NAME.json (what, rows, provenance and the command that reproduces them)."""
    from pfpn.benchmarks.machine_limits import provenance

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(f"# {title or name}: {what}\n\n{table}\n")
    (out / f"{name}.json").write_text(json.dumps({
        "what": what, "rows": [asdict(r) for r in rows], "provenance": provenance(),
        "command": command}, indent=2))
    print(table)
    print(f"wrote {out / (name + '.json')}, {out / (name + '.md')}")


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
