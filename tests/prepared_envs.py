"""The isolated environments some tests need, prepared by ``make test`` before the suite starts
(never inside a test): a test that finds its environment missing skips with a one-line reason
naming the command below.

    python tests/prepared_envs.py panopticapi   # the COCO reference PQ (panopticapi-lite pins numpy < 2)
    python tests/prepared_envs.py wheel         # the project's wheel in an empty virtual environment

* ``panopticapi``: a virtual environment with ``panopticapi-lite`` (``$PANOPTICAPI_VENV``, default
  ``~/.cache/panoptic-fpn/panopticapi-venv``), created once (20-30 s) and reused.
* ``wheel``: ``pip wheel`` of this checkout into ``.testenv/wheel/`` and a new virtual environment
  ``.testenv/wheel/venv`` with only that wheel installed (``--no-deps``: its dependencies are read
  from the main environment's site-packages through ``PYTHONPATH``, which processes no ``.pth``
  file, so the checkout's editable install stays invisible there). Rebuilt on every call (~10 s),
  so it always holds the current code.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".testenv" / "wheel"
MARKER = ".panoptic-fpn-venv"  # marks a venv made here (and so safe to delete and remake)


class EnvironmentNotPrepared(RuntimeError):
    """A prepared environment is missing; the message says which command makes it."""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_venv(venv: Path, *, note: str) -> Path:
    """A new empty virtual environment at ``venv`` (an older one this module made is replaced)."""
    if venv.exists():
        if not (venv / MARKER).exists():
            raise EnvironmentNotPrepared(f"{venv} exists but was not made by tests/prepared_envs.py; remove it")
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
    (venv / MARKER).write_text(note + "\n")
    return venv_python(venv)


# --- panopticapi -----------------------------------------------------------------------------

def panopticapi_venv() -> Path:
    env = os.environ.get("PANOPTICAPI_VENV")
    return Path(env) if env else Path.home() / ".cache" / "panoptic-fpn" / "panopticapi-venv"


def panopticapi_python() -> Path:
    """The prepared interpreter that imports ``panopticapi.evaluation``, or EnvironmentNotPrepared."""
    python = venv_python(panopticapi_venv())
    if python.exists() and subprocess.run([str(python), "-c", "import panopticapi.evaluation"],
                                          capture_output=True, timeout=120).returncode == 0:
        return python
    raise EnvironmentNotPrepared(f"no panopticapi environment at {panopticapi_venv()}; "
                                 "run `python tests/prepared_envs.py panopticapi` (make test does)")


def prepare_panopticapi() -> Path:
    try:
        return panopticapi_python()
    except EnvironmentNotPrepared:
        pass
    start = time.monotonic()
    venv = panopticapi_venv()
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = make_venv(venv, note="the panopticapi reference of tests/training/evaluation/test_pq_reference.py")
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "panopticapi-lite"],
                   check=True, timeout=900)
    print(f"prepared {venv} in {time.monotonic() - start:.1f} s")
    return panopticapi_python()


# --- the wheel -------------------------------------------------------------------------------

def wheel_file() -> Path:
    """The wheel built by :func:`prepare_wheel`, or EnvironmentNotPrepared."""
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    if len(wheels) != 1 or not venv_python(WHEEL_DIR / "venv").exists():
        raise EnvironmentNotPrepared(f"no prepared wheel in {WHEEL_DIR}; run `python tests/prepared_envs.py wheel` "
                                     "(make test does)")
    return wheels[0]


def wheel_environment() -> dict[str, str]:
    """Environment for the wheel's venv python: this interpreter's site-packages folders (a venv's
    own and, with ``--system-site-packages``, the system's) on ``PYTHONPATH`` for the dependencies
    (numpy, opencv, onnxruntime), read without their ``.pth`` files."""
    sites = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sites or [sysconfig.get_paths()["purelib"]]),
            "PYTHONNOUSERSITE": "1"}


def prepare_wheel() -> Path:
    start = time.monotonic()
    if WHEEL_DIR.exists():
        for old in WHEEL_DIR.glob("*.whl"):
            old.unlink()
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    build = WHEEL_DIR / "build"
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(WHEEL_DIR), str(ROOT)], check=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' staging folder
    wheel = next(WHEEL_DIR.glob("*.whl"))
    python = make_venv(WHEEL_DIR / "venv", note="the wheel check of tests/test_packaging.py")
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                    str(wheel)], check=True)
    print(f"prepared {wheel.name} in {WHEEL_DIR / 'venv'} in {time.monotonic() - start:.1f} s")
    return wheel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("envs", nargs="+", choices=["panopticapi", "wheel"])
    args = p.parse_args(argv)
    for env in args.envs:
        (prepare_panopticapi if env == "panopticapi" else prepare_wheel)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
