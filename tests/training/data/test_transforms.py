"""Tests of training/data/transforms.py against hand-computed references."""
from __future__ import annotations

import numpy as np
import pytest

from pfpn.training.data.transforms import (TestTransform, TrainTransform, hflip_sample, random_flip,
                                      random_multiscale_resize, rescale_size, resize_sample)


@pytest.mark.parametrize("w,h,limits,expected", [
    (640, 480, (1333, 800), (1067, 800)),   # scale 800/480: 1066.67 -> 1067 (rounds up)
    (480, 640, (1333, 800), (800, 1067)),
    (2000, 500, (1333, 800), (1333, 333)),  # scale 1333/2000: 333.25 -> 333 (rounds down)
    (640, 427, (1333, 800), (1199, 800)),   # 1199.06 -> 1199
    (500, 375, (1333, 800), (1067, 800)),   # 1066.67 -> 1067
    (1333, 800, (1333, 800), (1333, 800)),  # already fits exactly
    (4, 1, (10, 100), (10, 3)),             # 2.5 -> 3: half rounds up (Python's round gives 2)
    (7, 3, (10, 5), (10, 4)),               # scale 10/7: 4.29 -> 4
])
def test_rescale_size(w, h, limits, expected):
    new_w, new_h, scale = rescale_size(w, h, *limits)
    assert (new_w, new_h) == expected
    assert scale == pytest.approx(min(limits[0] / max(w, h), limits[1] / min(w, h)))


