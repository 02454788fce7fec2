"""The torch-free post-processing (runtime/fusion.py with mask_paste.py, semantic_labels.py
and torch_sort.py) against the PyTorch reference (training.predictor.label_map_single_image and
training.model.panoptic_fusion), on the same inputs.

Hand-built cases must give identical maps; they avoid exact 0.5 probabilities and exact logit
ties where the summation order could matter (except the tests that are about exact ties).
Random realistic inputs must agree on >= 99.9 % of the pixels (they agree on all of them).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pfpn.runtime.categories import Category, CategoryTable
from pfpn.runtime.mask_paste import paste_mask_region
from pfpn.runtime.fusion import postprocess_single_image
from pfpn.runtime.semantic_labels import semantic_argmax
from pfpn.runtime.torch_sort import fusion_order
from pfpn.runtime.preprocess import rescale_size
from pfpn.runtime.result import panoptic_result_from_label_map, to_panoptic_result
from pfpn.training.config import FusionConfig, MaskHeadConfig, ModelConfig
from pfpn.training.model.panoptic_fpn import Detections
from pfpn.training.model.panoptic_fusion import paste_masks, upsample_semantic_logits
from pfpn.training.predictor import label_map_single_image

T, S = 3, 3  # hand-built cases: things 0..2, stuff 3..5 (channels 0..2), things channel 3, VOID 6
VOID = T + S


# ----------------------------------------------------------------------------------------------
# helpers
def sizes_for(original: tuple[int, int], max_long: int, max_short: int):
    """REFERENCE §2's resize of an original (H, W) -> (resized (h, w), scale factor, logits (h4, w4))."""
    h, w = original
    new_w, new_h, _ = rescale_size(w, h, max_long, max_short)
    pad_h, pad_w = -(-new_h // 32) * 32, -(-new_w // 32) * 32
    return (new_h, new_w), (new_w / w, new_h / h), (pad_h // 4, pad_w // 4)


def reference(inp: dict, **fusion) -> tuple[np.ndarray, list[int]]:
    """training.predictor.label_map_single_image on the same inputs."""
    logits = torch.from_numpy(np.ascontiguousarray(inp["semantic_logits"]))
    config = ModelConfig(num_thing_classes=inp["num_thing_classes"], num_stuff_classes=logits.shape[0] - 1,
                         mask_head=MaskHeadConfig(mask_threshold=fusion.pop("mask_threshold", 0.5)),
                         fusion=FusionConfig(**fusion))
    det = Detections(torch.from_numpy(np.asarray(inp["boxes"], np.float32).reshape(-1, 4)),
                     torch.from_numpy(np.asarray(inp["scores"], np.float32)),
                     torch.from_numpy(np.asarray(inp["labels"], np.int64)),
                     torch.from_numpy(np.asarray(inp["mask_probs"], np.float32).reshape(-1, 28, 28)))
    with torch.no_grad():
        pred = label_map_single_image(det, logits, config, padded_size=(logits.shape[1] * 4, logits.shape[2] * 4),
                                      resized_size=inp["resized_size"], original_size=inp["original_size"],
                                      scale_factor=inp["scale_factor"])
    return pred.label_map, pred.kept


def check_identical(inp: dict, **fusion):
    ref, ref_kept = reference(inp, **dict(fusion))
    mask_threshold = fusion.pop("mask_threshold", 0.5)
    out = postprocess_single_image(**inp, mask_threshold=mask_threshold, fusion=FusionConfig(**fusion))
    assert out.label_map.dtype == np.int64 and out.label_map.shape == tuple(inp["original_size"])
    assert out.kept == ref_kept
    assert np.array_equal(out.label_map, ref), f"{np.count_nonzero(out.label_map != ref)} pixels differ"
    return out


def stuff_logits(label_map: np.ndarray, low: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(S + 1, h4, w4) float32 logits whose argmax is ``label_map`` (values 0..S, resized to the
    logit grid by nearest neighbour), winners at 3.0 + small smooth irrational offsets (no ties)."""
    h4, w4 = low
    lab = cv2.resize(label_map.astype(np.uint8), (w4, h4), interpolation=cv2.INTER_NEAREST)
    yy, xx = np.mgrid[0:h4, 0:w4]
    logits = np.empty((S + 1, h4, w4), dtype=np.float32)
    for c in range(S + 1):
        logits[c] = 0.1 * np.sin(0.37 * yy + 0.91 * xx + 1.3 * c + seed) - 1.0 - 0.23 * c
    winners = lab[None] == np.arange(S + 1)[:, None, None]
    logits[winners] += 3.0 + 0.7 * np.cos(0.21 * yy + 0.13 * xx)[None].repeat(S + 1, 0)[winners] * 0.1
    return logits


def case(original=(160, 224), max_sizes=(224, 160), stuff_map=None, boxes=(), labels=None, scores=None,
         probs=None) -> dict:
    """A hand-built input: boxes in ORIGINAL pixels (converted to resized pixels here),
    probabilities (N, 28, 28) default 1.0 blocks."""
    resized, factor, low = sizes_for(original, *max_sizes)
    if stuff_map is None:
        stuff_map = np.zeros(original, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    sx, sy = factor
    boxes_resized = (boxes * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)
    return dict(boxes=boxes_resized, scores=np.asarray(scores if scores is not None else np.linspace(0.9, 0.7, n),
                                                       dtype=np.float32),
                labels=np.asarray(labels if labels is not None else np.arange(n) % T, dtype=np.int64),
                mask_probs=(np.asarray(probs, dtype=np.float32) if probs is not None
                            else np.ones((n, 28, 28), dtype=np.float32)),
                semantic_logits=stuff_logits(np.asarray(stuff_map), low), resized_size=resized,
                original_size=original, scale_factor=factor, num_thing_classes=T)


# ----------------------------------------------------------------------------------------------
# (a) hand-built cases, identical maps
def test_overlap_skip_and_occlusion_order():
    # B (score 0.9) is kept first; C (0.8) is 1/3 covered by B -> kept with its free pixels only;
    # A (0.7) is 3/4 covered by B and C -> skipped. Input order is not score order.
    inp = case(boxes=[[10, 20, 50, 60], [40, 20, 80, 60], [20, 20, 50, 60]], labels=[0, 1, 2],
               scores=[0.7, 0.9, 0.8])
    out = check_identical(inp, stuff_area_limit=100)
    assert out.kept == [1, 2]
    assert np.count_nonzero(out.label_map == 1 + 1000) == 40 * 40
    assert np.count_nonzero(out.label_map == 2 + 2000) == 20 * 40


def test_exactly_half_covered_is_kept():
    # B (40 x 40 px) has exactly half of its pixels under A: covered / (area + 1e-5) < 0.5 -> kept
    inp = case(boxes=[[20, 20, 60, 60], [40, 20, 80, 60]], labels=[0, 1], scores=[0.9, 0.8])
    out = check_identical(inp, stuff_area_limit=100)
    assert out.kept == [0, 1] and np.count_nonzero(out.label_map == 1 + 2000) == 20 * 40


def test_empty_masks_take_no_instance_number():
    probs = np.ones((3, 28, 28), dtype=np.float32)
    probs[0] = 0.11  # never reaches 0.5
    inp = case(boxes=[[10, 10, 50, 50], [60, 60, 100, 100], [110, 10, 150, 40]], probs=probs,
               scores=[0.95, 0.9, 0.85])
    out = check_identical(inp, stuff_area_limit=100)
    assert out.kept == [1, 2]
    assert set((np.unique(out.label_map[out.label_map >= 1000]) // 1000).tolist()) == {1, 2}


def test_stuff_area_limit_and_things_channel_become_void():
    stuff = np.zeros((160, 224), dtype=np.int64)
    stuff[:, 112:] = 1
    stuff[100:, :60] = 2  # 60 x 60 = 3600 px of stuff 2
    stuff[10:50, 150:200] = S  # things channel with no instance -> VOID
    inp = case(stuff_map=stuff, boxes=[[120, 100, 160, 140]])
    pan = check_identical(inp, stuff_area_limit=3700).label_map
    assert not np.any(pan == T + 2)  # stuff 2 (about 3600 px) -> VOID
    assert np.count_nonzero(pan[10:50, 150:200] == VOID) > 1500  # the things channel, no instance
    assert np.count_nonzero(pan == VOID) > 5000
    pan = check_identical(inp, stuff_area_limit=100).label_map
    assert np.count_nonzero(pan == T + 2) > 3000



def test_stuff_area_limit_is_inclusive():
    stuff = np.zeros((160, 224), dtype=np.int64)
    stuff[:, 150:] = 1
    stuff[100:, 10:70] = 2
    inp = case(stuff_map=stuff, boxes=[[30, 110, 50, 150]])  # an instance inside stuff 2
    area = int(np.count_nonzero(check_identical(inp, stuff_area_limit=1).label_map == T + 2))
    assert 2000 < area < 3600
    assert np.count_nonzero(check_identical(inp, stuff_area_limit=area).label_map == T + 2) == area
    assert not np.any(check_identical(inp, stuff_area_limit=area + 1).label_map == T + 2)

def test_boxes_touching_and_crossing_image_borders():
    probs = np.full((4, 28, 28), 0.93, dtype=np.float32)
    probs[:, :5] = 0.03
    probs[:, :, -3:] = 0.13
    inp = case(boxes=[[0, 0, 40.3, 37.7], [190.2, 120.6, 224, 160], [0, 130.5, 224, 160], [201.7, 0, 224.4, 50.2]],
               probs=probs, scores=[0.9, 0.8, 0.7, 0.6])
    check_identical(inp, stuff_area_limit=100)


@pytest.mark.parametrize("original, max_sizes", [
    ((150, 200), (400, 300)),  # upscaled x2 into the network, masks pasted at the smaller original size
    ((300, 400), (200, 150)),  # downscaled x0.5
    ((173, 251), (333, 257)),  # odd sizes, factors that are not round
])
def test_original_size_differs_from_resized(original, max_sizes):
    h, w = original
    rng = np.random.default_rng(1)
    stuff = np.zeros(original, dtype=np.int64)
    stuff[: h // 2] = 1
    stuff[h // 3:, w // 2:] = 2
    stuff[int(h * 0.7):, : w // 3] = S
    probs = np.clip(rng.uniform(0.2, 1.0, (5, 28, 28)), 0, 1).astype(np.float32)
    probs[np.abs(probs - 0.5) < 0.01] = 0.6
    boxes = [[10.3, 12.7, 0.6 * w, 0.5 * h], [0.4 * w, 0.3 * h, w - 3.2, h - 0.4], [5, 0.6 * h, 0.3 * w, h],
             [0.7 * w, 2.5, w, 0.4 * h], [0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h]]
    inp = case(original=original, max_sizes=max_sizes, stuff_map=stuff, boxes=boxes, probs=probs)
    assert inp["resized_size"] != original
    check_identical(inp, stuff_area_limit=200)


def test_boxes_smaller_than_a_pixel_and_of_zero_width():
    # a sub-pixel box paints the pixel whose centre it contains; a zero-width box reads the mask's
    # centre column for its whole region (the reference maps inf coordinates to 0); a sub-pixel
    # box around no pixel centre is empty
    inp = case(boxes=[[50.2, 60.3, 50.6, 60.9], [100, 40, 100, 70], [150.45, 80.1, 150.55, 80.2]],
               scores=[0.9, 0.8, 0.7])
    out = check_identical(inp, stuff_area_limit=100)
    assert out.kept == [0, 1]
    assert np.count_nonzero(out.label_map == 0 + 1000) == 1  # the sub-pixel box
    assert np.count_nonzero(out.label_map == 1 + 2000) == 2 * 30  # zero width: region columns 99, 100


def test_exact_ties_follow_the_reference():
    # exact 0.5 probabilities (>= threshold is inclusive), two channels equal everywhere (argmax
    # takes the first), tied scores (torch's unstable sort order)
    inp = case(boxes=[[20, 20, 60, 60], [40, 30, 90, 70], [10, 50, 50, 100], [30, 30, 70, 60]] * 5,
               scores=[0.8] * 20, labels=np.arange(20) % T, probs=np.full((20, 28, 28), 0.5, dtype=np.float32))
    inp["semantic_logits"][1] = inp["semantic_logits"][0]
    check_identical(inp, stuff_area_limit=100)


# ----------------------------------------------------------------------------------------------
# building blocks against their torch counterparts
def test_fusion_order_is_torch_argsort_with_ties():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 17, 40, 100, 300):
        for levels in (3, 20, 10**6):
            s = (rng.integers(0, levels, n) / levels).astype(np.float32)
            if n and levels == 3:
                s = np.sort(s)[::-1].copy()  # already descending, as the contract's scores are
            expected = torch.argsort(-torch.from_numpy(s)).numpy()
            assert np.array_equal(fusion_order(s), expected), (n, levels)


def test_paste_mask_region_matches_paste_masks():
    rng = np.random.default_rng(2)
    height, width = 90, 130
    for i in range(60):
        x1, y1 = rng.uniform(-0.5, 120), rng.uniform(-0.5, 80)
        size = rng.uniform(0.05, 3) if i % 4 == 0 else rng.uniform(3, 150)
        box = np.array([x1, y1, x1 + size * rng.uniform(0.5, 2), y1 + size], dtype=np.float32)
        probs = rng.uniform(0, 1, (28, 28)).astype(np.float32)
        expected = paste_masks(torch.from_numpy(probs)[None], torch.from_numpy(box)[None], (height, width))[0].numpy()
        y0, x0, region = paste_mask_region(probs, box, (height, width))
        got = np.zeros((height, width), dtype=bool)
        got[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
        assert np.array_equal(got, expected), (i, box)


@pytest.mark.parametrize("original, max_sizes", [((200, 336), (336, 200)), ((480, 640), (1333, 800)),
                                                 ((333, 500), (250, 190)), ((97, 203), (400, 300))])
def test_semantic_argmax_matches_upsampled_argmax(original, max_sizes):
    rng = np.random.default_rng(3)
    resized, _, (h4, w4) = sizes_for(original, *max_sizes)
    coarse = rng.normal(size=(12, 6, 9)).astype(np.float32) * 3
    logits = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_CUBIC) for c in coarse]).astype(np.float32)
    expected = upsample_semantic_logits(torch.from_numpy(logits), padded_size=(h4 * 4, w4 * 4), resized_size=resized,
                                        original_size=original).argmax(0).numpy()
    got = semantic_argmax(logits, resized_size=resized, original_size=original)
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} pixels differ"


# ----------------------------------------------------------------------------------------------
# (b) random realistic inputs, (c) the COCO form, (d) no / 100 detections
def random_inputs(rng: np.random.Generator, original: tuple[int, int], n: int, *, num_things: int = 80,
                  num_stuff: int = 53) -> dict:
    resized, factor, (h4, w4) = sizes_for(original, 1333, 800)
    nh, nw = resized
    coarse = rng.normal(size=(num_stuff + 1, 5, 8)).astype(np.float32) * 3.5
    logits = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_CUBIC) for c in coarse]).astype(np.float32)
    logits += rng.normal(0, 0.03, logits.shape).astype(np.float32)
    side = np.exp(rng.uniform(np.log(6), np.log(min(nh, nw) * 0.7), (n, 2)))
    x1 = rng.uniform(-2, nw - side[:, 0] / 2)
    y1 = rng.uniform(-2, nh - side[:, 1] / 2)
    boxes = np.clip(np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1), 0, [nw, nh, nw, nh]).astype(np.float32)
    scores = np.sort(rng.uniform(0.6, 1.0, n).astype(np.float32))[::-1].copy()
    scores[1::7] = scores[0::7][: len(scores[1::7])]  # a few exact ties
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    probs = np.empty((n, 28, 28), dtype=np.float32)
    for i in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.6)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        probs[i] = np.clip(1 / (1 + np.exp((d - 1) * rng.uniform(3, 10))) + rng.normal(0, 0.05, d.shape), 0, 1)
    return dict(boxes=boxes, scores=scores, labels=rng.integers(0, num_things, n), mask_probs=probs,
                semantic_logits=logits, resized_size=resized, original_size=original, scale_factor=factor,
                num_thing_classes=num_things)


def coco_categories(num_things: int = 80, num_stuff: int = 53) -> CategoryTable:
    return CategoryTable([Category(3 * i + 1, f"thing{i}", True) for i in range(num_things)]
                         + [Category(1000 + i, f"stuff{i}", False) for i in range(num_stuff)])


@pytest.mark.parametrize("original, n, seed", [((480, 640), 30, 0), ((800, 1333), 100, 1), ((375, 500), 12, 2),
                                               ((1000, 750), 50, 3), ((240, 320), 5, 4)])
def test_random_realistic_inputs_agree_with_reference(original, n, seed):
    inp = random_inputs(np.random.default_rng(seed), original, n)
    ref, ref_kept = reference(inp, stuff_area_limit=4096)
    out = postprocess_single_image(**inp)
    agreement = float(np.mean(out.label_map == ref))
    print(f"{original} N={n}: agreement {agreement:.6f}, kept {len(out.kept)}, "
          f"{out.boundary_pixels} boundary pixels, {1e3 * out.part_seconds['total']:.1f} ms")
    assert agreement >= 0.999
    assert out.kept == ref_kept
    # (c) the fast COCO form equals the generic one built from the map
    cats = coco_categories()
    fast = to_panoptic_result(out, cats)
    slow = panoptic_result_from_label_map(out.label_map, cats, instance_scores=inp["scores"][out.kept].tolist())
    assert np.array_equal(fast.id_map, slow.id_map) and fast.id_map.dtype == slow.id_map.dtype
    assert fast.segments_info == slow.segments_info


def test_no_detections():
    inp = random_inputs(np.random.default_rng(5), (300, 400), 1)
    for key in ("boxes", "scores", "labels", "mask_probs"):
        inp[key] = inp[key][:0]
    ref, ref_kept = reference(inp, stuff_area_limit=4096)
    out = postprocess_single_image(**inp)
    assert out.kept == ref_kept == [] and np.array_equal(out.label_map, ref)
    assert np.all(out.label_map < 1000)
    cats = coco_categories()
    fast = to_panoptic_result(out, cats)
    slow = panoptic_result_from_label_map(out.label_map, cats)
    assert np.array_equal(fast.id_map, slow.id_map) and fast.segments_info == slow.segments_info


def test_to_panoptic_result_on_hand_built_case():
    stuff = np.zeros((160, 224), dtype=np.int64)
    stuff[:, 150:] = 1
    stuff[120:, :40] = 2  # small: VOID with the default limit
    stuff[:30, :60] = S
    inp = case(stuff_map=stuff, boxes=[[20, 20, 60, 60], [40, 20, 80, 60], [200, 100, 224, 160]], labels=[0, 2, 1])
    cats = CategoryTable([Category(7, "a", True), Category(8, "b", True), Category(9, "c", True),
                          Category(20, "x", False), Category(21, "y", False), Category(22, "z", False)])
    out = postprocess_single_image(**inp, fusion=FusionConfig(stuff_area_limit=2000))
    fast = to_panoptic_result(out, cats)
    slow = panoptic_result_from_label_map(out.label_map, cats, instance_scores=inp["scores"][out.kept].tolist())
    assert np.array_equal(fast.id_map, slow.id_map) and fast.segments_info == slow.segments_info
    assert {s["category_id"] for s in fast.segments_info} == {7, 8, 9, 20, 21}
    assert all((s["score"] is None) != s["isthing"] for s in fast.segments_info)
    for limit in (0, 10**6):  # every stuff segment kept / none
        out = check_identical(inp, stuff_area_limit=limit)
        fast = to_panoptic_result(out, cats)
        slow = panoptic_result_from_label_map(out.label_map, cats, instance_scores=inp["scores"][out.kept].tolist())
        assert np.array_equal(fast.id_map, slow.id_map) and fast.segments_info == slow.segments_info


def test_input_validation():
    inp = case(boxes=[[20, 20, 60, 60]])
    with pytest.raises(ValueError):
        postprocess_single_image(**{**inp, "scores": np.zeros(2, np.float32)})
    with pytest.raises(ValueError):
        postprocess_single_image(**{**inp, "semantic_logits": inp["semantic_logits"][0]})
    with pytest.raises(ValueError):
        postprocess_single_image(**inp, fusion=FusionConfig(instance_offset=5))


def test_near_ties_are_decided_with_the_reference_arithmetic():
    # logits and probabilities one float32 step apart: the float32 rounding of the reference's
    # kernels decides, which the fast paths cannot see and the exact re-evaluation reproduces
    rng = np.random.default_rng(7)
    original, max_sizes = (150, 260), (390, 225)  # x1.5 into the network
    resized, _, (h4, w4) = sizes_for(original, *max_sizes)
    base = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_CUBIC)
                     for c in rng.normal(size=(2, 4, 6)).astype(np.float32) * 2]).astype(np.float32)
    logits = np.stack([base[0], base[0], base[1] - 4.0, base[1] - 5.0])  # (not 3 channels: another torch kernel)
    step = rng.choice([-1.0, 1.0], size=logits[1].shape).astype(np.float32)
    logits[1] = np.nextafter(logits[1], logits[1] + step * np.inf)
    expected = upsample_semantic_logits(torch.from_numpy(logits), padded_size=(h4 * 4, w4 * 4), resized_size=resized,
                                        original_size=original).argmax(0).numpy()
    got = semantic_argmax(logits, resized_size=resized, original_size=original)
    assert 0.2 < np.mean(expected == 0) < 0.8  # the tie really is decided by rounding here
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} pixels differ"
    probs = np.nextafter(np.float32(0.5), rng.choice([0.0, 1.0], size=(28, 28))).astype(np.float32)
    for box in ([3.3, 4.1, 97.6, 60.2], [10, 10, 38, 38], [0, 0, 130, 75.5]):
        box = np.array(box, dtype=np.float32)
        ref = paste_masks(torch.from_numpy(probs)[None], torch.from_numpy(box)[None], (80, 130))[0].numpy()
        y0, x0, region = paste_mask_region(probs, box, (80, 130))
        got = np.zeros_like(ref)
        got[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
        assert 0 < ref.sum() < ref.size and np.array_equal(got, ref)


def test_a_channel_best_in_no_cell_can_win_between_cells():
    # left cells: a 10, c 9, j 7.1; right cells: b 10, d 9, j 7.1. Between them a and b fall to
    # about 6 and j (never in a cell's top two) wins: the search must look beyond the top two.
    h4, w4 = 30, 40
    logits = np.full((6, h4, w4), -5.0, dtype=np.float32)
    left = np.arange(w4) < w4 // 2
    logits[0][:, left], logits[2][:, left] = 10.0, 9.0
    logits[1][:, ~left], logits[3][:, ~left] = 10.0, 9.0
    logits[4] = 7.1
    logits += (0.01 * np.sin(np.arange(h4 * w4) * 0.7)).reshape(h4, w4).astype(np.float32)
    for original in ((120, 160), (90, 117), (200, 290)):
        resized = (h4 * 4, w4 * 4)
        expected = upsample_semantic_logits(torch.from_numpy(logits), padded_size=resized, resized_size=resized,
                                            original_size=original).argmax(0).numpy()
        assert np.any(expected == 4)
        got = semantic_argmax(logits, resized_size=resized, original_size=original)
        assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} pixels differ"
