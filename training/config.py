"""Typed configuration: one dataclass per component, composed by ``ModelConfig``.

The defaults are the published R-50 1x model (``runtime/REFERENCE.md``); the presets at the
bottom change only what differs. Configs round-trip through plain dicts so checkpoints can
carry them (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from pfpn.runtime.contract import FusionConfig  # the fusion's one parameter type, shared with the runtime


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 18, 34, 50 or 101
    # Output channels of the stem and base width of stage 1 (64 in torchvision's ResNets;
    # the small CPU config halves it).
    stem_channels: int = 64
    base_channels: int = 64
    # Stem (0) and stages 1..k are frozen: weights and BatchNorm (REFERENCE §3.1: stem and stage 1).
    frozen_stages: int = 1
    # BatchNorm statistics frozen (eval mode) even while training (mmdet ``norm_eval``).
    norm_eval: bool = True


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256


@dataclass(frozen=True)
class SamplingConfig:
    """A head's training targets (mmdet's MaxIoUAssigner + RandomSampler) and loss weights:
    max-IoU assignment with these thresholds, then ``num_samples`` of which at most
    ``positive_fraction`` positive."""
    pos_iou_threshold: float
    neg_iou_threshold: float
    min_pos_iou: float
    num_samples: int
    positive_fraction: float
    loss_cls_weight: float = 1.0
    loss_box_weight: float = 1.0


@dataclass(frozen=True)
class ProposalConfig:
    """How many RPN proposals survive: the top ``pre_nms_top_n`` scores per level before NMS,
    ``post_nms_top_n`` across levels after it (REFERENCE §3.6)."""
    pre_nms_top_n: int
    post_nms_top_n: int


@dataclass(frozen=True)
class RPNConfig:
    feat_channels: int = 256
    anchor_scale: float = 8.0
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    test_proposals: ProposalConfig = ProposalConfig(pre_nms_top_n=1000, post_nms_top_n=1000)
    train_proposals: ProposalConfig = ProposalConfig(pre_nms_top_n=2000, post_nms_top_n=1000)
    nms_iou_threshold: float = 0.7
    # Proposals with width or height <= this are dropped (0: drop only empty boxes).
    min_box_size: float = 0.0
    targets: SamplingConfig = SamplingConfig(pos_iou_threshold=0.7, neg_iou_threshold=0.3, min_pos_iou=0.3,
                                             num_samples=256, positive_fraction=0.5)


@dataclass(frozen=True)
class BoxHeadConfig:
    roi_size: int = 7
    fc_channels: int = 1024
    # Level rule: floor(log2(sqrt(w*h) / finest_scale + 1e-6)) clamped to the RoI levels.
    finest_scale: float = 56.0
    box_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    # Inference: (proposal, class) pairs with softmax score above this are candidates.
    score_threshold: float = 0.6
    nms_iou_threshold: float = 0.5
    max_detections: int = 100
    targets: SamplingConfig = SamplingConfig(pos_iou_threshold=0.5, neg_iou_threshold=0.5, min_pos_iou=0.5,
                                             num_samples=512, positive_fraction=0.25)


@dataclass(frozen=True)
class MaskHeadConfig:
    roi_size: int = 14
    num_convs: int = 4
    conv_channels: int = 256
    # Probabilities >= this are foreground after pasting (mmdet ``mask_thr_binary``).
    mask_threshold: float = 0.5
    loss_weight: float = 1.0


@dataclass(frozen=True)
class SemanticHeadConfig:
    inner_channels: int = 128
    num_groups: int = 32
    loss_weight: float = 0.5
    ignore_index: int = 255


@dataclass(frozen=True)
class InputConfig:
    max_long_side: int = 1333
    max_short_side: int = 800
    size_divisor: int = 32
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)  # RGB


@dataclass(frozen=True)
class ModelConfig:
    num_thing_classes: int = 80
    num_stuff_classes: int = 53
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    semantic_head: SemanticHeadConfig = field(default_factory=SemanticHeadConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    input: InputConfig = field(default_factory=InputConfig)

    @property
    def num_classes(self) -> int:
        return self.num_thing_classes + self.num_stuff_classes

    @property
    def void_label(self) -> int:
        return self.num_classes


@dataclass(frozen=True)
class SolverConfig:
    base_lr: float = 0.02
    batch_size: int = 16  # images per iteration, summed over all processes
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    max_epochs: int = 12
    lr_step_epochs: tuple[int, ...] = (8, 11)
    gamma: float = 0.1
    # Gradient-norm clipping (0: off). Off in the published schedules.
    clip_grad_norm: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    # Training short side drawn uniformly from this inclusive range (equal ends: fixed scale).
    train_short_side_range: tuple[int, int] = (800, 800)
    flip_prob: float = 0.5
    num_workers: int = 0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0


# --------------------------------------------------------------------------------------
# deployment settings: the inference thresholds a user may change at export

def deployment_settings(config: ModelConfig) -> dict[str, float | int]:
    """The inference thresholds of ``config`` by the names of ``runtime.contract.DEPLOYMENT_SETTINGS``."""
    return {"score_threshold": config.box_head.score_threshold, "max_detections": config.box_head.max_detections,
            "mask_threshold": config.mask_head.mask_threshold,
            "mask_overlap_threshold": config.fusion.mask_overlap_threshold,
            "stuff_area_limit": config.fusion.stuff_area_limit}


def with_deployment_settings(config: ModelConfig, *, score_threshold: float | None = None,
                             max_detections: int | None = None, mask_threshold: float | None = None,
                             mask_overlap_threshold: float | None = None,
                             stuff_area_limit: int | None = None) -> ModelConfig:
    """``config`` with some inference thresholds replaced (None keeps the config's value).

    score_threshold: a (proposal, class) pair is a candidate when its softmax score is above it,
    0 <= t < 1; max_detections: detections kept after NMS, >= 1; mask_threshold: pasted mask
    probabilities >= it are foreground, 0 < t <= 1; mask_overlap_threshold: an instance is
    dropped when more than this fraction of it is already taken, 0 <= t <= 1;
    stuff_area_limit: stuff segments with fewer pixels become VOID, >= 0. Raises ValueError
    naming the setting for anything else.
    """
    def number(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name} must be a number, got {value!r}")
        if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
            raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                             f"got {value}")
        return float(value)

    def count(name: str, value, lo: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        return value

    box, mask, fusion = config.box_head, config.mask_head, config.fusion
    if score_threshold is not None:
        box = dataclasses.replace(box, score_threshold=number("score_threshold", score_threshold, 0.0, 1.0,
                                                              hi_open=True))
    if max_detections is not None:
        box = dataclasses.replace(box, max_detections=count("max_detections", max_detections, 1))
    if mask_threshold is not None:
        mask = dataclasses.replace(mask, mask_threshold=number("mask_threshold", mask_threshold, 0.0, 1.0,
                                                               lo_open=True))
    if mask_overlap_threshold is not None:
        fusion = dataclasses.replace(fusion, mask_overlap_threshold=number(
            "mask_overlap_threshold", mask_overlap_threshold, 0.0, 1.0))
    if stuff_area_limit is not None:
        fusion = dataclasses.replace(fusion, stuff_area_limit=count("stuff_area_limit", stuff_area_limit, 0))
    return dataclasses.replace(config, box_head=box, mask_head=mask, fusion=fusion)


# --------------------------------------------------------------------------------------
# dict round-trip (checkpoints store plain dicts)

def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def _from_dict(cls: type, data: dict) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"expected a dict for {cls.__name__}, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    data = nest_flat_keys(cls, data)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    kwargs = {}
    for name, value in data.items():
        sub = _DATACLASS_FIELDS.get((cls, name))
        if sub is not None:
            kwargs[name] = _from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_DATACLASS_FIELDS: dict[tuple[type, str], type] = {
    (ModelConfig, "backbone"): BackboneConfig,
    (ModelConfig, "fpn"): FPNConfig,
    (ModelConfig, "rpn"): RPNConfig,
    (ModelConfig, "box_head"): BoxHeadConfig,
    (ModelConfig, "mask_head"): MaskHeadConfig,
    (ModelConfig, "semantic_head"): SemanticHeadConfig,
    (ModelConfig, "fusion"): FusionConfig,
    (ModelConfig, "input"): InputConfig,
    (RPNConfig, "targets"): SamplingConfig,
    (RPNConfig, "test_proposals"): ProposalConfig,
    (RPNConfig, "train_proposals"): ProposalConfig,
    (BoxHeadConfig, "targets"): SamplingConfig,
    (TrainConfig, "model"): ModelConfig,
    (TrainConfig, "solver"): SolverConfig,
    (TrainConfig, "data"): DataConfig,
}


# Checkpoints written before the RPN / box-head settings were grouped carry them as flat keys:
# flat key -> (group field, key in the group).
FLAT_KEYS: dict[type, dict[str, tuple[str, str]]] = {
    RPNConfig: {**{f"{k}_{phase}": (f"{phase}_proposals", k) for phase in ("test", "train")
                   for k in ("pre_nms_top_n", "post_nms_top_n")},
                **{f.name: ("targets", f.name) for f in dataclasses.fields(SamplingConfig)}},
    BoxHeadConfig: {f.name: ("targets", f.name) for f in dataclasses.fields(SamplingConfig)},
}


def nest_flat_keys(cls: type, data: dict) -> dict:
    """``data`` with the old flat keys of :data:`FLAT_KEYS` moved into their groups (the group's
    defaults fill what an old checkpoint does not have)."""
    flat = {k: v for k, v in data.items() if k in FLAT_KEYS.get(cls, {})}
    if not flat:
        return data
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = {k: v for k, v in data.items() if k not in flat}
    for key, value in flat.items():
        group, name = FLAT_KEYS[cls][key]
        out.setdefault(group, dataclasses.asdict(defaults[group]))[name] = value
    return out


def model_config_from_dict(data: dict) -> ModelConfig:
    return _from_dict(ModelConfig, data)


def train_config_from_dict(data: dict) -> TrainConfig:
    return _from_dict(TrainConfig, data)


# --------------------------------------------------------------------------------------
# presets: the four published rows and the small CPU config

def r50_fpn_1x() -> TrainConfig:
    """Panoptic FPN R-50 1x (COCO panoptic PQ 40.2)."""
    return TrainConfig()


def r50_fpn_ms3x() -> TrainConfig:
    """R-50 ms-3x: short side drawn from 640..800, 36 epochs, steps at 24 and 33 (PQ 42.5)."""
    return TrainConfig(
        solver=SolverConfig(max_epochs=36, lr_step_epochs=(24, 33)),
        data=DataConfig(train_short_side_range=(640, 800)),
    )


def r101_fpn_1x() -> TrainConfig:
    """R-101 1x (PQ 42.2)."""
    return dataclasses.replace(r50_fpn_1x(), model=ModelConfig(backbone=BackboneConfig(depth=101)))


def r101_fpn_ms3x() -> TrainConfig:
    """R-101 ms-3x (PQ 44.1)."""
    return dataclasses.replace(r50_fpn_ms3x(), model=ModelConfig(backbone=BackboneConfig(depth=101)))


def tiny_synthetic(num_thing_classes: int = 4, num_stuff_classes: int = 3) -> TrainConfig:
    """A small model that trains from scratch on the synthetic dataset on a 2-core CPU.

    Departs from the reference (runtime/REFERENCE.md) on purpose (speed on a CPU, no pretrained weights available):
    half-width ResNet-18, 64-channel FPN and heads, BatchNorm statistics trained (from scratch
    there is no pretrained statistic to freeze), 256x192 inputs, lighter sampling and a short
    schedule. Inference rules (thresholds, NMS, fusion) are the reference's (REFERENCE §4-§5), except the stuff area limit,
    which is scaled with the image area (4096 px at 1333x800 ~ 190 px at 256x192).
    """
    model = ModelConfig(
        num_thing_classes=num_thing_classes,
        num_stuff_classes=num_stuff_classes,
        backbone=BackboneConfig(depth=18, stem_channels=32, base_channels=32, frozen_stages=-1, norm_eval=False),
        fpn=FPNConfig(out_channels=64),
        rpn=RPNConfig(feat_channels=64, train_proposals=ProposalConfig(pre_nms_top_n=1000, post_nms_top_n=500),
                      test_proposals=ProposalConfig(pre_nms_top_n=500, post_nms_top_n=300)),
        box_head=BoxHeadConfig(fc_channels=256, targets=dataclasses.replace(BoxHeadConfig().targets, num_samples=128)),
        mask_head=MaskHeadConfig(num_convs=2, conv_channels=64),
        semantic_head=SemanticHeadConfig(inner_channels=64, num_groups=16),
        fusion=FusionConfig(stuff_area_limit=192),
        input=InputConfig(max_long_side=256, max_short_side=192),
    )
    return TrainConfig(
        model=model,
        solver=SolverConfig(base_lr=0.02, batch_size=8, warmup_iters=100, max_epochs=6,
                            lr_step_epochs=(4, 5), clip_grad_norm=10.0),
        data=DataConfig(train_short_side_range=(192, 192), flip_prob=0.5),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "r50_fpn_1x": r50_fpn_1x,
    "r50_fpn_ms3x": r50_fpn_ms3x,
    "r101_fpn_1x": r101_fpn_1x,
    "r101_fpn_ms3x": r101_fpn_ms3x,
    "tiny_synthetic": tiny_synthetic,
}
