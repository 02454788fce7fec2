"""Multi-level RoIAlign: level assignment + half-pixel (aligned) RoIAlign (REFERENCE §3.7).

Coordinate convention (the one used across the project, documented here once): a feature map
cell (i, j) at stride s covers input pixels [j*s, (j+1)*s); its centre is at (j + 0.5) * s.
RoIAlign with ``aligned=True`` shifts box coordinates by -0.5 cell after scaling so that
sampling points land on those centres (the "half_pixel" mode of ONNX RoiAlign).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """Pyramid level (0 = P2) of each roi. rois: (K, 5) [batch, x1, y1, x2, y2] -> (K,) int64.

    level = floor(log2(sqrt(w * h) / finest_scale + 1e-6)) clamped to [0, num_levels - 1].
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multilevel_roi_align(feats: list[Tensor], rois: Tensor, *, output_size: int, strides: list[int],
                         finest_scale: float = 56.0, sampling_ratio: int = 0) -> Tensor:
    """Pool each roi from its level.

    feats: L maps (B, C, H_l, W_l) with the given strides; rois: (K, 5) [batch index, x1, y1, x2, y2]
    in input pixels -> (K, C, output_size, output_size).
    """
    num_levels = len(feats)
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], output_size, output_size)
    if rois.shape[0] == 0:
        return out
    levels = roi_levels(rois, num_levels, finest_scale)
    for level in range(num_levels):
        inds = torch.nonzero(levels == level).flatten()
        if inds.numel() > 0:
            out[inds] = roi_align(feats[level], rois[inds], output_size, spatial_scale=1.0 / strides[level],
                                  sampling_ratio=sampling_ratio, aligned=True)
    return out


def boxes_to_rois(boxes_per_image: list[Tensor]) -> Tensor:
    """[(N_i, 4)] -> (sum N_i, 5) with the image index in column 0."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes_per_image)]
    return torch.cat(rois, 0) if rois else torch.zeros(0, 5)
