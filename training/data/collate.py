"""Turn dataset samples (numpy, BGR) into the model's training batch (torch)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pfpn.training.config import InputConfig
from pfpn.training.preprocess import normalize_and_pad


def collate_train(samples: list[dict], input_config: InputConfig, ignore_index: int = 255
                  ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]]]:
    """samples (after resize/flip): ``image`` (h, w, 3) uint8 BGR, ``gt_boxes`` (G, 4), ``gt_labels``
    (G,), ``gt_masks`` (G, h, w) uint8, ``gt_semantic_seg`` (h, w) uint8 contiguous labels / 255 ->
    (images (B, 3, H_pad, W_pad), image sizes [(h, w)], targets with the semantic map padded
    with ``ignore_index``)."""
    rgb = [torch.from_numpy(np.ascontiguousarray(s["image"][..., ::-1])).permute(2, 0, 1) for s in samples]
    images = normalize_and_pad(rgb, input_config.mean, input_config.std, input_config.size_divisor)
    pad_h, pad_w = images.shape[-2:]
    sizes, targets = [], []
    for s in samples:
        h, w = s["image"].shape[:2]
        sizes.append((h, w))
        sem = torch.full((pad_h, pad_w), ignore_index, dtype=torch.uint8)
        sem[:h, :w] = torch.from_numpy(np.ascontiguousarray(s["gt_semantic_seg"]))
        targets.append({
            "gt_boxes": torch.as_tensor(np.asarray(s["gt_boxes"], dtype=np.float32).reshape(-1, 4)),
            "gt_labels": torch.as_tensor(np.asarray(s["gt_labels"], dtype=np.int64).reshape(-1)),
            "gt_masks": torch.from_numpy(np.ascontiguousarray(s["gt_masks"], dtype=np.uint8)).reshape(-1, h, w),
            "gt_semantic_seg": sem,
        })
    return images, sizes, targets
