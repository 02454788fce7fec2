"""Optimisation-profile shapes (runtime/trt/profiles.py): parsing, defaults, validation messages."""
from __future__ import annotations

import pytest

from pfpn.runtime.trt.profiles import Profile, ProfileError, Shape, make_profile, parse_shape


def test_parse_shape():
    assert parse_shape("1x800x1344") == Shape(1, 800, 1344)
    assert parse_shape(" 2 X 64 x 96 ") == Shape(2, 64, 96)
    assert parse_shape("4,32,32") == Shape(4, 32, 32)
    for bad in ("800x1344", "1x800x1344x3", "axbxc", "", "0x32x32"):
        with pytest.raises(ProfileError):
            parse_shape(bad, "opt")


def test_defaults_of_the_published_config_cover_portrait_and_landscape():
    p = make_profile(None, None, None, size_divisor=32, max_long_side=1333, max_short_side=800)
    assert (str(p.min), str(p.opt), str(p.max)) == ("1x32x32", "1x800x1344", "1x1344x1344")
    assert p.contains(1, 800, 1344) and p.contains(1, 1344, 800)  # landscape and portrait resizes
    tiny = make_profile(None, None, None, size_divisor=32, max_long_side=256, max_short_side=192)
    assert (str(tiny.opt), str(tiny.max)) == ("1x192x256", "1x256x256")


def test_explicit_shapes_and_partial_defaults():
    p = make_profile("1x320x320", "2x800x1344", "4x1344x1344")
    assert p.input_shapes() == {
        "images": ((1, 320, 320, 3), (2, 800, 1344, 3), (4, 1344, 1344, 3)),
        "image_sizes": ((1, 2), (2, 2), (4, 2)),
    }
    only_opt = make_profile(None, "8x640x640", None)
    assert only_opt.min == Shape(1, 32, 32) and only_opt.max == Shape(8, 1344, 1344)
    only_max = make_profile(None, None, "1x512x512")  # the default opt is kept inside an explicit max
    assert only_max.opt == Shape(1, 512, 512)
    assert Profile.from_dict(p.to_dict()) == p


def test_bad_shapes_are_explained():
    with pytest.raises(ProfileError, match=r"width 1333 is not a multiple of 32 \(use 1344\)"):
        make_profile(None, "1x800x1333", None)
    with pytest.raises(ProfileError, match="zero-padded to multiples of 32"):
        make_profile("1x30x32", None, None)
    with pytest.raises(ProfileError, match="min <= opt <= max"):
        make_profile("1x64x64", "1x32x32", "1x128x128")
    with pytest.raises(ProfileError, match="batch must satisfy"):
        make_profile("4x32x32", "2x64x64", "8x128x128")
    with pytest.raises(ProfileError, match="exceeds"):
        make_profile(None, None, "1x32x16384")
    with pytest.raises(ProfileError, match="expected BxHxW"):
        make_profile(None, "800x1344", None)


def test_outside_message():
    p = make_profile("1x64x64", "1x128x128", "2x256x256")
    assert not p.contains(3, 128, 128)
    assert "rebuild the engine with a larger --max-shape" in p.explain_outside(3, 128, 128)
