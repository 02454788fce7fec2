"""TensorRT optimisation-profile shapes for the export contract's inputs.

A profile gives min / opt / max shapes for ``images`` ``[B, H, W, 3]`` (uint8) and
``image_sizes`` ``[B, 2]`` (int64), written on the command line as ``BxHxW``. The engine accepts
any batch and size between min and max; it is fastest at opt (and TensorRT 10 INT8 calibration
runs at opt). H and W must be multiples of the model's ``size_divisor`` (32): the caller pads
images to such sizes (runtime/preprocess.py), and the FPN halves the map five times.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MIN = (1, 32, 32)
MAX_DIM = 8192  # a sanity bound on H and W


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Shape:
    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"

    def images(self) -> tuple[int, int, int, int]:
        return (self.batch, self.height, self.width, 3)

    def image_sizes(self) -> tuple[int, int]:
        return (self.batch, 2)


@dataclass(frozen=True)
class Profile:
    min: Shape
    opt: Shape
    max: Shape

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """input name -> (min, opt, max) shapes, for IOptimizationProfile.set_shape."""
        return {
            "images": (self.min.images(), self.opt.images(), self.max.images()),
            "image_sizes": (self.min.image_sizes(), self.opt.image_sizes(), self.max.image_sizes()),
        }

    def to_dict(self) -> dict[str, str]:
        return {"min": str(self.min), "opt": str(self.opt), "max": str(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "Profile":
        return cls(parse_shape(d["min"], "min"), parse_shape(d["opt"], "opt"), parse_shape(d["max"], "max"))

    def contains(self, batch: int, height: int, width: int) -> bool:
        return (self.min.batch <= batch <= self.max.batch and self.min.height <= height <= self.max.height
                and self.min.width <= width <= self.max.width)

    def explain_outside(self, batch: int, height: int, width: int) -> str:
        return (f"input {batch}x{height}x{width} (BxHxW) is outside the engine's profile "
                f"min {self.min} .. max {self.max}; rebuild the engine with a larger --max-shape or resize smaller")


_SHAPE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


def parse_shape(text: str, what: str = "shape") -> Shape:
    m = _SHAPE.match(text or "")
    if not m:
        raise ProfileError(f"--{what}-shape {text!r}: expected BxHxW, e.g. 1x800x1344 (batch x height x width)")
    b, h, w = (int(v) for v in m.groups())
    if b < 1 or h < 1 or w < 1:
        raise ProfileError(f"--{what}-shape {text}: batch, height and width must be >= 1")
    return Shape(b, h, w)


def round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def default_max(max_long_side: int, max_short_side: int, size_divisor: int, batch: int = 1) -> Shape:
    """Every image the contract's resize produces, portrait or landscape: H and W up to the long
    side rounded up to the divisor (1344 x 1344 for the published 1333 x 800)."""
    side = round_up(max(max_long_side, max_short_side), size_divisor)
    return Shape(batch, side, side)


def default_opt(max_long_side: int, max_short_side: int, size_divisor: int, batch: int = 1) -> Shape:
    """The most common padded size: landscape, short x long side (800 x 1344 for 1333 x 800)."""
    return Shape(batch, round_up(max_short_side, size_divisor), round_up(max_long_side, size_divisor))


def validate_shape(shape: Shape, what: str, size_divisor: int) -> None:
    problems = []
    for name, value in (("height", shape.height), ("width", shape.width)):
        if value % size_divisor:
            problems.append(f"{name} {value} is not a multiple of {size_divisor} (use {round_up(value, size_divisor)})")
        if value > MAX_DIM:
            problems.append(f"{name} {value} exceeds {MAX_DIM}")
    if problems:
        raise ProfileError(f"--{what}-shape {shape}: " + "; ".join(problems) +
                           f". Images are zero-padded to multiples of {size_divisor} before inference, so the "
                           f"engine only ever sees such sizes")


def make_profile(min_text: str | None, opt_text: str | None, max_text: str | None, *, size_divisor: int = 32,
                 max_long_side: int = 1333, max_short_side: int = 800) -> Profile:
    """Parse and validate min/opt/max. Missing shapes get defaults: opt = the landscape padded size,
    max = elementwise max(opt, the size covering portrait and landscape), min = 1 x 32 x 32 (capped
    by opt)."""
    opt = parse_shape(opt_text, "opt") if opt_text else None
    mx = parse_shape(max_text, "max") if max_text else None
    mn = parse_shape(min_text, "min") if min_text else None
    if opt is None:
        base = default_opt(max_long_side, max_short_side, size_divisor)
        if mx is not None:  # keep the default inside an explicit max
            base = Shape(min(base.batch, mx.batch), min(base.height, mx.height), min(base.width, mx.width))
        if mn is not None:
            base = Shape(max(base.batch, mn.batch), max(base.height, mn.height), max(base.width, mn.width))
        opt = base
    if mx is None:
        d = default_max(max_long_side, max_short_side, size_divisor, opt.batch)
        mx = Shape(max(d.batch, opt.batch), max(d.height, opt.height), max(d.width, opt.width))
    if mn is None:
        mn = Shape(min(DEFAULT_MIN[0], opt.batch), min(size_divisor, opt.height), min(size_divisor, opt.width))
    for shape, what in ((mn, "min"), (opt, "opt"), (mx, "max")):
        validate_shape(shape, what, size_divisor)
    for axis in ("batch", "height", "width"):
        a, b, c = getattr(mn, axis), getattr(opt, axis), getattr(mx, axis)
        if not a <= b <= c:
            raise ProfileError(f"profile {axis} must satisfy min <= opt <= max, got {a} / {b} / {c} "
                               f"(min {mn}, opt {opt}, max {mx})")
    return Profile(mn, opt, mx)
