"""Semantic segmentation head on P2..P5 (REFERENCE §3.10) and its loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfpn.training.model.layers import ConvModule


class ConvUpsample(nn.Module):
    """num_convs x [3x3 conv (no bias) + GroupNorm + ReLU], a 2x bilinear upsample after each of
    the first ``num_upsample`` of them. (B, C_in, h, w) -> (B, C, h * 2**num_upsample, ...)."""

    def __init__(self, *, in_channels: int, inner_channels: int, num_convs: int, num_upsample: int,
                 num_groups: int) -> None:
        super().__init__()
        self.num_upsample = num_upsample
        self.conv = nn.ModuleList(
            ConvModule(in_channels if i == 0 else inner_channels, inner_channels, 3, padding=1,
                       num_groups=num_groups, relu=True)
            for i in range(num_convs))

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.conv):
            x = conv(x)
            if i < self.num_upsample:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class SemanticHead(nn.Module):
    """Level i (0 = P2) gets max(i, 1) conv blocks and i upsamplings; the four stride-4 branches
    are summed and a 1x1 conv gives num_stuff + 1 logits (the last channel: all things).

    forward: [P2..P5] -> (B, num_stuff + 1, H/4, W/4).
    """

    def __init__(self, *, in_channels: int, inner_channels: int, num_groups: int, num_stuff_classes: int,
                 num_levels: int = 4) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.conv_upsample_layers = nn.ModuleList(
            ConvUpsample(in_channels=in_channels, inner_channels=inner_channels, num_convs=max(i, 1),
                         num_upsample=i, num_groups=num_groups)
            for i in range(num_levels))
        self.conv_logits = nn.Conv2d(inner_channels, num_stuff_classes + 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_logits.weight, std=0.01)

    def forward(self, feats: list[Tensor]) -> Tensor:
        branches = [layer(f) for layer, f in zip(self.conv_upsample_layers, feats[: self.num_levels])]
        return self.conv_logits(torch.sum(torch.stack(branches, dim=0), dim=0))


def semantic_targets(gt_semantic_seg: Tensor, *, num_thing_classes: int, num_stuff_classes: int,
                     ignore_index: int = 255) -> Tensor:
    """Contiguous labels -> head classes (REFERENCE §10): thing labels (crowd included) -> num_stuff
    (the 'things' channel), stuff label T + c -> c, anything else -> ignore_index.

    gt_semantic_seg: (B, H, W) int -> (B, H, W) int64.
    """
    seg = gt_semantic_seg.long()
    out = torch.full_like(seg, ignore_index)
    out[seg < num_thing_classes] = num_stuff_classes
    stuff = (seg >= num_thing_classes) & (seg < num_thing_classes + num_stuff_classes)
    out[stuff] = seg[stuff] - num_thing_classes
    return out


def semantic_loss(logits: Tensor, targets: Tensor, *, ignore_index: int = 255) -> Tensor:
    """Cross-entropy at the logits' resolution against targets downsampled with nearest (REFERENCE §10).

    logits: (B, K, h, w); targets: (B, H, W) int64 head classes -> scalar (mean over non-ignored).
    """
    small = F.interpolate(targets[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    if bool((small != ignore_index).any()):
        return F.cross_entropy(logits, small, ignore_index=ignore_index)
    return logits.sum() * 0.0