def _sample(h=30, w=40, seed=0):
    """Two rectangular instances + a semantic map with labels {0, 1, 5, 255}."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[4, 3, 20, 15], [22, 10, 39, 29]], np.float32)  # xyxy pixel edges
    masks = np.zeros((2, h, w), np.uint8)
    sem = np.full((h, w), 5, np.uint8)
    sem[: h // 3] = 255
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[k, y0:y1, x0:x1] = 1
        sem[y0:y1, x0:x1] = k
    return {"image": image, "gt_boxes": boxes, "gt_labels": np.array([0, 1]), "gt_masks": masks,
            "gt_semantic_seg": sem, "ori_shape": (h, w), "img_shape": (h, w),
            "scale_factor": (1.0, 1.0), "flip": False}


def _mask_box(m):
    ys, xs = np.nonzero(m)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_resize_sample_shapes_and_factors():
    s = _sample()
    r = resize_sample(s, 100, 45)  # scale = min(100/40, 45/30) = 1.5 -> 60x45
    assert r["image"].shape == (45, 60, 3) and r["image"].dtype == np.uint8
    assert r["gt_masks"].shape == (2, 45, 60) and r["gt_masks"].dtype == np.uint8
    assert r["gt_semantic_seg"].shape == (45, 60) and r["gt_semantic_seg"].dtype == np.uint8
    assert r["img_shape"] == (45, 60)
    assert r["scale_factor"] == (1.5, 1.5) and all(type(v) is float for v in r["scale_factor"])
    assert r["gt_boxes"].dtype == np.float32
    np.testing.assert_allclose(r["gt_boxes"], s["gt_boxes"] * 1.5)
    # masks stay consistent with the boxes: within a pixel at scale 1.5, exact at scale 2
    for b, m in zip(r["gt_boxes"], r["gt_masks"]):
        assert np.abs(_mask_box(m) - b).max() <= 0.5
    r2 = resize_sample(s, 100, 60)
    assert r2["img_shape"] == (60, 80)
    for b, m in zip(r2["gt_boxes"], r2["gt_masks"]):
        np.testing.assert_array_equal(_mask_box(m), b)
    # nearest keeps the label set; input untouched
    assert set(np.unique(r["gt_semantic_seg"])) == {0, 1, 5, 255}
    assert s["image"].shape == (30, 40, 3) and s["img_shape"] == (30, 40)
    assert r["gt_labels"] is s["gt_labels"]


def test_resize_non_uniform_factors_and_clip():
    s = _sample(h=30, w=41)
    r = resize_sample(s, 1000, 20)  # scale 2/3: 41 * 2/3 + .5 = 27.83 -> 27, 30 -> 20
    assert r["img_shape"] == (20, 27)
    sx, sy = 27 / 41, 20 / 30
    assert r["scale_factor"] == (sx, sy)
    exp = s["gt_boxes"] * np.array([sx, sy, sx, sy], np.float32)
    np.testing.assert_allclose(r["gt_boxes"], exp, rtol=1e-6)
    # a box outside the image gets clipped
    s2 = dict(s, gt_boxes=np.array([[-5, -2, 50, 40]], np.float32), gt_masks=s["gt_masks"][:1])
    r2 = resize_sample(s2, 1000, 20)
    np.testing.assert_allclose(r2["gt_boxes"], [[0, 0, 27, 20]])
    # mask extents vs boxes within one resized pixel
    for b, m in zip(r["gt_boxes"], r["gt_masks"]):
        assert np.abs(_mask_box(m) - b).max() <= 1.0


def test_resize_composes_scale_factor_and_handles_no_instances():
    s = _sample()
    s = dict(s, gt_boxes=np.zeros((0, 4), np.float32), gt_masks=np.zeros((0, 30, 40), np.uint8))
    r = resize_sample(resize_sample(s, 100, 60), 100, 30)  # 40x30 -> 80x60 -> 40x30
    assert r["gt_masks"].shape == (0, 30, 40) and r["gt_boxes"].shape == (0, 4)
    assert r["scale_factor"] == (1.0, 1.0)
    only_image = resize_sample({"image": s["image"]}, 100, 60)
    assert set(only_image) == {"image", "img_shape", "scale_factor"}


def test_flip_boxes_masks_semantic():
    s = _sample()
    f = hflip_sample(s)
    assert f["flip"] is True
    np.testing.assert_array_equal(f["gt_boxes"], [[20, 3, 36, 15], [1, 10, 18, 29]])
    for b, m in zip(f["gt_boxes"], f["gt_masks"]):
        np.testing.assert_array_equal(_mask_box(m), b)
    np.testing.assert_array_equal(f["image"][:, 0], s["image"][:, -1])
    np.testing.assert_array_equal(f["gt_semantic_seg"][:, 3], s["gt_semantic_seg"][:, 36])
    ff = hflip_sample(f)
    assert ff["flip"] is False
    for k in ("image", "gt_boxes", "gt_masks", "gt_semantic_seg"):
        np.testing.assert_array_equal(ff[k], s[k])
    assert f["image"].flags.c_contiguous and f["gt_masks"].flags.c_contiguous


def test_random_flip_probability_and_flag():
    s = _sample()
    assert random_flip(s, 0.0, np.random.default_rng(0))["flip"] is False
    assert random_flip(s, 1.0, np.random.default_rng(0))["flip"] is True
    rng = np.random.default_rng(123)
    flips = [random_flip(s, 0.5, rng)["flip"] for _ in range(400)]
    assert 150 < sum(flips) < 250


def test_multiscale_draws_inclusive_range():
    s = _sample(h=30, w=40)
    rng = np.random.default_rng(0)
    shorts = {random_multiscale_resize(s, 1000, (28, 31), rng)["img_shape"][0] for _ in range(200)}
    assert shorts == {28, 29, 30, 31}
    with pytest.raises(ValueError):
        random_multiscale_resize(s, 1000, (31, 28), rng)


def test_train_and_test_transforms_consistent():
    s = _sample(h=30, w=40)
    t = TrainTransform(max_long=200, short_side_range=(60, 90), flip_prob=0.5)
    rng = np.random.default_rng(5)
    seen_flip = set()
    for _ in range(20):
        out = t(s, rng)
        h, w = out["img_shape"]
        assert 60 <= h <= 90 and out["image"].shape[:2] == (h, w)
        seen_flip.add(out["flip"])
        for b, m in zip(out["gt_boxes"], out["gt_masks"]):
            assert np.abs(_mask_box(m) - b).max() <= 1.0
        assert set(np.unique(out["gt_semantic_seg"])) == {0, 1, 5, 255}
    assert seen_flip == {True, False}
    # same rng seed -> same result; the internal generator is used without rng
    a, b = t(s, np.random.default_rng(9)), t(s, np.random.default_rng(9))
    assert a["img_shape"] == b["img_shape"] and a["flip"] == b["flip"]
    assert TrainTransform(seed=1)(s)["img_shape"] == (800, 1067)
    r = TestTransform(max_long=1333, max_short=800)(s)
    assert r["img_shape"] == (800, 1067) and r["flip"] is False
