"""Mask pasting, semantic upsampling and the heuristic fusion on hand-built cases (REFERENCE §4-§5)."""
import torch

from pfpn.runtime.contract import FusionConfig
from pfpn.training.model.panoptic_fusion import heuristic_fusion, paste_masks, upsample_semantic_logits

T, S = 2, 2  # thing and stuff classes in these cases; VOID = 4


def _logits(stuff_map, h, w):
    """(S + 1, h, w) logits whose argmax is ``stuff_map`` (values 0..S, S = 'things')."""
    out = torch.zeros(S + 1, h, w)
    out.scatter_(0, torch.as_tensor(stuff_map).long()[None], 1.0)
    return out


def test_paste_full_mask_fills_exactly_its_box():
    probs = torch.ones(1, 28, 28)
    masks = paste_masks(probs, torch.tensor([[2.0, 3.0, 6.0, 9.0]]), (12, 10))
    expected = torch.zeros(12, 10, dtype=torch.bool)
    expected[3:9, 2:6] = True
    assert torch.equal(masks[0], expected)


def test_paste_left_half():
    probs = torch.zeros(1, 28, 28)
    probs[:, :, :14] = 1.0
    masks = paste_masks(probs, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, :4] = True
    assert torch.equal(masks[0], expected)


def test_paste_threshold_is_inclusive():
    probs = torch.full((1, 28, 28), 0.5)
    assert paste_masks(probs, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (4, 4))[0].all()


def test_upsample_semantic_crops_padding_before_resizing():
    # stride-4 logits of an 8x8 padded input whose resized image is the top 4 rows.
    logits = torch.zeros(2, 2, 2)
    logits[1, 1, :] = 5.0
    out = upsample_semantic_logits(logits, padded_size=(8, 8), resized_size=(4, 8), original_size=(2, 4))
    # 2 -> 8 rows: output row i reads source y = (i + 0.5) / 4 - 0.5 (clamped at 0):
    # rows 0..3 of channel 1 = [0, 0, 0.125 * 5, 0.375 * 5] = [0, 0, 0.625, 1.875];
    # crop 4 rows, 4 -> 2 rows: y = 2 i + 0.5 -> [0, (0.625 + 1.875) / 2] = [0, 1.25].
    # (Without the crop row 0 would read 0.3125.)
    expected = torch.zeros(2, 2, 4)
    expected[1, 1] = 1.25
    torch.testing.assert_close(out, expected)


def test_fusion_overlap_skip_and_occlusion_order():
    h, w = 4, 10
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, :, 0:4] = True   # A, 16 px, score 0.7
    masks[1, :, 2:6] = True   # B, 16 px, score 0.9: kept first, takes columns 2..5
    masks[2, :, 0:3] = True   # C, 12 px, score 0.8: columns 2 taken (4 px) -> 1/3 covered -> kept
    labels = torch.tensor([0, 1, 0])
    scores = torch.tensor([0.7, 0.9, 0.8])
    logits = _logits(torch.full((h, w), 0), h, w)  # all stuff 0 (label T + 0 = 2)
    pan, kept = heuristic_fusion(masks, labels, scores, logits, num_thing_classes=T,
                                 fusion=FusionConfig(stuff_area_limit=1))
    assert kept == [1, 2]  # B then C; A: columns 0..3, 12 of 16 px taken (> 0.5) -> skipped
    expected = torch.full((h, w), 2, dtype=torch.long)
    expected[:, 2:6] = 1 + 1 * 1000  # B: label 1, instance 1
    expected[:, 0:2] = 0 + 2 * 1000  # C: label 0, instance 2, only its free pixels
    assert torch.equal(pan, expected)


def test_fusion_exactly_half_covered_is_kept():
    masks = torch.zeros(2, 2, 4, dtype=torch.bool)
    masks[0, :, 0:2] = True
    masks[1, :, 1:3] = True  # 4 px, 2 covered: 0.5 is not > 0.5 -> kept
    pan, kept = heuristic_fusion(masks, torch.tensor([0, 1]), torch.tensor([0.9, 0.8]),
                                 _logits(torch.zeros(2, 4), 2, 4), num_thing_classes=T,
                                 fusion=FusionConfig(stuff_area_limit=1))
    assert kept == [0, 1]
    assert pan[:, 2].tolist() == [1 + 2000, 1 + 2000]


def test_fusion_empty_mask_does_not_take_a_number():
    masks = torch.zeros(2, 2, 4, dtype=torch.bool)
    masks[1, :, :2] = True
    pan, kept = heuristic_fusion(masks, torch.tensor([0, 1]), torch.tensor([0.9, 0.8]),
                                 _logits(torch.zeros(2, 4), 2, 4), num_thing_classes=T,
                                 fusion=FusionConfig(stuff_area_limit=1))
    assert kept == [1]
    assert pan[0, 0] == 1 + 1000


def test_fusion_things_channel_and_small_stuff_become_void():
    h, w = 4, 6
    stuff = torch.zeros(h, w, dtype=torch.long)
    stuff[:, 4:] = S      # 'things' channel, no instance there -> VOID
    stuff[0, 0] = 1       # a 1-pixel region of stuff 1 -> under the area limit -> VOID
    pan, kept = heuristic_fusion(torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                                 torch.zeros(0), _logits(stuff, h, w), num_thing_classes=T,
                                 fusion=FusionConfig(stuff_area_limit=2))
    void = T + S
    expected = torch.full((h, w), T + 0)
    expected[:, 4:] = void
    expected[0, 0] = void
    assert kept == []
    assert torch.equal(pan, expected)


def test_fusion_stuff_area_counted_after_instances():
    # stuff 0 has 8 px before the instance covers 5 of them; 3 left < limit 4 -> VOID
    h, w = 2, 4
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, :, :2] = True
    masks[0, 0, 2] = True
    pan, _ = heuristic_fusion(masks, torch.tensor([1]), torch.tensor([0.9]), _logits(torch.zeros(h, w), h, w),
                              num_thing_classes=T, fusion=FusionConfig(stuff_area_limit=4))
    assert (pan[masks[0]] == 1 + 1000).all()
    assert (pan[~masks[0]] == T + S).all()
