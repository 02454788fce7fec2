"""The PyTorch predictor's panoptic fusion: mask pasting, semantic upsampling, heuristic fusion.

These follow REFERENCE §4-§5 and the reference implementation operation by operation, so that a published
checkpoint gives the reference's panoptic id map exactly. (The torch-free runtime has its own
implementation, compared against these in tests.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pfpn.runtime.contract import FusionConfig


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste 28x28 probabilities into their boxes at image resolution and binarise (>= threshold).

    Bilinear sampling with align_corners=False over the box extent: output pixel centre x + 0.5
    maps to normalised ((x + 0.5 - x1) / (x2 - x1)) * 2 - 1; outside the mask it reads zeros.
    Pasting is confined to the union of the boxes (+1 px) like the reference's CPU path; the
    rest is background.

    mask_probs: (N, M, M); boxes: (N, 4) in image pixels; image_size: (h, w) -> (N, h, w) bool.
    """
    img_h, img_w = image_size
    n = mask_probs.shape[0]
    out = torch.zeros(n, img_h, img_w, dtype=torch.bool, device=mask_probs.device)
    for i in range(n):  # the reference pastes one mask at a time on the CPU
        box = boxes[i : i + 1]
        x0_int, y0_int = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
        x1_int = int(torch.clamp(box[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32))
        y1_int = int(torch.clamp(box[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32))
        x0_int, y0_int = int(x0_int), int(y0_int)
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)
        img_y = torch.arange(y0_int, y1_int, device=box.device).to(torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, device=box.device).to(torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
        img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)
        pasted = F.grid_sample(mask_probs[i : i + 1, None].float(), grid, align_corners=False)
        out[i, y0_int:y1_int, x0_int:x1_int] = pasted[0, 0] >= threshold
    return out


def upsample_semantic_logits(logits: Tensor, *, padded_size: tuple[int, int], resized_size: tuple[int, int],
                             original_size: tuple[int, int]) -> Tensor:
    """Stride-4 logits -> original resolution (REFERENCE §4.4): bilinear to the padded input size, crop to
    the resized image, bilinear to the original size (align_corners=False both times).

    logits: (K, h/4, w/4) -> (K, H_orig, W_orig).
    """
    x = F.interpolate(logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : resized_size[0], : resized_size[1]]
    return F.interpolate(x, size=original_size, mode="bilinear", align_corners=False)[0]


def heuristic_fusion(masks: Tensor, labels: Tensor, scores: Tensor, semantic_logits: Tensor, *,
                     num_thing_classes: int, fusion: FusionConfig = FusionConfig()) -> tuple[Tensor, list[int]]:
    """Panoptic fusion (REFERENCE §5) -> ((H, W) int64 id map, indices of the kept detections in
    instance order: kept[k - 1] is the detection that became instance k).

    Instances by descending score: skip empty masks and those whose mask is more than
    ``fusion.mask_overlap_threshold`` covered by earlier kept instances; a kept instance k
    (1-based) takes its free pixels as ``label + k * fusion.instance_offset``. Other pixels get the
    semantic argmax + num_thing_classes (the 'things' channel becomes VOID = num_thing_classes +
    num_stuff). Stuff labels with fewer than ``fusion.stuff_area_limit`` pixels become VOID.

    masks: (N, H, W) bool; labels: (N,) int64; scores: (N,); semantic_logits: (num_stuff + 1, H, W).
    """
    instance_offset = fusion.instance_offset
    num_stuff_classes = semantic_logits.shape[0] - 1
    void = num_thing_classes + num_stuff_classes
    height, width = semantic_logits.shape[-2:]
    instance_map = torch.zeros(height, width, dtype=torch.long, device=semantic_logits.device)
    kept: list[int] = []
    if masks.shape[0] > 0:
        # Reference: argsort of the negated scores (an unstable sort: tie order as the reference's).
        order = torch.argsort(-scores)
        for idx in order.tolist():
            mask = masks[idx]
            area = mask.sum()
            if int(area) == 0:
                continue
            taken = instance_map > 0
            covered = (mask & taken).sum()
            # The reference's float32 arithmetic, kept as is: for masks of millions of pixels
            # it can differ from the exact 2 * covered > area.
            if bool(covered / (area + 1e-5) > fusion.mask_overlap_threshold):
                continue
            kept.append(idx)
            instance_map[mask & ~taken] = len(kept)
    panoptic = semantic_logits.argmax(dim=0) + num_thing_classes
    for k, idx in enumerate(kept, start=1):
        panoptic[instance_map == k] = int(labels[idx]) + k * instance_offset
    ids, counts = torch.unique(panoptic % instance_offset, return_counts=True)
    small_stuff = ids[(ids >= num_thing_classes) & (counts < fusion.stuff_area_limit)]
    if small_stuff.numel():
        panoptic[torch.isin(panoptic, small_stuff)] = void
    return panoptic, kept
