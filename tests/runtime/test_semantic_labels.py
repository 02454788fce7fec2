"""runtime/semantic_labels.py against the PyTorch reference's two-stage upsampling + argmax
(training.model.panoptic_fusion.upsample_semantic_logits), on the inputs that drive its tile
evaluation into each of its paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pfpn.runtime.semantic_labels import K_BOUNDS, TILE, analyse_semantic_windows, label_undecided_pixels, semantic_argmax
from pfpn.training.model.panoptic_fusion import upsample_semantic_logits


def torch_argmax(logits: np.ndarray, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    h4, w4 = logits.shape[1:]
    return upsample_semantic_logits(torch.from_numpy(logits), padded_size=(h4 * 4, w4 * 4), resized_size=resized,
                                    original_size=original).argmax(0).numpy()


def noise_logits(kind: str, channels: int = 40, seed: int = 0, block: int = 1) -> np.ndarray:
    """Cell-level noise, constant over ``block`` x ``block`` cells (plus a little white noise
    when block > 1): white noise puts many candidates in every tile, blocks few."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(channels, -(-50 // block), -(-84 // block))).astype(np.float32)
    logits = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :50, :84]
    if block > 1:
        logits = logits + rng.normal(0, 0.05, logits.shape).astype(np.float32)
    if kind == "nan":
        logits[3, 10:14, 30:33] = np.nan
        logits[:, 40, 70] = np.nan
    elif kind == "inf":
        logits[5, 20, 20] = np.inf
        logits[6, 30, 30] = -np.inf
    elif kind == "ties":  # coarse steps, as quantized outputs: exact ties in many cells
        logits = np.round(logits * 2) / 2
    return np.ascontiguousarray(logits, dtype=np.float32)


INPUTS = [("noise", 40, 1), ("noise", 12, 3), ("noise", 30, 6), ("ties", 40, 1), ("nan", 40, 1), ("inf", 40, 1),
          ("nan", 12, 3)]


# non-finite logits are left out where the crop already has the output size: torch copies there,
# so a NaN or inf next to a pixel's support never reaches it, while the exact re-evaluation
# (torch's general kernel) multiplies it by a zero weight (module docstring)
SIZES = [(300, 500), (200, 333), (451, 751)]
CASES = [(*inp, size) for inp in INPUTS for size in SIZES if not (inp[0] in ("nan", "inf") and size == (200, 333))]


@pytest.mark.parametrize("kind, channels, block, original", CASES)
def test_noise_matches_the_reference(kind, channels, block, original):
    logits = noise_logits(kind, channels, block=block)
    resized = (200, 333)
    with np.errstate(invalid="ignore"):
        expected = torch_argmax(logits, resized, original)
        got = semantic_argmax(logits, resized_size=resized, original_size=original)
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} pixels differ"


def test_the_inputs_reach_every_candidate_group():
    # the test above is only worth something if its tiles span all candidate-count groups
    groups = set()
    for kind, channels, block in INPUTS:
        logits = noise_logits(kind, channels, block=block)
        with np.errstate(invalid="ignore"):
            member = logits >= np.sort(logits, axis=0)[-2]
        h, w = member.shape[1:]
        counts = [member[:, y:y + TILE + 2, x:x + TILE + 2].any(axis=(1, 2)).sum()
                  for y in range(0, h, TILE) for x in range(0, w, TILE)]
        groups |= set(np.searchsorted(np.array(K_BOUNDS), counts).tolist())
    assert groups >= set(range(1, len(K_BOUNDS) + 1)), groups  # 3 candidates ... more than 12


def test_subsets_of_pixels_agree_with_the_whole():
    # labels do not depend on which other pixels are asked (tiles are formed from the request)
    logits = noise_logits("noise", seed=1)
    sem = analyse_semantic_windows(logits, (200, 333), (300, 500), np.int64)
    yy, xx = np.nonzero(np.ones((300, 500), dtype=bool))
    whole = label_undecided_pixels(sem, yy, xx)
    pick = np.random.default_rng(2).random(yy.size) < 0.01
    assert np.array_equal(label_undecided_pixels(sem, yy[pick], xx[pick]), whole[pick])
    assert label_undecided_pixels(sem, yy[:0], xx[:0]).shape == (0,)


def test_constant_logits_take_the_first_channel():
    logits = np.zeros((6, 20, 28), dtype=np.float32)
    got = semantic_argmax(logits, resized_size=(80, 112), original_size=(60, 84))
    assert np.array_equal(got, torch_argmax(logits, (80, 112), (60, 84)))
    assert not got.any()
