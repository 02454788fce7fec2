"""The reference implementation's own install location: mmdetection 3.3.0 on mmcv-lite 2.1.0.

``pip install --target`` puts the packages below into one folder (default ``.mmref/`` in the
repository, ignored by git; ``PFPN_MMREF_SITE`` overrides) that only the reference process puts on
its ``PYTHONPATH``: the project's own environment never sees them. They install without their
dependency pins (``--no-deps``: mmdetection's and mmengine's pins conflict with torch 2.14); what
they import beyond the project's own dependencies (torch, numpy, scipy, matplotlib, opencv,
tqdm) is listed here, pinned. mmcv-lite is mmcv's Python code without its compiled operators;
``mmcv_ext_standin.py`` supplies the two that Panoptic FPN calls. scikit-image is there only for
the photographs it ships (``skimage/data/*.png``), read as files.

    python tests/reference/reference_env.py          # install (what `make test` does); idempotent
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

PACKAGES = (
    "mmdet==3.3.0",
    "mmengine==0.10.7",
    "mmcv-lite==2.1.0",
    # imported by mmdet / mmengine / mmcv at import time
    "addict==2.4.0",
    "yapf==0.43.0",
    "platformdirs==4.14.9",
    "rich==15.0.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "pygments==2.21.0",
    "termcolor==3.3.0",
    "pycocotools==2.0.11",
    "shapely==2.2.0",
    "terminaltables==3.1.10",
    # its bundled photographs (astronaut, coffee, chelsea)
    "scikit-image==0.26.0",
)


def site_dir() -> Path:
    return Path(os.environ.get("PFPN_MMREF_SITE", ROOT / ".mmref"))


def _stamp(site: Path) -> Path:
    return site / ".installed"


def is_installed(site: Path | None = None) -> bool:
    site = site or site_dir()
    stamp = _stamp(site)
    return stamp.is_file() and stamp.read_text().split() == list(PACKAGES)


def ensure_installed(site: Path | None = None, *, quiet: bool = True) -> Path:
    """Install :data:`PACKAGES` into ``site`` unless they are there already (safe to call from
    several processes at once: a file lock serialises them)."""
    site = site or site_dir()
    site.parent.mkdir(parents=True, exist_ok=True)
    with open(site.with_name(site.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(site):
            return site
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--upgrade",
               "--target", str(site), *PACKAGES]
        if quiet:
            cmd.insert(4, "--quiet")
        print(f"installing the mmdetection reference into {site} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not install the reference packages into {site}:\n"
                               f"{(proc.stdout or '')[-2000:]}{(proc.stderr or '')[-3000:]}")
        _stamp(site).write_text("\n".join(PACKAGES) + "\n")
    return site


def reference_environment(site: Path | None = None) -> dict[str, str]:
    """Environment for a reference process: the reference site first on ``PYTHONPATH``, one thread."""
    site = site or site_dir()
    path = os.pathsep.join([str(site), str(HERE)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def photograph(name: str, site: Path | None = None) -> Path:
    """Path of a photograph scikit-image ships ("astronaut", "coffee", "chelsea")."""
    path = (site or site_dir()) / "skimage" / "data" / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scikit-image's photograph is missing; run {Path(__file__).name}")
    return path


if __name__ == "__main__":
    print(ensure_installed(quiet=False))
