"""The traceable inference graph: the export contract (``runtime/contract.py``) around the
trained model's modules, with RPN proposals, box post-processing and the mask head written as
batched tensor code plus the two custom ops (``plugins/torch_ops.py``).

Differences from the PyTorch predictor (``training/``), all inherent to a fixed-shape graph:
per-level top-k uses TopK instead of a full sort, and NMS orders equal scores differently;
compare detections after matching boxes, not by index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pfpn.plugins.torch_ops  # noqa: F401  (registers torch.ops.pfpn.*)
from pfpn.training.config import ModelConfig
from pfpn.training.model.anchors import grid_anchors
from pfpn.training.model.box_ops import apply_deltas, clip_boxes
from pfpn.training.model.panoptic_fpn import PanopticFPN
from pfpn.training.preprocess import normalize_padded

_INVALID_SCORE = -1.0  # scores are probabilities; this marks padding / removed boxes
# Padding rows are pooled from this box: some RoIAlign implementations (OpenVINO's) return NaN
# for empty boxes, and padding must never produce NaN.
_UNIT_BOX = (0.0, 0.0, 1.0, 1.0)


def _where_valid(valid: Tensor, x: Tensor, fill) -> Tensor:
    """x where valid (broadcast over x's trailing dims), else ``fill`` (a scalar or a box).
    valid: (B, N) bool; x: (B, N, ...)."""
    mask = valid.view(*valid.shape, *([1] * (x.dim() - valid.dim())))
    if isinstance(fill, tuple):
        fill_t = x.new_tensor(fill)
    else:
        fill_t = torch.full_like(x, fill) if not isinstance(fill, Tensor) else fill
    return torch.where(mask, x, fill_t)


def _non_negative(index: Tensor) -> Tensor:
    """max(index, 0) for int64 indices, as a Where: clamp on int64 exports as an INT64 Clip, which
    TensorRT's ONNX parser does not list (Clip: FP32/FP16/BF16, onnx-tensorrt operators.md)."""
    return torch.where(index >= 0, index, 0)


class ExportablePanopticFPN(nn.Module):
    """forward(images uint8 [B, H, W, 3] BGR, image_sizes int64 [B, 2]) -> the contract outputs.

    ``mask_head_on_detections_only``: run the mask head on rows ``[0, max(num_detections))`` only
    (a data-dependent ``Range``) instead of all ``max_detections`` rows, zero-filling the rest. The
    outputs are the same; with few detections it saves most of the mask head (the small demo model
    spends half its ONNX Runtime time there otherwise). Off for TensorRT, whose plugins and
    optimisation profiles want static shapes.
    """

    def __init__(self, model: PanopticFPN, config: ModelConfig, *, mask_head_on_detections_only: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.mask_head_on_detections_only = mask_head_on_detections_only

    def proposals(self, feats: list[Tensor], image_hw: Tensor) -> tuple[Tensor, Tensor]:
        """-> proposals (B, P, 4), valid (B, P) bool with P = post_nms_top_n."""
        rpn = self.config.rpn
        k = rpn.test_proposals.pre_nms_top_n
        objectness, deltas = self.model.rpn_head(feats)
        all_boxes, all_scores, all_levels = [], [], []
        for level, (obj, dlt, feat) in enumerate(zip(objectness, deltas, feats)):
            b = obj.shape[0]
            scores = obj.permute(0, 2, 3, 1).reshape(b, -1).sigmoid()
            dlt = dlt.permute(0, 2, 3, 1).reshape(b, -1, 4)
            anchors = grid_anchors(feat.shape[-2:], rpn.strides[level], rpn.anchor_scale, rpn.anchor_ratios,
                                   device=feat.device)
            # pad so that top-k always has k entries (levels with fewer anchors than k)
            scores = F.pad(scores, (0, k), value=_INVALID_SCORE)
            dlt = F.pad(dlt, (0, 0, 0, k))
            anchors = F.pad(anchors, (0, 0, 0, k))
            top_scores, top_idx = scores.topk(k, dim=1)
            top_deltas = torch.gather(dlt, 1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes = clip_boxes(apply_deltas(anchors[top_idx], top_deltas), image_hw)
            w = boxes[..., 2] - boxes[..., 0]
            h = boxes[..., 3] - boxes[..., 1]
            valid = (top_scores >= 0) & (w > rpn.min_box_size) & (h > rpn.min_box_size)
            all_boxes.append(boxes)
            all_scores.append(torch.where(valid, top_scores, torch.full_like(top_scores, _INVALID_SCORE)))
            all_levels.append(torch.full_like(top_idx, level))
        boxes = torch.cat(all_boxes, 1)
        selected, _ = torch.ops.pfpn.batched_nms(boxes, torch.cat(all_scores, 1), torch.cat(all_levels, 1),
                                                 rpn.nms_iou_threshold, _INVALID_SCORE / 2, rpn.test_proposals.post_nms_top_n)
        valid = selected >= 0
        proposals = torch.gather(boxes, 1, _non_negative(selected).unsqueeze(-1).expand(-1, -1, 4))
        return _where_valid(valid, proposals, _UNIT_BOX), valid

    def roi_align(self, feats: list[Tensor], boxes: Tensor, size: int) -> Tensor:
        """boxes (B, R, 4) -> (B * R, C, size, size)."""
        b, r = boxes.shape[0], boxes.shape[1]
        batch = torch.arange(b, device=boxes.device).float().view(-1, 1, 1).expand(-1, r, 1)
        rois = torch.cat([batch, boxes], dim=-1).reshape(-1, 5)
        return torch.ops.pfpn.multilevel_roi_align(rois, feats[0], feats[1], feats[2], feats[3], size, 0,
                                                   self.config.box_head.finest_scale)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        cfg = self.config
        x = normalize_padded(images, image_sizes, cfg.input.mean, cfg.input.std)
        image_hw = image_sizes.float()
        feats = self.model.neck(self.model.backbone(x))
        proposals, prop_valid = self.proposals(feats, image_hw)
        b, p = proposals.shape[0], proposals.shape[1]
        t = cfg.num_thing_classes

        # box head: every (proposal, class) with score > threshold is a candidate
        class_logits, box_deltas = self.model.roi_head.bbox_head(self.roi_align(feats, proposals, cfg.box_head.roi_size))
        scores = _where_valid(prop_valid, F.softmax(class_logits, dim=-1)[:, :t].reshape(b, p, t), 0.0)
        cand_boxes = apply_deltas(proposals.unsqueeze(2), box_deltas.reshape(b, p, t, 4), cfg.box_head.box_stds)
        cand_boxes = clip_boxes(cand_boxes, image_hw).reshape(b, p * t, 4)
        scores = scores.reshape(b, p * t)
        selected, num = torch.ops.pfpn.batched_nms(cand_boxes, scores, None, cfg.box_head.nms_iou_threshold,
                                                   cfg.box_head.score_threshold, cfg.box_head.max_detections)
        valid = selected >= 0
        index = _non_negative(selected)
        det_boxes = torch.gather(cand_boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))
        det_scores = _where_valid(valid, torch.gather(scores, 1, index), 0.0)
        det_labels = _where_valid(valid, torch.remainder(index, t), 0)

        # mask head on the kept boxes (padding rows get a harmless box), the detected class's channel
        d = det_boxes.shape[1]
        mask_rois = _where_valid(valid, det_boxes, _UNIT_BOX)
        mask_labels = det_labels
        rows = None
        if self.mask_head_on_detections_only:
            # NMS packs each image's detections at the front, so rows [0, n) hold all of them;
            # n >= 1 keeps every tensor non-empty (some backends reject zero-sized convolutions)
            most = num.max()
            rows = torch.arange(torch.where(most >= 1, most, 1), device=num.device)
            mask_rois = mask_rois.index_select(1, rows)
            mask_labels = mask_labels.index_select(1, rows)
        mask_logits = self.model.roi_head.mask_head(self.roi_align(feats, mask_rois, cfg.mask_head.roi_size))
        m = mask_logits.shape[-1]
        chosen = torch.gather(mask_logits, 1, mask_labels.reshape(-1, 1, 1, 1).expand(-1, 1, m, m))
        mask_probs = chosen.sigmoid().reshape(b, -1, m, m)
        if rows is not None:
            index = rows.view(1, -1, 1, 1).expand_as(mask_probs)
            mask_probs = mask_probs.new_zeros(b, d, m, m).scatter(1, index, mask_probs)
        mask_probs = _where_valid(valid, mask_probs, 0.0)
        det_boxes = _where_valid(valid, det_boxes, 0.0)

        semantic_logits = self.model.semantic_head(feats[:4])
        return det_boxes, det_scores, det_labels, mask_probs, num, semantic_logits

