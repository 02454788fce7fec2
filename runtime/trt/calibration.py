"""INT8 calibration data, the one feed of every calibration (TensorRT 10's calibrator, the Q/DQ
ranges of runtime/trt/qdq.py, ONNX Runtime's static quantization in runtime/quantize_int8.py):
real images through the runtime's pre-processing (runtime/preprocess.py), each resized by the
contract's rule and zero-padded like the predictor pads a batch (:func:`calibration_feeds`). With
a ``box`` (TensorRT 10 calibrates at the profile's opt shape) an image whose resize does not fit
is shrunk further, keeping its ratio, and the batch is padded to exactly the box.

Also the TensorRT 10 entropy calibrator (:func:`make_trt10_calibrator`); ``tensorrt`` and
``cuda`` are imported only when it is called.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pfpn.runtime.images import read_image
from pfpn.runtime.preprocess import pad_batch, rescale_size, resize_image


class CalibrationError(ValueError):
    pass


def fit_size(width: int, height: int, max_long_side: int, max_short_side: int, box_height: int,
             box_width: int) -> tuple[int, int]:
    """The contract's resize, then (only if it does not fit) a further keep-ratio shrink into the
    profile's ``box_height x box_width``. -> (new_w, new_h)."""
    new_w, new_h, _ = rescale_size(width, height, max_long_side, max_short_side)
    if new_w <= box_width and new_h <= box_height:
        return new_w, new_h
    s = min(box_width / new_w, box_height / new_h)
    return max(1, min(box_width, int(new_w * s + 0.5))), max(1, min(box_height, int(new_h * s + 0.5)))


def fit_image(image_bgr: np.ndarray, *, max_long_side: int, max_short_side: int,
              box: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> the contract's keep-ratio resize (runtime.preprocess.resize_image);
    with ``box`` (height, width), one that does not fit is resized instead to :func:`fit_size`
    (one bilinear resize of the original, ratio kept)."""
    import cv2

    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise CalibrationError(f"calibration images must be HxWx3, got {image_bgr.shape}")
    resized, _ = resize_image(image_bgr, max_long_side, max_short_side)
    if box is None or (resized.shape[0] <= box[0] and resized.shape[1] <= box[1]):
        return resized
    h, w = image_bgr.shape[:2]
    new_w, new_h = fit_size(w, h, max_long_side, max_short_side, box[0], box[1])
    return cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def make_feed(images_bgr: Sequence[np.ndarray], *, max_long_side: int, max_short_side: int, size_divisor: int = 1,
              box: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One calibration feed of the contract's inputs: {"images": (B, H, W, 3) uint8,
    "image_sizes": (B, 2) int64 (h, w) of each resized image}. H, W: the batch padded to multiples
    of ``size_divisor`` (runtime.preprocess.pad_batch), or exactly ``box`` (height, width)."""
    if not images_bgr:
        raise CalibrationError("empty calibration batch")
    resized = [fit_image(im, max_long_side=max_long_side, max_short_side=max_short_side, box=box)
               for im in images_bgr]
    images, sizes = pad_batch(resized, size_divisor)
    if box is not None:
        padded = np.zeros((len(resized), box[0], box[1], 3), dtype=np.uint8)
        padded[:, :images.shape[1], :images.shape[2]] = images
        images = padded
    return {"images": images, "image_sizes": sizes}


def calibration_feeds(paths: Sequence[str | os.PathLike], *, max_long_side: int, max_short_side: int,
                      size_divisor: int = 1, batch: int = 1, box: tuple[int, int] | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
    """The images of ``paths`` (read lazily) as :func:`make_feed` feeds of exactly ``batch``
    images (a last incomplete group is dropped)."""
    if batch < 1:
        raise CalibrationError(f"batch must be >= 1, got {batch}")
    if len(paths) < batch:
        raise CalibrationError(f"{len(paths)} calibration images are fewer than the batch {batch} of the profile's "
                               f"opt shape")
    for start in range(0, len(paths) - batch + 1, batch):
        yield make_feed([read_image(p) for p in paths[start:start + batch]], max_long_side=max_long_side,
                        max_short_side=max_short_side, size_divisor=size_divisor, box=box)


def num_batches(num_images: int, batch: int) -> int:
    return num_images // batch


# ----------------------------------------------------------------------------------------------
# TensorRT 10 calibrator (weakly typed INT8); TensorRT 11 has no calibrators (see qdq.py)

def make_trt10_calibrator(batches: Iterable[dict[str, np.ndarray]], batch_size: int,
                          cache_file: str | os.PathLike | None = None) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (dicts of the network inputs, consumed
    lazily) from device memory. Reads/writes ``cache_file`` when given (a valid cache makes
    TensorRT skip calibration)."""
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.trt.runner import import_tensorrt

    import_tensorrt()  # a one-line ImportError when TensorRT is missing
    import tensorrt as trt

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise RuntimeError(f"TensorRT {getattr(trt, '__version__', '?')} has no INT8 calibrators (TensorRT 11 "
                           f"removed them); use the Q/DQ path (--trt-api 11)")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.batch_size = int(batch_size)
            self.seen = 0
            self.cache = Path(cache_file) if cache_file else None
            self.buffers: dict[str, cuda_driver.DeviceBuffer] = {}
            self.cuda_context = cuda_driver.CudaContext(0)  # the builder's device (primary context)
            self.stream = self.cuda_context.create_stream()

        def get_batch_size(self) -> int:
            return self.batch_size

        # TensorRT's protocol: None when the data is exhausted (the stubs only say list[int])
        def get_batch(self, names: list[str]) -> list[int] | None:  # type: ignore[override]
            feed = next(self.batches, None)
            if feed is None:
                return None
            self.seen += 1
            pointers = []
            for name in names:
                host = np.ascontiguousarray(feed[name])
                buf = self.buffers.get(name)
                if buf is None or buf.nbytes < host.nbytes:
                    if buf is not None:
                        buf.close()
                    buf = self.buffers[name] = cuda_driver.DeviceBuffer(host.nbytes)
                buf.copy_from_host(host, self.stream)
                pointers.append(buf.ptr)
            self.stream.synchronize()  # TensorRT reads the buffers as soon as this returns
            return pointers

        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            if self.cache is not None and self.cache.is_file():
                return self.cache.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache is not None:
                from pfpn.runtime.files import atomic_write_bytes

                atomic_write_bytes(self.cache, bytes(cache))

        def free(self) -> None:
            for buf in self.buffers.values():
                buf.close()
            self.buffers.clear()
            self.stream.close()
            self.cuda_context.close()

    return EntropyCalibrator()
