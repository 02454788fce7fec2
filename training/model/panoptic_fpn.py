"""Panoptic FPN: backbone + FPN + RPN + box/mask heads + semantic head.

``forward`` branches on ``self.training`` once: losses when training, otherwise the raw
inference outputs (detections in resized-image pixels, 28x28 mask probabilities, stride-4
semantic logits): everything before mask pasting and fusion. ``training/predictor.py`` adds
pre-processing, pasting and fusion on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pfpn.training.config import BoxHeadConfig, MaskHeadConfig, ModelConfig, RPNConfig, SemanticHeadConfig
from pfpn.training.model.anchors import grid_anchors
from pfpn.training.model.backbone import ResNet
from pfpn.training.model.fpn import FPN
from pfpn.training.model.roi_align import boxes_to_rois, multilevel_roi_align
from pfpn.training.model.roi_heads import (BoxHead, MaskHead, box_head_loss, detections_single_image, mask_head_loss,
                                      mask_targets, sample_rois_single_image, select_class_masks)
from pfpn.training.model.rpn import RPNHead, proposals_single_image, rpn_loss
from pfpn.training.model.semantic_head import SemanticHead, semantic_loss, semantic_targets

ROI_STRIDES = [4, 8, 16, 32]  # box and mask RoIs are pooled from P2..P5


@dataclass
class Detections:
    """Raw detections of one image, in resized-image pixels (before rescaling and pasting)."""

    boxes: Tensor  # (N, 4) float32 x1, y1, x2, y2
    scores: Tensor  # (N,) float32, descending
    labels: Tensor  # (N,) int64 thing labels 0..T-1
    mask_probs: Tensor  # (N, 28, 28) float32 sigmoid probabilities of the detected class


@dataclass
class RawOutputs:
    detections: list[Detections]  # per image
    semantic_logits: Tensor  # (B, num_stuff + 1, H_pad / 4, W_pad / 4)


class RoIHead(nn.Module):
    """Container holding the box and mask heads (keeps the published parameter names)."""

    def __init__(self, *, bbox_head: BoxHead, mask_head: MaskHead) -> None:
        super().__init__()
        self.bbox_head = bbox_head
        self.mask_head = mask_head


class PanopticFPN(nn.Module):
    def __init__(self, *, backbone: ResNet, neck: FPN, rpn_head: RPNHead, roi_head: RoIHead,
                 semantic_head: SemanticHead, num_thing_classes: int, num_stuff_classes: int,
                 rpn_config: RPNConfig, box_config: BoxHeadConfig, mask_config: MaskHeadConfig,
                 semantic_config: SemanticHeadConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.semantic_head = semantic_head
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_stuff_classes
        self.rpn_config = rpn_config
        self.box_config = box_config
        self.mask_config = mask_config
        self.semantic_config = semantic_config
        self.generator: torch.Generator | None = None  # sampling RNG while training

    # ------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor] | RawOutputs:
        """images: (B, 3, H_pad, W_pad) normalised, zero-padded; image_sizes: (h, w) of each
        resized image before padding; targets (training): per image ``gt_boxes`` (G, 4),
        ``gt_labels`` (G,), ``gt_masks`` (G, h, w) uint8, ``gt_semantic_seg`` (H_pad, W_pad) int
        contiguous labels with 255 = void/padding."""
        feats = self.neck(self.backbone(images))
        if self.training:
            if targets is None:
                raise ValueError("training forward needs targets")
            return self._losses(feats, image_sizes, targets)
        return self._inference(feats, image_sizes)

    # ------------------------------------------------------------------------------------------
    def anchors(self, feats: list[Tensor]) -> list[Tensor]:
        cfg = self.rpn_config
        return [grid_anchors(tuple(f.shape[-2:]), s, cfg.anchor_scale, cfg.anchor_ratios, device=f.device)
                for f, s in zip(feats, cfg.strides)]

    def _proposals(self, feats: list[Tensor], image_sizes: list[tuple[int, int]], objectness: list[Tensor],
                   deltas: list[Tensor], *, pre_nms_top_n: int, post_nms_top_n: int) -> list[Tensor]:
        anchors = self.anchors(feats)
        out = []
        for i, size in enumerate(image_sizes):
            boxes, _ = proposals_single_image(
                [o[i] for o in objectness], [d[i] for d in deltas], anchors, image_size=size,
                pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                nms_iou_threshold=self.rpn_config.nms_iou_threshold, min_box_size=self.rpn_config.min_box_size)
            out.append(boxes)
        return out

    def _box_features(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        return multilevel_roi_align(feats[:4], rois, output_size=self.box_config.roi_size, strides=ROI_STRIDES,
                                    finest_scale=self.box_config.finest_scale)

    def _mask_features(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        return multilevel_roi_align(feats[:4], rois, output_size=self.mask_config.roi_size, strides=ROI_STRIDES,
                                    finest_scale=self.box_config.finest_scale)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _inference(self, feats: list[Tensor], image_sizes: list[tuple[int, int]]) -> RawOutputs:
        cfg = self.rpn_config
        objectness, deltas = self.rpn_head(feats)
        proposals = self._proposals(feats, image_sizes, objectness, deltas, pre_nms_top_n=cfg.test_proposals.pre_nms_top_n,
                                    post_nms_top_n=cfg.test_proposals.post_nms_top_n)
        rois = boxes_to_rois(proposals).to(feats[0])
        class_logits, box_deltas = self.roi_head.bbox_head(self._box_features(feats, rois))
        counts = [p.shape[0] for p in proposals]
        detections = []
        for i, (logits_i, deltas_i, props_i) in enumerate(zip(class_logits.split(counts), box_deltas.split(counts),
                                                               proposals)):
            boxes, scores, labels = detections_single_image(
                logits_i, deltas_i, props_i, image_size=image_sizes[i], box_stds=self.box_config.box_stds,
                score_threshold=self.box_config.score_threshold,
                nms_iou_threshold=self.box_config.nms_iou_threshold,
                max_detections=self.box_config.max_detections)
            detections.append(Detections(boxes, scores, labels, boxes.new_zeros(0, 2 * self.mask_config.roi_size, 2 * self.mask_config.roi_size)))
        mask_rois = boxes_to_rois([d.boxes for d in detections]).to(feats[0])
        if mask_rois.shape[0] > 0:
            mask_logits = self.roi_head.mask_head(self._mask_features(feats, mask_rois))
            all_labels = torch.cat([d.labels for d in detections])
            probs = select_class_masks(mask_logits, all_labels).split([d.boxes.shape[0] for d in detections])
            for d, p in zip(detections, probs):
                d.mask_probs = p
        semantic_logits = self.semantic_head(feats[:4])
        return RawOutputs(detections, semantic_logits)

    # ------------------------------------------------------------------------------------------
    def _losses(self, feats: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        rpn_cfg, box_cfg = self.rpn_config, self.box_config
        gen = self.generator
        objectness, deltas = self.rpn_head(feats)
        rpn_targets, box_targets = rpn_cfg.targets, box_cfg.targets
        losses = rpn_loss(objectness, deltas, self.anchors(feats), [t["gt_boxes"] for t in targets],
                          pos_iou_threshold=rpn_targets.pos_iou_threshold,
                          neg_iou_threshold=rpn_targets.neg_iou_threshold, min_pos_iou=rpn_targets.min_pos_iou,
                          num_samples=rpn_targets.num_samples, positive_fraction=rpn_targets.positive_fraction,
                          generator=gen)
        losses["loss_rpn_cls"] = losses["loss_rpn_cls"] * rpn_targets.loss_cls_weight
        losses["loss_rpn_box"] = losses["loss_rpn_box"] * rpn_targets.loss_box_weight
        with torch.no_grad():
            proposals = self._proposals(feats, image_sizes, [o.detach() for o in objectness],
                                        [d.detach() for d in deltas], pre_nms_top_n=rpn_cfg.train_proposals.pre_nms_top_n,
                                        post_nms_top_n=rpn_cfg.train_proposals.post_nms_top_n)
        samples = [sample_rois_single_image(p, t["gt_boxes"], t["gt_labels"], num_classes=self.num_thing_classes,
                                            pos_iou_threshold=box_targets.pos_iou_threshold,
                                            neg_iou_threshold=box_targets.neg_iou_threshold,
                                            min_pos_iou=box_targets.min_pos_iou,
                                            num_samples=box_targets.num_samples,
                                            positive_fraction=box_targets.positive_fraction, generator=gen)
                   for p, t in zip(proposals, targets)]
        rois = boxes_to_rois([s["rois"] for s in samples]).to(feats[0])
        labels = torch.cat([s["labels"] for s in samples])
        class_logits, box_deltas = self.roi_head.bbox_head(self._box_features(feats, rois))
        # positives come first within each image; gather them in batch order
        pos_mask = labels < self.num_thing_classes
        matched = torch.cat([t["gt_boxes"][s["gt_index"][: int(s["num_pos"])]] for s, t in zip(samples, targets)])
        box_losses = box_head_loss(class_logits, box_deltas, rois[:, 1:], labels, matched, box_stds=box_cfg.box_stds)
        losses["loss_cls"] = box_losses["loss_cls"] * box_targets.loss_cls_weight
        losses["loss_box"] = box_losses["loss_box"] * box_targets.loss_box_weight

        pos_rois = rois[pos_mask]
        mask_logits = self.roi_head.mask_head(self._mask_features(feats, pos_rois))
        mask_size = mask_logits.shape[-1]
        tgts = []
        for s, t in zip(samples, targets):
            n_pos = int(s["num_pos"])
            tgts.append(mask_targets(s["rois"][:n_pos], t["gt_masks"], s["gt_index"][:n_pos], mask_size))
        losses["loss_mask"] = mask_head_loss(mask_logits, labels[pos_mask], torch.cat(tgts)) * self.mask_config.loss_weight

        sem_logits = self.semantic_head(feats[:4])
        gt_sem = torch.stack([t["gt_semantic_seg"] for t in targets])
        sem_targets = semantic_targets(gt_sem, num_thing_classes=self.num_thing_classes,
                                       num_stuff_classes=self.num_stuff_classes,
                                       ignore_index=self.semantic_config.ignore_index)
        losses["loss_semantic"] = semantic_loss(sem_logits, sem_targets,
                                                ignore_index=self.semantic_config.ignore_index) \
            * self.semantic_config.loss_weight
        return losses


def build_model(config: ModelConfig) -> PanopticFPN:
    """Compose the Panoptic FPN described by ``config`` (randomly initialised)."""
    b = config.backbone
    backbone = ResNet(depth=b.depth, stem_channels=b.stem_channels, base_channels=b.base_channels,
                      frozen_stages=b.frozen_stages, norm_eval=b.norm_eval)
    c = config.fpn.out_channels
    neck = FPN(in_channels=backbone.out_channels, out_channels=c)
    rpn_head = RPNHead(in_channels=c, feat_channels=config.rpn.feat_channels,
                       num_anchors=len(config.rpn.anchor_ratios))
    roi_head = RoIHead(
        bbox_head=BoxHead(in_channels=c, roi_size=config.box_head.roi_size, fc_channels=config.box_head.fc_channels,
                          num_classes=config.num_thing_classes),
        mask_head=MaskHead(in_channels=c, conv_channels=config.mask_head.conv_channels,
                           num_convs=config.mask_head.num_convs, num_classes=config.num_thing_classes))
    semantic_head = SemanticHead(in_channels=c, inner_channels=config.semantic_head.inner_channels,
                                 num_groups=config.semantic_head.num_groups,
                                 num_stuff_classes=config.num_stuff_classes)
    return PanopticFPN(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                       semantic_head=semantic_head, num_thing_classes=config.num_thing_classes,
                       num_stuff_classes=config.num_stuff_classes, rpn_config=config.rpn,
                       box_config=config.box_head, mask_config=config.mask_head,
                       semantic_config=config.semantic_head)


def rebuild_with_config(model: PanopticFPN, config: ModelConfig) -> PanopticFPN:
    """The same weights in a model built from ``config`` (e.g. other inference thresholds; the
    architecture must be the same), in eval mode."""
    rebuilt = build_model(config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.to(next(model.parameters()).device).eval()
