"""Train Panoptic FPN on a COCO-panoptic-layout dataset.

    python training/train.py --config tiny_synthetic --data-root data/synthetic --work-dir work_dirs/tiny
    torchrun --nproc_per_node 2 training/train.py ...      # DDP (gloo on CPU, nccl on GPU)
    python training/train.py ... --resume                  # continue from WORK_DIR/latest.pt

Everything random is derived from (seed, epoch/iteration, rank), so ``--resume`` continues
exactly: same data order, augmentation, sampling, iteration, learning rate and optimizer state.
Checkpoints are written atomically to WORK_DIR/latest.pt every --checkpoint-every iterations
and to WORK_DIR/final.pt at the end; losses go to WORK_DIR/log.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path


import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pfpn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pfpn.training.config import PRESETS, TrainConfig
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.data.collate import collate_train
from pfpn.training.data.transforms import TrainTransform
from pfpn.training.model.panoptic_fpn import PanopticFPN, build_model
from pfpn.training.progress import progress_line
from pfpn.training.schedule import learning_rate


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def batch_indices(iteration: int, *, num_images: int, batch_size: int, seed: int, dist_info: DistInfo) -> list[int]:
    """The dataset indices this process trains on at ``iteration`` (global batch split by rank)."""
    per_epoch = num_images // batch_size
    epoch, j = divmod(iteration, per_epoch)
    perm = epoch_permutation(num_images, seed, epoch)
    global_batch = perm[j * batch_size:(j + 1) * batch_size]
    return [int(i) for i in global_batch[dist_info.rank::dist_info.world_size]]


def build_config(preset: str, dataset: CocoPanopticDataset, *, batch_size: int | None = None,
                 lr: float | None = None, epochs: int | None = None, seed: int = 0) -> TrainConfig:
    """The preset for the dataset's classes, with the given solver settings (None keeps the preset's)."""
    config = PRESETS[preset]()
    cats = dataset.categories
    model = dataclasses.replace(config.model, num_thing_classes=cats.num_things, num_stuff_classes=cats.num_stuff)
    solver = config.solver
    overrides = {k: v for k, v in (("batch_size", batch_size), ("base_lr", lr), ("max_epochs", epochs))
                 if v is not None}
    if epochs is not None and epochs != config.solver.max_epochs:
        # keep the steps at the same fractions of the schedule
        f = epochs / config.solver.max_epochs
        overrides["lr_step_epochs"] = tuple(max(1, round(s * f)) for s in config.solver.lr_step_epochs)
    solver = dataclasses.replace(solver, **overrides)
    return dataclasses.replace(config, model=model, solver=solver, seed=seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(PRESETS), default="tiny_synthetic",
                   help="model/schedule preset (default: tiny_synthetic, the small CPU config)")
    p.add_argument("--data-root", required=True, help="dataset root in COCO panoptic layout "
                   "(annotations/panoptic_train2017.json, annotations/panoptic_train2017/, train2017/)")
    p.add_argument("--work-dir", required=True, help="where checkpoints and logs are written")
    p.add_argument("--epochs", type=int, help="override the preset's number of epochs (lr steps scale with it)")
    p.add_argument("--max-iters", type=int, help="stop after this many iterations (e.g. for smoke tests); "
                   "the schedule still follows --epochs")
    p.add_argument("--batch-size", type=int, help="images per iteration summed over all processes")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and sampling")
    p.add_argument("--checkpoint-every", type=int, default=200, help="write WORK_DIR/latest.pt every N iterations")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help="continue from CKPT (default WORK_DIR/latest.pt); the checkpoint's config is used")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: cores / processes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (DDP uses cuda:LOCAL_RANK)")
    p.add_argument("--log-every", type=int, default=10, help="log losses every N iterations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--progress-lines", action="store_true",
                   help="print a '[progress] it/total loss=...' line every iteration (what benchmarks/main_job.py "
                        "shows live; implies --no-progress)")
    return p.parse_args(argv)


class TrainingError(RuntimeError):
    """A run that cannot start: no dataset, nothing to resume from, a batch that does not split."""


def train(*, data_root: str | Path, work_dir: str | Path, config: str = "tiny_synthetic", epochs: int | None = None,
          max_iters: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
          checkpoint_every: int = 200, resume: str | None = None, threads: int | None = None, device: str = "cpu",
          log_every: int = 10, no_progress: bool = False, progress_lines: bool = False) -> Path:
    """Train (the command line's flags as keywords, same defaults; ``resume=""`` is WORK_DIR/latest.pt).
    -> the last checkpoint written (final.pt at the end of the schedule, else latest.pt).
    Raises TrainingError when the run cannot start."""
    dist_info = init_distributed(device)
    torch_device = torch.device(f"cuda:{dist_info.local_rank}" if device.startswith("cuda") else "cpu")
    threads = threads or max(1, (os.cpu_count() or 1) // dist_info.world_size)
    torch.set_num_threads(threads)
    work_dir = Path(work_dir)

    try:
        dataset = CocoPanopticDataset(data_root, "train")
    except (FileNotFoundError, ValueError) as e:
        raise TrainingError(str(e)) from None

    start_iter = 0
    resume_ckpt = None
    if resume is not None:
        path = Path(resume) if resume else work_dir / "latest.pt"
        try:
            resume_ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise TrainingError(f"cannot resume: {e}") from None
        if resume_ckpt.source != "native" or not resume_ckpt.schedule:
            raise TrainingError(f"cannot resume from {path}: it holds no training state")
        train_config = resume_ckpt.config
        start_iter = int(resume_ckpt.schedule["iteration"])
    else:
        train_config = build_config(config, dataset, batch_size=batch_size, lr=lr, epochs=epochs, seed=seed)

    solver = train_config.solver
    if solver.batch_size % dist_info.world_size:
        raise TrainingError(f"batch size {solver.batch_size} is not divisible by {dist_info.world_size} processes")
    iters_per_epoch = len(dataset) // solver.batch_size
    if iters_per_epoch == 0:
        raise TrainingError(f"{len(dataset)} training images is fewer than one batch of {solver.batch_size}")
    total_iters = iters_per_epoch * solver.max_epochs
    stop_iter = min(total_iters, max_iters) if max_iters is not None else total_iters

    torch.manual_seed(train_config.seed)
    model: PanopticFPN = build_model(train_config.model)
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.state_dict)
    model.to(torch_device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=solver.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    if resume_ckpt is not None and resume_ckpt.optimizer is not None:
        optimizer.load_state_dict(resume_ckpt.optimizer)
    net: torch.nn.Module = model
    if dist_info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)

    transform = TrainTransform(max_long=train_config.model.input.max_long_side,
                               short_side_range=train_config.data.train_short_side_range,
                               flip_prob=train_config.data.flip_prob)
    log_path = work_dir / "log.jsonl"
    if dist_info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(dataclasses.asdict(train_config), indent=2))
        print(f"training {config if resume_ckpt is None else 'resumed'}: {len(dataset)} images, "
              f"{iters_per_epoch} it/epoch, iterations {start_iter}..{stop_iter} of {total_iters}, "
              f"{dist_info.world_size} process(es) x {threads} thread(s)", flush=True)
    bar = tqdm(total=stop_iter, initial=start_iter,
               disable=not dist_info.is_main or no_progress or progress_lines,
               dynamic_ncols=True, desc="train")

    def save(name: str, iteration: int) -> None:
        if dist_info.is_main:
            save_checkpoint(work_dir / name, model=model, config=train_config, categories=dataset.categories,
                            optimizer=optimizer, schedule={"iteration": iteration, "total_iters": total_iters,
                                                           "iters_per_epoch": iters_per_epoch})

    t_start = time.time()
    for it in range(start_iter, stop_iter):
        epoch = it // iters_per_epoch
        step_lr = learning_rate(solver, it, iters_per_epoch)
        for g in optimizer.param_groups:
            g["lr"] = step_lr
        samples = []
        for idx in batch_indices(it, num_images=len(dataset), batch_size=solver.batch_size, seed=train_config.seed,
                                 dist_info=dist_info):
            rng = np.random.default_rng([train_config.seed, epoch, idx])
            samples.append(transform(dataset[idx], rng))
        images, sizes, targets = collate_train(samples, train_config.model.input)
        images = images.to(torch_device)
        targets = [{k: v.to(torch_device) for k, v in t.items()} for t in targets]
        model.generator = torch.Generator(device=torch_device).manual_seed(
            (train_config.seed * 1_000_003 + it) * 64 + dist_info.rank)
        losses = net(images, sizes, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {it}: {({k: float(v) for k, v in losses.items()})}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if solver.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, solver.clip_grad_norm)
        optimizer.step()

        done = it + 1
        if done % log_every == 0 or done == stop_iter:
            values = torch.stack([v.detach() for v in losses.values()])
            if dist_info.world_size > 1:
                dist.all_reduce(values)
                values /= dist_info.world_size
            record = {"iter": done, "epoch": epoch, "lr": step_lr, "loss": float(values.sum()),
                      **{k: float(v) for k, v in zip(losses, values)}, "time": time.time() - t_start}
            if dist_info.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{step_lr:.4f}")
                if no_progress or progress_lines:
                    print(json.dumps(record), flush=True)
        bar.update(1)
        if progress_lines and dist_info.is_main:
            print(progress_line(done, stop_iter, loss=float(loss.detach())), flush=True)
        if done % checkpoint_every == 0 and done < stop_iter:
            save("latest.pt", done)
    bar.close()
    save("latest.pt", stop_iter)
    if stop_iter == total_iters:
        save("final.pt", stop_iter)
    if dist_info.is_main:
        print(f"done: {stop_iter - start_iter} iterations in {time.time() - t_start:.1f} s; "
              f"checkpoint {work_dir / ('final.pt' if stop_iter == total_iters else 'latest.pt')}", flush=True)
    if dist_info.world_size > 1:
        dist.destroy_process_group()
    return work_dir / ("final.pt" if stop_iter == total_iters else "latest.pt")


def main(argv: list[str] | None = None) -> int:
    try:
        train(**vars(parse_args(argv)))
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
