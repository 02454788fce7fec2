"""Checkpoints: our training format and the published (mmdetection) format.

Our format (``FORMAT``) is one dict saved with ``torch.save``::

    {"format": "panoptic-fpn-deploy/1",
     "config": TrainConfig as a dict, "categories": [{"id", "name", "isthing"}, ...],
     "model": state_dict, "optimizer": state_dict | None,
     "schedule": {"iteration": int, "epoch": int, ...}, "rng": {...} | None}

The published format is ``{"state_dict": ..., "meta": ...}`` whose tensor names are exactly our
module names (REFERENCE §11; the listing is ``tests/fixtures/mmdet_panoptic_fpn_r50_state_dict.txt``). Everything is
loaded with ``torch.load(weights_only=True)``; any missing, unexpected or mis-shaped tensor is
an error naming the tensors. Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pfpn.runtime.categories import coco_panoptic_categories
from pfpn.runtime.files import atomic_output
from pfpn.runtime.categories import CategoryTable
from pfpn.training.config import (BackboneConfig, ModelConfig, TrainConfig, to_dict, train_config_from_dict)
from pfpn.training.model.panoptic_fpn import PanopticFPN, build_model

FORMAT = "panoptic-fpn-deploy/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


@dataclass
class Checkpoint:
    config: TrainConfig
    categories: CategoryTable
    state_dict: dict[str, torch.Tensor]
    optimizer: dict | None = None
    schedule: dict | None = None
    rng: dict | None = None
    source: str = "native"  # "native" or "mmdet"


# ----------------------------------------------------------------------------------------------
# writing

def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file in the same folder and a rename: a crash never
    leaves a half-written checkpoint under ``path``."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, config: TrainConfig, categories: CategoryTable,
                    optimizer: torch.optim.Optimizer | None = None, schedule: dict | None = None,
                    rng: dict | None = None) -> None:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    atomic_torch_save({
        "format": FORMAT,
        "config": to_dict(config),
        "categories": categories.to_json(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedule": schedule,
        "rng": rng,
    }, path)


def save_mmdet_checkpoint(path: str | os.PathLike, model: nn.Module, categories: CategoryTable) -> None:
    """Write the model in the published layout ``{"state_dict", "meta"}`` (what the reference
    implementation loads)."""
    model = getattr(model, "module", model)
    names = tuple(c.name for c in categories.by_label)
    atomic_torch_save({"state_dict": model.state_dict(), "meta": {"CLASSES": names}}, path)


# ----------------------------------------------------------------------------------------------
# reading

def _torch_load(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncated files, disallowed globals
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from e


def _check_state_dict(state_dict: Mapping[str, Any], model: nn.Module, path: str | os.PathLike) -> None:
    expected = model.state_dict()
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: the state dict is not a mapping of names to tensors")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
            problems.append(f"{len(names)} {what} tensor(s): {shown}")
    if problems:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(problems))


def infer_mmdet_model_config(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike = "<state_dict>"
                             ) -> ModelConfig:
    """The published model's config, read off its tensors: ResNet depth (blocks in layer3),
    thing classes (fc_cls rows - 1) and stuff classes (semantic logits - 1); the rest is the reference's (REFERENCE §3)."""
    needed = ("roi_head.bbox_head.fc_cls.weight", "semantic_head.conv_logits.weight", "backbone.conv1.weight")
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise CheckpointError(f"{path}: not a Panoptic FPN state dict (missing {', '.join(absent)})")
    blocks3 = {int(k.split(".")[2]) for k in state_dict if k.startswith("backbone.layer3.")}
    blocks_to_depth = {6: 50, 23: 101}
    layer3 = max(blocks3) + 1 if blocks3 else 0
    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    if not bottleneck:
        blocks_to_depth = {2: 18, 6: 34}
    if layer3 not in blocks_to_depth:
        raise CheckpointError(f"{path}: cannot tell the ResNet depth ({layer3} blocks in layer3)")
    num_things = state_dict["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
    num_stuff = state_dict["semantic_head.conv_logits.weight"].shape[0] - 1
    return ModelConfig(num_thing_classes=num_things, num_stuff_classes=num_stuff,
                       backbone=BackboneConfig(depth=blocks_to_depth[layer3]))


def load_checkpoint(path: str | os.PathLike, *, categories: CategoryTable | None = None) -> Checkpoint:
    """Read our format or the published one and check it against the model it describes.

    ``categories`` is required for published checkpoints whose classes are not COCO's 80 + 53
    (they carry names but no category ids).
    """
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        ckpt = _native(obj, path)
    elif "state_dict" in obj:
        ckpt = _mmdet(obj, path, categories)
    elif "format" in obj:
        raise CheckpointError(f"{path}: unsupported checkpoint format {obj['format']!r} (this code reads {FORMAT!r})")
    else:
        keys = ", ".join(sorted(map(str, obj))[:10])
        raise CheckpointError(f"{path}: not a Panoptic FPN checkpoint (top-level keys: {keys}); expected our "
                              f"format ('format': {FORMAT!r}) or the published one ('state_dict', 'meta')")
    with torch.device("meta"):  # shapes only: no memory, no initialisation (the caller builds the real one)
        reference = build_model(ckpt.config.model)
    _check_state_dict(ckpt.state_dict, reference, path)
    return ckpt


def _native(obj: dict, path: str | os.PathLike) -> Checkpoint:
    missing = [k for k in ("config", "categories", "model") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        config = train_config_from_dict(obj["config"])
        categories = CategoryTable(obj["categories"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: invalid config or categories: {e}") from e
    if (categories.num_things, categories.num_stuff) != (config.model.num_thing_classes,
                                                         config.model.num_stuff_classes):
        raise CheckpointError(f"{path}: {categories.num_things}+{categories.num_stuff} categories but the model has "
                              f"{config.model.num_thing_classes}+{config.model.num_stuff_classes} classes")
    return Checkpoint(config=config, categories=categories, state_dict=obj["model"], optimizer=obj.get("optimizer"),
                      schedule=obj.get("schedule"), rng=obj.get("rng"), source="native")


def _mmdet(obj: dict, path: str | os.PathLike, categories: CategoryTable | None) -> Checkpoint:
    state_dict = obj["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, not a mapping")
    model_config = infer_mmdet_model_config(state_dict, path)
    if categories is None:
        if (model_config.num_thing_classes, model_config.num_stuff_classes) != (80, 53):
            raise CheckpointError(f"{path}: {model_config.num_thing_classes} thing + {model_config.num_stuff_classes} "
                                  "stuff classes are not COCO's; pass the dataset's categories")
        categories = CategoryTable(coco_panoptic_categories())
    if (categories.num_things, categories.num_stuff) != (model_config.num_thing_classes,
                                                         model_config.num_stuff_classes):
        raise CheckpointError(f"{path}: the categories ({categories.num_things}+{categories.num_stuff}) do not fit the "
                              f"model ({model_config.num_thing_classes}+{model_config.num_stuff_classes})")
    return Checkpoint(config=replace(TrainConfig(), model=model_config), categories=categories,
                      state_dict=dict(state_dict), source="mmdet")


def load_model(path: str | os.PathLike, *, categories: CategoryTable | None = None,
               device: str | torch.device = "cpu") -> tuple[PanopticFPN, Checkpoint]:
    """Build the model a checkpoint describes and load its weights (eval mode)."""
    ckpt = load_checkpoint(path, categories=categories)
    model = build_model(ckpt.config.model)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device).eval(), ckpt


