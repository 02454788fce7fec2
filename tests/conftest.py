"""Shared fixtures (the project is imported as the installed `pfpn` package: make setup installs it editable)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# One thread per test process: tests run in parallel (pytest-xdist) on a 2-core machine, and
# multi-threaded torch slows down badly when the cores are shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic COCO panoptic dataset (16 train, 6 val images of 96x128)."""
    from pfpn.training.data.synthetic import generate_synthetic_panoptic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_panoptic(root, num_train=16, num_val=6, height=96, width=128, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """A small-config checkpoint (random weights biased to detect) for the synthetic categories."""
    import torch

    from pfpn.training.checkpoint import save_checkpoint
    from pfpn.training.config import tiny_synthetic
    from pfpn.training.data.coco_panoptic import CocoPanopticDataset
    from pfpn.training.model.panoptic_fpn import build_model
    from pfpn.training.random_checkpoint import make_firing

    cats = CocoPanopticDataset(synthetic_root, "val").categories
    config = tiny_synthetic(cats.num_things, cats.num_stuff)
    torch.manual_seed(0)
    model = make_firing(build_model(config.model))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model=model, config=config, categories=cats)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    """``tiny_checkpoint`` exported with the ort flavor."""
    from pfpn.export import to_onnx

    out = tiny_checkpoint.with_name("tiny_ort.onnx")
    assert to_onnx.main(["--ckpt", str(tiny_checkpoint), "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_trt_onnx(tiny_checkpoint: Path) -> Path:
    """``tiny_checkpoint`` exported with the trt flavor (custom RoIAlign / NMS nodes)."""
    from pfpn.export import to_onnx

    out = tiny_checkpoint.with_name("tiny_trt.onnx")
    assert to_onnx.main(["--ckpt", str(tiny_checkpoint), "--flavor", "trt", "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def r50_random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random published-layout R-50 checkpoint (training/random_checkpoint.py --firing, seed 0)."""
    from pfpn.training import random_checkpoint

    ckpt = tmp_path_factory.mktemp("r50") / "r50_random.pth"
    assert random_checkpoint.main(["--out", str(ckpt), "--firing"]) == 0
    return ckpt


@pytest.fixture(scope="session")
def r50_exports(r50_random_checkpoint: Path) -> dict[str, Path]:
    """``r50_random_checkpoint`` exported with both flavors: {"ort": path, "trt": path}."""
    from pfpn.export import to_onnx

    out = {}
    for flavor in ("ort", "trt"):
        out[flavor] = r50_random_checkpoint.with_name(f"r50_{flavor}.onnx")
        assert to_onnx.main(["--ckpt", str(r50_random_checkpoint), "--flavor", flavor, "--out", str(out[flavor]),
                             "--threads", "1"]) == 0
    return out
