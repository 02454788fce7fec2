"""Hand-built fusion cases for the GPU post-processing kernels (runtime/gpu/kernels.py) under
Triton's interpreter, against the PyTorch reference's label map (training/predictor.py), exactly;
and the exact fma emulation the interpreter needs (tests/runtime/gpu/interpreter_harness.py: why,
and how the checks run in a child process).
"""
from __future__ import annotations

import math

import numpy as np

from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.gpu.device_fusion import ImageGeometry, KernelConfig

from tests.runtime.gpu.interpreter_harness import (CFG, FULL, GEOM, IN_CHILD, S, T, VOID, exact_fma_f32,
                                                   interpreter_tests, make_inputs, run_case, run_interpreted,
                                                   stuff_logits)

if IN_CHILD:
    import torch


child_results, test_interpreted = interpreter_tests(__file__)


# ----------------------------------------------------------------------------------------------
# tests


def check_exact_fma_emulation():
    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal(100000).astype(np.float32) * 10 for _ in range(3))
    r = exact_fma_f32(x, y, z)
    ref = np.array([np.float32(float(np.float64(a) * np.float64(b) + np.float64(c))) for a, b, c in
                    zip(x[:2000], y[:2000], z[:2000])])  # double rounding is fine at these magnitudes
    np.testing.assert_array_equal(r[:2000], ref)
    # a tie case: p exactly halfway between two float32, z tiny breaks the tie
    a = np.float32(1 + 2**-12)  # a * a = 1 + 2**-11 + 2**-24: exactly a float32 tie
    assert exact_fma_f32(a, a, np.float32(2**-60)) == np.float32(1 + 2**-11 + 2**-23)
    assert exact_fma_f32(a, a, np.float32(-(2**-60))) == np.float32(1 + 2**-11)
    if hasattr(math, "fma"):  # Python >= 3.13
        for a, b, c in zip(x[:1000], y[:1000], z[:1000]):
            assert exact_fma_f32(a, b, c) == np.float32(math.fma(float(a), float(b), float(c)))


def check_launch_sequence():
    trace = []
    inputs = make_inputs(d=CFG.max_detections, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    run_interpreted(inputs, CFG, GEOM, trace=trace)
    d = CFG.max_detections
    assert trace == (["fusion_sort_kernel"] + ["instance_stats_kernel", "instance_write_kernel"] * d
                     + ["semantic_kernel", "small_stuff_kernel"])


def check_no_detections_stuff_and_void():
    # left half stuff 1, right half the things channel (-> VOID), a small patch of stuff 3
    def region(y, x):
        if 4 <= y < 7 and 2 <= x < 5:
            return 3
        return 1 if x < 12 else S
    logits = stuff_logits(GEOM, region)
    inputs = make_inputs(d=CFG.max_detections, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)),
                         logits=logits)
    got, kept = run_case(inputs)
    assert len(kept) == 0
    assert set(np.unique(got)) <= {T + 1, T + 3, VOID}
    assert (got == VOID).any() and (got == T + 1).any()


def check_stuff_area_limit():
    # stuff 3 patch small (-> VOID), stuff 2 patch large enough to stay
    def region(y, x):
        if 4 <= y < 6 and 2 <= x < 4:
            return 3  # ~8x8 px region -> < 100
        if y >= 8:
            return 2
        return 0
    cfg = KernelConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=4,
                       fusion=FusionConfig(stuff_area_limit=100))
    inputs = make_inputs(d=4, boxes=[], scores=[], labels=[], probs=np.zeros((0, 28, 28)), logits=stuff_logits(GEOM, region))
    got, _ = run_case(inputs, cfg)
    assert not (got == T + 3).any() and (got == T + 2).any() and (got == VOID).any()


def check_overlap_skip_and_occlusion_order():
    # A (score .9) and B (.8) overlap by less than half of B: B keeps its free pixels only;
    # C (.7) lies mostly inside A: skipped; D (.95) is first even though listed last
    boxes = [[10, 10, 40, 40], [30, 10, 60, 40], [12, 12, 30, 30], [50, 40, 75, 58]]
    scores = [0.9, 0.8, 0.7, 0.95]
    labels = [1, 2, 3, 4]
    probs = np.stack([FULL] * 4)
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=scores, labels=labels, probs=probs,
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    got, kept = run_case(inputs)
    assert kept.tolist() == [3, 0, 1]  # D, A, B; C skipped
    assert got[20, 20] == 1 + 2 * 1000 and got[20, 50] == 2 + 3 * 1000 and got[50, 60] == 4 + 1 * 1000
    assert got[20, 35] == 1 + 2 * 1000  # overlap: the earlier instance keeps it


