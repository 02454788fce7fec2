"""Shared fixtures. The repository root is put on sys.path so ``pytest`` works from a clone."""
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic COCO panoptic dataset (16 train, 6 val images of 96x128)."""
    from training.data.synthetic import generate_synthetic_panoptic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_panoptic(root, num_train=16, num_val=6, height=96, width=128, seed=3, progress=False)
    return root
