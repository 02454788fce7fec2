"""Anchors (mmdet convention, SPEC): one scale x ratios per level, centred at (x*s, y*s)."""
from __future__ import annotations

import torch
from torch import Tensor


def base_anchors(stride: int, scale: float, ratios: tuple[float, ...]) -> Tensor:
    """The level's anchors around (0, 0). -> (A, 4) with A = len(ratios), ratio = h / w."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    scales_t = torch.tensor([scale], dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).view(-1)
    center = 0.0  # center offset 0: the cell's top-left corner
    return torch.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], dim=-1)


def grid_anchors(feature_size: tuple[int, int], stride: int, scale: float, ratios: tuple[float, ...],
                 device: torch.device | None = None) -> Tensor:
    """All anchors of one level. -> (H * W * A, 4), ordered (y, x, anchor) with anchor fastest,
    matching the head outputs flattened as ``permute(1, 2, 0).reshape(-1)``."""
    h, w = feature_size
    base = base_anchors(stride, scale, ratios).to(device)
    shift_x = torch.arange(0, w, device=device).to(torch.float32) * stride
    shift_y = torch.arange(0, h, device=device).to(torch.float32) * stride
    xx = shift_x.repeat(h)
    yy = shift_y.view(-1, 1).repeat(1, w).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)