def _box_mask_area(box, geometry=GEOM):
    """Pixels of a full-probability box mask as the reference pastes it (for building exact cases)."""
    from pfpn.training.model.panoptic_fusion import paste_masks

    m = paste_masks(torch.ones(1, 28, 28), torch.tensor([box], dtype=torch.float32), geometry.original_size)[0]
    return m


def check_exactly_half_covered_is_kept_and_more_is_skipped():
    # B's mask is exactly twice the overlap with A: covered / (area + 1e-5) < 0.5 -> kept.
    a_box = [10.0, 10.0, 30.0, 30.0]
    ma = _box_mask_area(a_box)
    # search a B box whose mask overlaps A's by exactly half of B's area
    found = None
    for x1 in np.arange(15.0, 30.0, 0.25):
        for x2 in np.arange(x1 + 4, 60.0, 0.25):
            b_box = [float(x1), 10.0, float(x2), 30.0]
            mb = _box_mask_area(b_box)
            area, cov = int(mb.sum()), int((mb & ma).sum())
            if area and 2 * cov == area:
                found = b_box
                break
        if found:
            break
    assert found is not None
    inputs = make_inputs(d=4, boxes=[a_box, found], scores=[0.9, 0.8], labels=[0, 1], probs=np.stack([FULL] * 2),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    cfg = KernelConfig(num_thing_classes=T, num_stuff_classes=S, max_detections=4,
                       fusion=FusionConfig(stuff_area_limit=50))
    _, kept = run_case(inputs, cfg)
    assert kept.tolist() == [0, 1]
    # one more column of overlap -> more than half covered -> skipped
    shifted = [found[0] - 1.0, found[1], found[2] - 1.0, found[3]]
    mb = _box_mask_area(shifted)
    assert 2 * int((mb & ma).sum()) > int(mb.sum())
    inputs = make_inputs(d=4, boxes=[a_box, shifted], scores=[0.9, 0.8], labels=[0, 1], probs=np.stack([FULL] * 2),
                         logits=stuff_logits(GEOM, lambda y, x: 0))
    _, kept = run_case(inputs, cfg)
    assert kept.tolist() == [0]


def check_empty_masks_and_degenerate_boxes():
    zero = np.zeros((28, 28), np.float32)
    boxes = [[10, 10, 40, 40],  # probabilities all 0 -> area 0 -> skipped
             [20, 20, 20, 30],  # zero width (division by zero -> inf/NaN grid)
             [70, 50, 70.5, 50.25],  # tiny box near the corner
             [0, 0, 0, 0],  # empty box at the corner (the network clips boxes to the image;
             # the reference cannot paste boxes lying entirely outside it)
             [5, 5, 70, 55]]  # real one
    probs = np.stack([zero, FULL, FULL, FULL, FULL])
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=[0.99, 0.98, 0.97, 0.96, 0.5],
                         labels=[0, 1, 2, 3, 4], probs=probs, logits=stuff_logits(GEOM, lambda y, x: 2))
    got, kept = run_case(inputs)
    assert 0 not in kept.tolist()


def check_things_channel_is_void_where_no_instance():
    def region(y, x):
        return S if 5 <= x < 15 else 4
    inputs = make_inputs(d=CFG.max_detections, boxes=[[30, 5, 45, 40]], scores=[0.9], labels=[5],
                         probs=FULL[None], logits=stuff_logits(GEOM, region))
    got, kept = run_case(inputs)
    assert kept.tolist() == [0] and (got == VOID).any() and (got == 5 + 1000).any()


def check_scale_factor_and_padding_crop():
    # resized 90x120 inside a 96x128 padded input, original 60x80: boxes in resized pixels
    geometry = ImageGeometry(original_size=(60, 80), resized_size=(90, 120), padded_size=(96, 128),
                             scale_factor=(120 / 80, 90 / 60))
    rng = np.random.default_rng(5)
    lh, lw = geometry.logits
    logits = rng.standard_normal((S + 1, lh, lw)).astype(np.float32) * 3
    logits[:, :, 26:] = 50.0 * (np.arange(S + 1) == 0)[:, None, None]  # padding area: must be cropped away
    boxes = [[15.3, 20.7, 70.2, 80.9], [60.5, 10.1, 118.4, 60.6]]
    probs = rng.random((2, 28, 28)).astype(np.float32)
    inputs = make_inputs(d=CFG.max_detections, boxes=boxes, scores=[0.9, 0.8], labels=[1, 2], probs=probs,
                         logits=logits)
    run_case(inputs, geometry=geometry)
