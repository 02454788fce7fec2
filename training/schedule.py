"""Learning-rate schedule (REFERENCE §10): linear warm-up from ``warmup_ratio`` over ``warmup_iters``
iterations, then x``gamma`` at each step epoch."""
from __future__ import annotations

from pfpn.training.config import SolverConfig


def learning_rate(solver: SolverConfig, iteration: int, iters_per_epoch: int) -> float:
    """lr for 0-based ``iteration``."""
    epoch = iteration // max(iters_per_epoch, 1)
    lr = solver.base_lr * solver.gamma ** sum(epoch >= s for s in solver.lr_step_epochs)
    if iteration < solver.warmup_iters:
        k = solver.warmup_ratio + (1 - solver.warmup_ratio) * iteration / solver.warmup_iters
        lr *= k
    return lr
