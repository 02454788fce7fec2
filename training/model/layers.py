"""Small building blocks whose parameter names follow the published checkpoint layout."""
from __future__ import annotations

from torch import Tensor, nn


class ConvModule(nn.Module):
    """conv (+ GroupNorm named ``gn``) (+ ReLU), named like mmcv's ConvModule.

    Args:
        in_channels, out_channels, kernel_size, stride, padding: of the convolution.
        num_groups: GroupNorm groups; 0 means no norm. With a norm the conv has no bias.
        relu: apply ReLU at the end.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, num_groups: int = 0, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              bias=num_groups == 0)
        self.gn = nn.GroupNorm(num_groups, out_channels) if num_groups else None
        self.relu = nn.ReLU(inplace=False) if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x
