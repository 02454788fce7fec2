"""The GPU check ``amp_training_step`` (benchmarks/gpu_check.py): mixed-precision (fp16 autocast +
GradScaler) training steps of the small model on CUDA; the same steps run on the CPU in tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pfpn.benchmarks.gpu_check_common import CheckContext, check_result, require_torch, require_torch_cuda


# ----------------------------------------------------------------------------------------------
# 5. mixed-precision training step


def training_batch(work_dir: Path, device: str, count: int = 2) -> tuple[Any, list, list, Any]:
    """A training batch of the small config from a synthetic dataset written under work_dir ->
    (images, sizes, targets on device, TrainConfig)."""
    from pfpn.training.config import tiny_synthetic
    from pfpn.training.data.coco_panoptic import CocoPanopticDataset
    from pfpn.training.data.collate import collate_train
    from pfpn.training.data.synthetic import generate_synthetic_panoptic
    from pfpn.training.data.transforms import TrainTransform

    root = work_dir / "synthetic_train"
    if not (root / "annotations" / "panoptic_train2017.json").is_file():
        generate_synthetic_panoptic(root, num_train=count, num_val=0, seed=7, progress=False)
    dataset = CocoPanopticDataset(root, "train")
    config = tiny_synthetic(dataset.categories.num_things, dataset.categories.num_stuff)
    transform = TrainTransform(max_long=config.model.input.max_long_side,
                               short_side_range=config.data.train_short_side_range, flip_prob=config.data.flip_prob)
    samples = [transform(dataset[i], np.random.default_rng([7, i])) for i in range(count)]
    images, sizes, targets = collate_train(samples, config.model.input)
    return images.to(device), sizes, [{k: v.to(device) for k, v in t.items()} for t in targets], config


def training_steps(work_dir: Path, device: str, *, amp: bool, max_steps: int = 4) -> dict:
    """Up to ``max_steps`` SGD steps of the small model on one batch (with fp16 autocast and a
    GradScaler when ``amp``), stopping after the first step the scaler did not skip ->
    {"losses", "loss_finite", "steps", "skipped_steps", "weights_changed", "max_weight_change", ...}."""
    torch = require_torch()
    from pfpn.training.model.panoptic_fpn import build_model

    images, sizes, targets, config = training_batch(work_dir, device)
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    model.generator = torch.Generator(device=device).manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=config.solver.base_lr, momentum=config.solver.momentum,
                                weight_decay=config.solver.weight_decay)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    losses_seen, skipped, parts = [], 0, {}
    finite = True
    steps = 0
    for _ in range(max_steps):
        steps += 1
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            losses = model(images, sizes, targets)
        loss = sum(losses.values())
        parts = {k: float(v.detach().float()) for k, v in losses.items()}
        losses_seen.append(float(loss.detach().float()))
        if not torch.isfinite(loss.detach()).item():
            finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.solver.clip_grad_norm)
        scale = scaler.get_scale() if amp else 1.0
        scaler.step(optimizer)
        scaler.update()
        if amp and scaler.get_scale() < scale:  # inf/nan gradients: the scaler skipped this step
            skipped += 1
            continue
        break
    change = max(float((p.detach() - b).abs().max()) for p, b in zip(params, before))
    return {"device": device, "amp": amp, "losses": losses_seen, "loss_parts": parts, "loss_finite": finite,
            "steps": steps, "skipped_steps": skipped, "weights_changed": change > 0, "max_weight_change": change,
            "grad_scale": float(scaler.get_scale()) if amp else None}


def check_amp_training_step(ctx: CheckContext) -> dict:
    require_torch_cuda()
    r = training_steps(ctx.work_dir, "cuda", amp=True)
    ok = r["loss_finite"] and r["weights_changed"]
    summary = (f"loss {r['losses'][-1]:.4f} ({'finite' if r['loss_finite'] else 'NOT finite'}), {r['steps']} step(s), "
               f"{r['skipped_steps']} skipped by the scaler, max weight change {r['max_weight_change']:.2e}")
    reason = "" if ok else ("the loss is not finite" if not r["loss_finite"] else "no weight changed (every step "
                                                                                  "skipped by the GradScaler?)")
    return check_result("pass" if ok else "fail", summary, reason=reason, **r)
