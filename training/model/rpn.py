"""Region proposal network: head, proposal generation (REFERENCE §3.6), targets and loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfpn.training.model.assign import assign_max_iou, sample_pos_neg
from pfpn.training.model.box_ops import decode_boxes, descending_order, encode_boxes, grouped_nms


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, 1x1 objectness (A) and 1x1 deltas (4A) on every level.

    forward: [P_l (B, C, H_l, W_l)] -> (objectness [(B, A, H_l, W_l)], deltas [(B, 4A, H_l, W_l)]).
    """

    def __init__(self, *, in_channels: int, feat_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            objectness.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return objectness, deltas


def flatten_level(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """One image, one level: (A, H, W), (4A, H, W) -> (H*W*A,), (H*W*A, 4) in anchor order."""
    return objectness.permute(1, 2, 0).reshape(-1), deltas.permute(1, 2, 0).reshape(-1, 4)


def proposals_single_image(objectness: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], *,
                           image_size: tuple[int, int], pre_nms_top_n: int, post_nms_top_n: int,
                           nms_iou_threshold: float, min_box_size: float = 0.0) -> tuple[Tensor, Tensor]:
    """Proposals of one image (REFERENCE §3.6): per level the top ``pre_nms_top_n`` sigmoid scores, decode,
    clip to the (resized) image, drop boxes of width or height <= min_box_size, NMS per level,
    keep the ``post_nms_top_n`` highest scoring across levels.

    objectness[l]: (A, H_l, W_l); deltas[l]: (4A, H_l, W_l); anchors[l]: (H_l*W_l*A, 4);
    image_size: (h, w) -> boxes (K, 4), scores (K,), highest first.
    """
    level_scores, level_deltas, level_anchors, level_ids = [], [], [], []
    for level, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
        scores, dlt = flatten_level(obj, dlt)
        scores = scores.sigmoid()
        if 0 < pre_nms_top_n < scores.shape[0]:
            # Reference: a full (unstable) descending sort, then the first pre_nms_top_n.
            order = descending_order(scores)[:pre_nms_top_n]
            scores, dlt, anc = scores[order], dlt[order], anc[order]
        level_scores.append(scores)
        level_deltas.append(dlt)
        level_anchors.append(anc)
        level_ids.append(torch.full_like(scores, level, dtype=torch.long))
    scores = torch.cat(level_scores)
    boxes = decode_boxes(torch.cat(level_anchors), torch.cat(level_deltas), max_shape=image_size)
    ids = torch.cat(level_ids)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    valid = (w > min_box_size) & (h > min_box_size)
    if not bool(valid.all()):
        boxes, scores, ids = boxes[valid], scores[valid], ids[valid]
    keep = grouped_nms(boxes, scores, ids, nms_iou_threshold)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def rpn_targets_single_image(anchors: Tensor, gt_boxes: Tensor, *, pos_iou_threshold: float,
                             neg_iou_threshold: float, min_pos_iou: float, num_samples: int,
                             positive_fraction: float, generator: torch.Generator | None = None
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """anchors: (N, 4) all levels; gt_boxes: (G, 4) ->
    (sampled indices (S,), labels (S,) float 1/0, positive indices (P,), box targets (P, 4))."""
    assigned = assign_max_iou(anchors, gt_boxes, pos_iou_threshold=pos_iou_threshold,
                              neg_iou_threshold=neg_iou_threshold, min_pos_iou=min_pos_iou)
    pos, neg = sample_pos_neg(assigned, num_samples=num_samples, positive_fraction=positive_fraction,
                              generator=generator)
    sampled = torch.cat([pos, neg])
    labels = torch.cat([torch.ones_like(pos, dtype=torch.float32), torch.zeros_like(neg, dtype=torch.float32)])
    targets = encode_boxes(anchors[pos], gt_boxes[assigned[pos] - 1]) if pos.numel() else anchors.new_zeros(0, 4)
    return sampled, labels, pos, targets


def rpn_loss(objectness: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], gt_boxes: list[Tensor], *,
             pos_iou_threshold: float, neg_iou_threshold: float, min_pos_iou: float, num_samples: int,
             positive_fraction: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Sigmoid cross-entropy on sampled anchors + L1 on positives' deltas, both averaged over
    the number of sampled anchors in the batch.

    objectness[l]: (B, A, H_l, W_l); deltas[l]: (B, 4A, H_l, W_l); anchors[l]: (H_l*W_l*A, 4);
    gt_boxes: B tensors (G_i, 4).
    """
    all_anchors = torch.cat(anchors)
    logits, preds, labels, targets = [], [], [], []
    for i, gt in enumerate(gt_boxes):
        flat = [flatten_level(o[i], d[i]) for o, d in zip(objectness, deltas)]
        obj_i = torch.cat([f[0] for f in flat])
        dlt_i = torch.cat([f[1] for f in flat])
        sampled, lab, pos, tgt = rpn_targets_single_image(
            all_anchors, gt, pos_iou_threshold=pos_iou_threshold, neg_iou_threshold=neg_iou_threshold,
            min_pos_iou=min_pos_iou, num_samples=num_samples, positive_fraction=positive_fraction,
            generator=generator)
        logits.append(obj_i[sampled])
        labels.append(lab)
        preds.append(dlt_i[pos])
        targets.append(tgt)
    num_sampled = max(sum(x.numel() for x in labels), 1)
    loss_cls = F.binary_cross_entropy_with_logits(torch.cat(logits), torch.cat(labels), reduction="sum") / num_sampled
    loss_box = F.l1_loss(torch.cat(preds), torch.cat(targets), reduction="sum") / num_sampled
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}
