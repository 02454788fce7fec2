"""Smoke test of the training/make_synthetic.py script (run in a subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args, module=True):
    cmd = [sys.executable, "-m", "pfpn.training.make_synthetic"] if module else \
        [sys.executable, str(REPO / "training" / "make_synthetic.py")]
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=120)


def test_help_explains_options():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    for opt in ("--root", "--num-train", "--num-val", "--height", "--width", "--seed",
                "--overwrite", "--no-progress"):
        assert opt in r.stdout
    assert "COCO panoptic" in r.stdout
    # also runnable as a file path
    r2 = _run("--help", module=False)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout


def test_generates_dataset_and_refuses_to_overwrite(tmp_path):
    root = tmp_path / "ds"
    args = ["--root", str(root), "--num-train", "3", "--num-val", "2", "--height", "48",
            "--width", "64", "--seed", "4", "--no-progress"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    assert "train: 3 images" in r.stdout and "val: 2 images" in r.stdout
    for split, n in (("train", 3), ("val", 2)):
        data = json.loads((root / "annotations" / f"panoptic_{split}2017.json").read_text())
        assert len(data["images"]) == n
        assert all((im["height"], im["width"]) == (48, 64) for im in data["images"])
        assert len(list((root / f"{split}2017").glob("*.jpg"))) == n
        assert len(list((root / "annotations" / f"panoptic_{split}2017").glob("*.png"))) == n
    before = (root / "annotations" / "panoptic_train2017.json").read_bytes()
    r = _run(*args)
    assert r.returncode == 1 and "--overwrite" in r.stderr
    r = _run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (root / "annotations" / "panoptic_train2017.json").read_bytes() == before
    r = _run("--root", str(tmp_path / "x"), "--num-train", "-1")
    assert r.returncode == 2
