"""The installed distribution: one top-level import package (``pfpn``), every source file of the
five folders in it, the runtime importable without torch, and a console command per script.

Reads the wheel that ``make test`` builds and installs into an empty virtual environment before
the suite starts (tests/prepared_envs.py wheel)."""
from __future__ import annotations

import configparser
import csv
import importlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

import prepared_envs

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("training", "export", "runtime", "plugins", "benchmarks")


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(prepared_envs.wheel_file())
    except prepared_envs.EnvironmentNotPrepared as e:
        pytest.skip(str(e))


def dist_info_file(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def checkout_sources() -> set[str]:
    """The checkout's tracked .py files of the five folders, as their paths inside ``pfpn``."""
    tracked = subprocess.run(["git", "ls-files", "--", *FOLDERS], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return {f"pfpn/{p}" for p in tracked if p.endswith(".py")}


def test_one_top_level_package(wheel):
    assert dist_info_file(wheel, "top_level.txt").split() == ["pfpn"]
    rows = list(csv.reader(io.StringIO(dist_info_file(wheel, "RECORD"))))
    tops = {row[0].split("/")[0] for row in rows}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"pfpn"}, sorted(tops)
    # pfpn is a namespace package: the five folders are its sub-packages, nothing else sits at its top
    assert {row[0].split("/")[1] for row in rows if row[0].startswith("pfpn/")} == set(FOLDERS)


def test_every_source_file_and_data_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    missing = checkout_sources() - names
    assert not missing, f"not packaged (add the sub-package to pyproject's packages list): {sorted(missing)[:8]}"
    ptx = [p for p in (ROOT / "runtime" / "gpu" / "ptx").iterdir()]
    assert ptx and {f"pfpn/runtime/gpu/ptx/{p.name}" for p in ptx} <= names  # the kernels' PTX and manifest
    assert "pfpn/runtime/REFERENCE.md" in names  # the reference facts the code cites


def test_runtime_imports_from_the_wheel_without_torch(wheel):
    python = prepared_envs.venv_python(prepared_envs.WHEEL_DIR / "venv")
    code = ("import sys\n"
            "sys.modules['torch'] = None; sys.modules['torchvision'] = None  # any import of them fails\n"
            "import pfpn.runtime, pfpn.runtime.predictor, pfpn.runtime.predict, pfpn.runtime.images\n"
            "print(pfpn.runtime.predictor.__file__)\n"
            "print(pfpn.runtime.predictor.Predictor.__name__)\n")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/",
                          env=prepared_envs.wheel_environment(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, name = proc.stdout.split()
    assert Path(where).is_relative_to(prepared_envs.WHEEL_DIR / "venv"), where  # the wheel's copy, not the checkout
    assert name == "Predictor"


def test_console_commands_name_real_main_functions(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info_file(wheel, "entry_points.txt"))
    commands = dict(entry_points["console_scripts"])
    # every script a user types has its command
    scripts = {"pfpn-export": "pfpn.export.to_onnx", "pfpn-build-engine": "pfpn.runtime.build_engine",
               "pfpn-predict": "pfpn.runtime.predict", "pfpn-fps": "pfpn.benchmarks.fps",
               "pfpn-train": "pfpn.training.train", "pfpn-evaluate": "pfpn.training.evaluate"}
    for command, module in scripts.items():
        assert commands.get(command) == f"{module}:main", (command, commands.get(command))
    for command, target in commands.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command


def test_exactly_one_onnxruntime_package_per_install_path(wheel):
    """onnxruntime and onnxruntime-gpu provide the same module: the base install pulls neither,
    the cpu extra the first, the gpu extra the second, and no extra both."""
    from packaging.requirements import Requirement

    requirements = [Requirement(line.split(":", 1)[1].strip())
                    for line in dist_info_file(wheel, "METADATA").splitlines() if line.startswith("Requires-Dist:")]
    ort_builds = {"onnxruntime", "onnxruntime-gpu"}

    def ort_of(extra: str | None) -> set[str]:
        env = {"extra": extra or ""}
        return {r.name for r in requirements if r.name in ort_builds
                and (r.marker.evaluate(env) if r.marker else extra is None)}

    assert ort_of(None) == set()
    assert ort_of("cpu") == {"onnxruntime"} and ort_of("gpu") == {"onnxruntime-gpu"}
    extras = {line.split(":", 1)[1].strip() for line in dist_info_file(wheel, "METADATA").splitlines()
              if line.startswith("Provides-Extra:")}
    assert {"cpu", "gpu", "train", "export", "dev"} <= extras
    assert all(ort_of(e) == set() for e in extras - {"cpu", "gpu"})  # what make setup adds to cpu pulls no other
