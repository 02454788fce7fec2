"""ResNet backbone (torchvision blocks and layer naming), returning C2..C5.

Pytorch style (stride on the 3x3 conv, torchvision's Bottleneck), stem and the first
``frozen_stages`` stages frozen, BatchNorm statistics frozen when ``norm_eval`` (REFERENCE §3.1).
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

_STAGE_BLOCKS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet without the classifier.

    Args:
        depth: 18, 34, 50 or 101.
        stem_channels: output channels of the 7x7 stem conv (64 in the published models).
        base_channels: width of stage 1; stage i has ``base_channels * 2**i`` (x4 for bottlenecks).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and stages 1..k.
        norm_eval: keep every BatchNorm in eval mode (statistics frozen) while training.

    forward: (B, 3, H, W) -> [C2 (B, c2, H/4, W/4), C3 (/8), C4 (/16), C5 (/32)].
    """

    def __init__(self, *, depth: int, stem_channels: int = 64, base_channels: int = 64,
                 frozen_stages: int = 1, norm_eval: bool = True) -> None:
        super().__init__()
        if depth not in _STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(_STAGE_BLOCKS)}")
        block, blocks_per_stage = _STAGE_BLOCKS[depth]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(blocks_per_stage):
            planes = base_channels * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(num_blocks):
                downsample = None
                if j == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                layers.append(block(inplanes, planes, stride if j == 0 else 1, downsample))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(inplanes)
        self._init_weights()
        self._freeze_stages()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: trains from scratch more stably.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods += [self.conv1, self.bn1]
        for i in range(1, self.frozen_stages + 1):
            mods.append(getattr(self, f"layer{i}"))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs
