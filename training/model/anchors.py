"""Anchors (mmdet convention, REFERENCE §3.4): one scale x ratios per level, centred at (x*s, y*s)."""
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
    matching the head outputs flattened as ``permute(1, 2, 0).reshape(-1)``.

    Traceable: pass ``feature_size = feature_map.shape[-2:]`` and the traced graph follows the
    map's (dynamic) size.
    """
    h, w = feature_size
    base = base_anchors(stride, scale, ratios).to(device)
    shift_x = torch.arange(w, device=device).to(torch.float32) * stride
    shift_y = torch.arange(h, device=device).to(torch.float32) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (base[None, :, :] + shifts).reshape(-1, 4)
