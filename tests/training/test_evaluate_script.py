"""Smoke test of training/evaluate.py on a freshly initialised checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from pfpn.training.checkpoint import save_checkpoint
from pfpn.training.config import tiny_synthetic
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.model.panoptic_fpn import build_model

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_script(synthetic_root, tmp_path):
    cats = CocoPanopticDataset(synthetic_root, "val").categories
    config = tiny_synthetic(cats.num_things, cats.num_stuff)
    torch.manual_seed(0)
    ckpt = tmp_path / "random.pt"
    save_checkpoint(ckpt, model=build_model(config.model), config=config, categories=cats)
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "evaluate.py"), "--ckpt", str(ckpt),
                           "--data-root", str(synthetic_root), "--out", str(out), "--max-images", "3",
                           "--no-progress", "--per-category"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Things" in proc.stdout and "Stuff" in proc.stdout and "3 images" in proc.stdout
    pq = json.loads((out / "pq.json").read_text())
    assert set(pq) == {"All", "Things", "Stuff", "per_class"}
    pred = json.loads((out / "panoptic_pred.json").read_text())
    assert len(pred["annotations"]) == 3 and len(list((out / "panoptic_pred").glob("*.png"))) == 3


def test_evaluate_script_bad_checkpoint(synthetic_root, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "evaluate.py"), "--ckpt", str(bad),
                           "--data-root", str(synthetic_root), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a readable PyTorch checkpoint" in proc.stderr
    assert not (tmp_path / "o").exists()
