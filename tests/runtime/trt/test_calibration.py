"""Calibration batches (runtime/trt/calibration.py): the runtime's resize, a shrink to fit the
profile's opt shape, exact padding; image listing; the TensorRT 10 calibrator's lazy import."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pfpn.runtime.preprocess import resize_image
from pfpn.runtime.trt import calibration as cal
from pfpn.runtime.images import ImageError, list_images
from pfpn.runtime.trt.calibration import CalibrationError


def _write_images(folder, sizes):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_fit_size_is_the_runtime_resize_when_it_fits():
    assert cal.fit_size(640, 480, 1333, 800, 800, 1344) == (1067, 800)  # REFERENCE §2: 800 / 480 scale
    assert cal.fit_size(480, 640, 1333, 800, 1344, 1344) == (800, 1067)  # portrait, square profile
    # portrait image in a landscape profile: shrunk further to fit 800 rows, ratio kept
    w, h = cal.fit_size(480, 640, 1333, 800, 800, 1344)
    assert h == 800 and w == 600


def test_prepared_image_equals_runtime_preprocessing_plus_padding():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    feed = cal.make_feed([image], max_long_side=256, max_short_side=192, box=(224, 256))
    padded, (h, w) = feed["images"][0], feed["image_sizes"][0].tolist()
    resized, _ = resize_image(image, 256, 192)
    assert (h, w) == resized.shape[:2] == (192, 256)
    assert padded.shape == (224, 256, 3) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:h, :w], resized)
    assert not padded[h:].any()


def test_batches_from_a_folder(tmp_path):
    folder = _write_images(tmp_path / "imgs", [(100, 120), (90, 160), (160, 90), (64, 64), (50, 70)])
    paths = list_images(folder)
    assert [p.name for p in paths] == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    assert len(list_images(folder, count=2)) == 2
    batches = list(cal.calibration_feeds(paths, batch=2, box=(96, 128), max_long_side=128,
                                         max_short_side=96))
    assert len(batches) == 2 == cal.num_batches(5, 2)  # the incomplete last group is dropped
    for b in batches:
        assert b["images"].shape == (2, 96, 128, 3) and b["images"].dtype == np.uint8
        assert b["image_sizes"].dtype == np.int64
        assert (b["image_sizes"][:, 0] <= 96).all() and (b["image_sizes"][:, 1] <= 128).all()
    # the portrait 160x90 image is shrunk into the 96x128 landscape box
    assert batches[1]["image_sizes"][0].tolist() == [96, 54]


def test_errors(tmp_path):
    folder = _write_images(tmp_path / "imgs", [(40, 40)])
    with pytest.raises(CalibrationError, match="fewer than the batch"):
        list(cal.calibration_feeds(list_images(folder), batch=2, box=(64, 64), max_long_side=64,
                                   max_short_side=64))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot decode"):
        next(cal.calibration_feeds([bad], box=(64, 64), max_long_side=64, max_short_side=64))


def test_trt10_calibrator_needs_tensorrt():
    # tensorrt is imported only here; without it (type stubs are not TensorRT) the reason is one line
    from pfpn.runtime.trt.runner import import_tensorrt

    try:
        import_tensorrt()
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="TensorRT is not installed") as e:
        cal.make_trt10_calibrator(iter([]), 1)
    assert "\n" not in str(e.value)
