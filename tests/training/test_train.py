"""The training script: resume continues exactly; torchrun DDP with 2 CPU processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pfpn.training import train
from pfpn.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _run(data, work, *extra):
    args = ["--config", "tiny_synthetic", "--data-root", str(data), "--work-dir", str(work), "--batch-size", "2",
            "--epochs", "2", "--checkpoint-every", "1000", "--no-progress", "--log-every", "1", "--threads", "1",
            *extra]
    assert train.main(args) == 0


def test_resume_gives_the_same_parameters(synthetic_root, tmp_path):
    # 16 images / batch 2 = 8 iterations per epoch; warm-up and lr steps are inside the run
    _run(synthetic_root, tmp_path / "straight", "--max-iters", "4")
    _run(synthetic_root, tmp_path / "resumed", "--max-iters", "2")
    _run(synthetic_root, tmp_path / "resumed", "--max-iters", "4", "--resume")
    a = load_checkpoint(tmp_path / "straight" / "latest.pt")
    b = load_checkpoint(tmp_path / "resumed" / "latest.pt")
    assert a.schedule["iteration"] == b.schedule["iteration"] == 4
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    # the logged learning rates and losses of iterations 3 and 4 are identical
    la = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["lr"], r["loss"]) for r in la[2:]] == [(r["iter"], r["lr"], r["loss"]) for r in lb[2:]]


def test_training_changes_the_weights_and_writes_final(synthetic_root, tmp_path):
    _run(synthetic_root, tmp_path / "w", "--max-iters", "16", "--epochs", "2")
    final = load_checkpoint(tmp_path / "w" / "final.pt")
    assert final.schedule["iteration"] == 16
    log = [json.loads(x) for x in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 16 and all(r["loss"] > 0 for r in log)


def test_two_runs_give_bitwise_equal_weights(synthetic_root, tmp_path, capsys):
    """Training is deterministic on one machine and library set: two fresh runs, same weights to
    the bit (what varies across machines is in the README)."""
    _run(synthetic_root, tmp_path / "a", "--max-iters", "4", "--progress-lines")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[progress]")]
    assert lines[0].startswith("[progress] 1/4 loss=") and lines[-1].startswith("[progress] 4/4 loss=")
    _run(synthetic_root, tmp_path / "b", "--max-iters", "4")
    a = load_checkpoint(tmp_path / "a" / "latest.pt").state_dict
    b = load_checkpoint(tmp_path / "b" / "latest.pt").state_dict
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_checkpoint_fails_clearly(synthetic_root, tmp_path, capsys):
    args = ["--data-root", str(synthetic_root), "--work-dir", str(tmp_path / "none"), "--resume"]
    assert train.main(args) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_missing_dataset_fails_clearly(tmp_path, capsys):
    assert train.main(["--data-root", str(tmp_path / "nope"), "--work-dir", str(tmp_path / "w")]) == 2
    assert "panoptic_train2017.json" in capsys.readouterr().err


def test_torchrun_ddp_two_cpu_processes(synthetic_root, tmp_path):
    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "training" / "train.py"), "--config", "tiny_synthetic", "--data-root", str(synthetic_root),
           "--work-dir", str(work), "--batch-size", "4", "--epochs", "1", "--max-iters", "3", "--no-progress",
           "--log-every", "1", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout
    ckpt = load_checkpoint(work / "latest.pt")
    assert ckpt.schedule["iteration"] == 3
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3]


def test_help():
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "train.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "torchrun" in proc.stdout
