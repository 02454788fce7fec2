"""Box head and mask head (REFERENCE §3.8-§3.9), their targets, losses and inference post-processing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from pfpn.training.model.assign import assign_max_iou, sample_pos_neg
from pfpn.training.model.box_ops import decode_boxes, encode_boxes, nms
from pfpn.training.model.layers import ConvModule


class BoxHead(nn.Module):
    """Two shared FC layers + ReLU, class scores (background LAST) and class-specific deltas.

    forward: (K, C, 7, 7) -> (class logits (K, num_classes + 1), deltas (K, 4 * num_classes)).
    """

    def __init__(self, *, in_channels: int, roi_size: int, fc_channels: int, num_classes: int) -> None:
        super().__init__()
        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_size * roi_size, fc_channels),
            nn.Linear(fc_channels, fc_channels),
        ])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class MaskHead(nn.Module):
    """num_convs x (3x3 conv + ReLU), 2x2 stride-2 transposed conv + ReLU, 1x1 conv to class logits.

    forward: (K, C, 14, 14) -> (K, num_classes, 28, 28) logits.
    """

    def __init__(self, *, in_channels: int, conv_channels: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1, relu=True)
            for i in range(num_convs))
        self.upsample = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, roi_feats: Tensor) -> Tensor:
        x = roi_feats
        for conv in self.convs:
            x = conv(x)
        x = F.relu(self.upsample(x))
        return self.conv_logits(x)


# ----------------------------------------------------------------------------------------------
# inference

def detections_single_image(class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, *,
                            image_size: tuple[int, int], box_stds: tuple[float, ...], score_threshold: float,
                            nms_iou_threshold: float, max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    """Box-head outputs of one image -> kept detections (REFERENCE §4.1-§4.2).

    Every (proposal, class) pair with softmax score > score_threshold is a candidate carrying
    that class's decoded box (clipped to the resized image); class-agnostic NMS; at most
    max_detections kept, highest score first.

    class_logits: (K, C + 1) (background last); box_deltas: (K, 4C); proposals: (K, 4);
    image_size: (h, w) -> boxes (N, 4), scores (N,), labels (N,) int64 in 0..C-1.
    """
    num_classes = class_logits.shape[1] - 1
    scores = F.softmax(class_logits, dim=-1)
    boxes = decode_boxes(proposals, box_deltas, stds=box_stds, max_shape=image_size)
    boxes = boxes.view(-1, 4)
    scores = scores[:, :-1].reshape(-1)
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand(proposals.shape[0], -1).reshape(-1)
    inds = torch.nonzero(scores > score_threshold).squeeze(1)
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 4), scores.new_zeros(0), labels.new_zeros(0)
    keep = nms(boxes, scores, nms_iou_threshold)[:max_detections]
    return boxes[keep], scores[keep], labels[keep]


def select_class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """(N, C, 28, 28) logits, (N,) labels -> (N, 28, 28) probabilities of each detection's class."""
    n = mask_logits.shape[0]
    return mask_logits[torch.arange(n, device=labels.device), labels].sigmoid()


# ----------------------------------------------------------------------------------------------
# training targets and losses

def sample_rois_single_image(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, num_classes: int,
                             pos_iou_threshold: float, neg_iou_threshold: float, min_pos_iou: float, num_samples: int,
                             positive_fraction: float, generator: torch.Generator | None = None
                             ) -> dict[str, Tensor]:
    """Assign and sample RoIs of one image for the box and mask heads (ground truth boxes are
    added to the proposals).

    proposals: (K, 4); gt_boxes: (G, 4); gt_labels: (G,) ->
    rois (S, 4) with positives first, labels (S,) (num_classes = background), matched gt index
    (S,) (-1 for negatives), num_pos.
    """
    candidates = torch.cat([gt_boxes, proposals.detach()], 0)
    assigned = assign_max_iou(candidates, gt_boxes, pos_iou_threshold=pos_iou_threshold,
                              neg_iou_threshold=neg_iou_threshold, min_pos_iou=min_pos_iou)
    pos, neg = sample_pos_neg(assigned, num_samples=num_samples, positive_fraction=positive_fraction,
                              generator=generator)
    inds = torch.cat([pos, neg])
    gt_index = assigned[inds] - 1
    labels = torch.full_like(inds, num_classes)
    labels[: pos.numel()] = gt_labels[gt_index[: pos.numel()]]
    gt_index[pos.numel():] = -1
    return {"rois": candidates[inds], "labels": labels, "gt_index": gt_index,
            "num_pos": torch.tensor(pos.numel())}


def box_head_loss(class_logits: Tensor, box_deltas: Tensor, rois: Tensor, labels: Tensor, matched_gt_boxes: Tensor,
                  *, box_stds: tuple[float, ...]) -> dict[str, Tensor]:
    """Softmax cross-entropy over all sampled RoIs + L1 on the positives' class-specific deltas,
    both averaged over the number of sampled RoIs.

    class_logits: (S, C + 1); box_deltas: (S, 4C); rois: (S, 4); labels: (S,) (C = background);
    matched_gt_boxes: (P, 4) for the first P rows (the positives).
    """
    num_classes = class_logits.shape[1] - 1
    num = max(labels.numel(), 1)
    loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / num
    pos = labels < num_classes
    num_pos = int(pos.sum())
    if num_pos == 0:
        loss_box = box_deltas.sum() * 0.0
    else:
        pos_deltas = box_deltas[pos].view(num_pos, num_classes, 4)[torch.arange(num_pos), labels[pos]]
        targets = encode_boxes(rois[pos], matched_gt_boxes, stds=box_stds)
        loss_box = F.l1_loss(pos_deltas, targets, reduction="sum") / num
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def mask_targets(rois: Tensor, gt_masks: Tensor, gt_index: Tensor, mask_size: int) -> Tensor:
    """Crop each positive RoI out of its matched gt mask, resize to mask_size with RoIAlign
    (aligned) and binarise at 0.5.

    rois: (P, 4) image pixels; gt_masks: (G, H, W) uint8; gt_index: (P,) matched gt per roi
    -> (P, S, S) float 0/1.
    """
    if rois.shape[0] == 0:
        return rois.new_zeros(0, mask_size, mask_size)
    index = gt_index.to(rois.dtype)[:, None]
    targets = roi_align(gt_masks[:, None].float(), torch.cat([index, rois], 1), mask_size, 1.0, 0, True)
    return (targets[:, 0] >= 0.5).float()


def mask_head_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel BCE on each positive RoI's ground-truth class channel, averaged over pixels.

    mask_logits: (P, C, S, S); labels: (P,); targets: (P, S, S) -> scalar.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    logits = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, targets)
