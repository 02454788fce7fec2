"""Input normalisation (REFERENCE §2), shared by training, the PyTorch predictor and the export graph.

The resize rule and the zero-padded canvas are the runtime's (``runtime/preprocess.py``); this
module only turns that uint8 batch into the network's normalised input.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pfpn.runtime.preprocess import pad_batch


def normalize_padded(images: Tensor, image_sizes: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 BGR NHWC (zero-padded) -> normalised RGB NCHW float32, zero outside each image.

    images: (B, H, W, 3) uint8; image_sizes: (B, 2) int64 (h, w); mean, std: RGB -> (B, 3, H, W).
    Traceable (the export graph's first step). The uint8 input goes straight into a Cast:
    TensorRT accepts a UINT8 network input only when its one consumer is a Cast
    (NvInferRuntimeBase.h, DataType::kUINT8; checked by runtime/trt/conformance.py). Casting
    before transposing gives the same values.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    x = images.float().permute(0, 3, 1, 2)[:, [2, 1, 0]]
    x = (x - mean_t) / std_t
    rows = torch.arange(x.shape[2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[3], device=x.device).view(1, 1, -1)
    valid = (rows < image_sizes[:, 0].view(-1, 1, 1)) & (cols < image_sizes[:, 1].view(-1, 1, 1))
    return torch.where(valid.unsqueeze(1), x, torch.zeros_like(x))


def normalize_and_pad(images_rgb: list[Tensor], mean: tuple[float, ...], std: tuple[float, ...],
                      size_divisor: int) -> Tensor:
    """[(3, h_i, w_i) uint8 RGB] -> (B, 3, H_pad, W_pad) float32: (x - mean) / std, zero at the
    bottom/right up to the batch's largest size rounded up to size_divisor (the runtime's
    ``pad_batch`` canvas, then :func:`normalize_padded`)."""
    bgr = [img.permute(1, 2, 0).numpy()[..., ::-1] for img in images_rgb]
    batch, sizes = pad_batch(bgr, size_divisor)
    return normalize_padded(torch.from_numpy(batch), torch.from_numpy(sizes), mean, std)
