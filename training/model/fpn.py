"""Feature pyramid network: P2..P5 from C2..C5, plus P6 by max-pooling P5 (REFERENCE §3.2)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pfpn.training.model.layers import ConvModule


class FPN(nn.Module):
    """Args:
        in_channels: channels of C2..C5.
        out_channels: channels of every output level.

    forward: [C2..C5] -> [P2 (stride 4), P3, P4, P5, P6 (stride 64)], each (B, out_channels, h, w).
    """

    def __init__(self, *, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
