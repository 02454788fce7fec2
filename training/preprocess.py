"""Input normalisation and padding (SPEC), shared by training and the predictor."""
from __future__ import annotations

import torch
from torch import Tensor


def normalize_and_pad(images_rgb: list[Tensor], mean: tuple[float, ...], std: tuple[float, ...],
                      size_divisor: int) -> Tensor:
    """[(3, h_i, w_i) uint8/float RGB] -> (B, 3, H_pad, W_pad) float32: (x - mean) / std, then
    zero padding at the bottom/right to the batch's largest size rounded up to size_divisor."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    h = max(img.shape[1] for img in images_rgb)
    w = max(img.shape[2] for img in images_rgb)
    h = (h + size_divisor - 1) // size_divisor * size_divisor
    w = (w + size_divisor - 1) // size_divisor * size_divisor
    batch = torch.zeros(len(images_rgb), 3, h, w, dtype=torch.float32)
    for i, img in enumerate(images_rgb):
        batch[i, :, : img.shape[1], : img.shape[2]] = (img.float() - mean_t) / std_t
    return batch
