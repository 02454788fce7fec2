"""The torch-free predictor applications embed.

    from pfpn.runtime import Predictor
    predictor = Predictor("model.onnx")          # or "model.engine" (TensorRT)
    result = predictor.predict("street.jpg")     # or an (H, W, 3) uint8 BGR array
    result.id_map, result.segments_info          # COCO panoptic ids (0 = VOID) and segments

Pre-processing (REFERENCE §2 resize, padding), the network (ONNX Runtime or TensorRT) and the numpy
post-processing (mask pasting, semantic upsampling, heuristic fusion) in one object. The
model file describes itself (runtime/contract.py metadata): sizes, mean/std, categories,
thresholds all come from it.

Threads: ``predict`` may be called from several threads at once. ONNX Runtime sessions run
concurrently; backends that cannot (TensorRT engines, one execution context) are serialised
with a lock, so give each thread its own Predictor to run them in parallel.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pfpn.runtime.backends import Backend, SerializedBackend, choose_backend, open_backend
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.contract import ModelMetadata
from pfpn.runtime.fusion import postprocess_single_image
from pfpn.runtime.images import load_image
from pfpn.runtime.preprocess import prepare_batch
from pfpn.runtime.result import PanopticMap, PanopticResult, to_panoptic_result


@dataclass
class Timings:
    """Seconds spent per stage (summed over the images of a call)."""

    preprocess: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0
    images: int = 0

    def add(self, other: "Timings") -> None:
        self.preprocess += other.preprocess
        self.network += other.network
        self.postprocess += other.postprocess
        self.images += other.images


def panoptic_map_single_image(outputs: dict[str, np.ndarray], index: int, *, original_size: tuple[int, int],
                              resized_size, scale_factor: tuple[float, float], metadata: ModelMetadata
                              ) -> PanopticMap:
    """Image ``index`` of a network call's outputs (runtime/contract.py) -> its model-level map:
    the numpy post-processing with the thresholds the model file records. What Predictor does after
    the network, for callers that run the network themselves (the Triton model, runtime/triton_models);
    ``runtime.result.to_panoptic_result`` gives the COCO form."""
    n = int(outputs["num_detections"][index])
    return postprocess_single_image(
        outputs["boxes"][index, :n], outputs["scores"][index, :n], outputs["labels"][index, :n],
        outputs["mask_probs"][index, :n], outputs["semantic_logits"][index],
        resized_size=(int(resized_size[0]), int(resized_size[1])), original_size=tuple(original_size[:2]),
        scale_factor=scale_factor, num_thing_classes=metadata.num_thing_classes,
        mask_threshold=metadata.mask_threshold, fusion=metadata.fusion)


class Predictor:
    """Panoptic FPN from an exported file.

    Args:
        model: ``.onnx`` (ONNX Runtime) or ``.engine`` (TensorRT) path.
        backend: "onnxruntime", "openvino" or "tensorrt"; default by file type.
        providers: ONNX Runtime execution providers in priority order ("cpu", "cuda", "tensorrt");
            those this onnxruntime build lacks are dropped with one ``ProviderWarning`` (none
            available: ``ModelError``). :attr:`providers` says what runs.
        threads: CPU threads for ONNX Runtime.
        batch_size: images per network call in :meth:`predict_batch`.
        postprocess: "auto" (TensorRT engines: the GPU kernels where they run on this GPU, else
            numpy with a one-line warning; other backends: numpy), "gpu" (the kernels or an error),
            "cpu" (numpy).
    """

    def __init__(self, model: str | os.PathLike, *, backend: str | None = None, providers: Sequence[str] = ("cpu",),
                 threads: int | None = None, batch_size: int = 1, postprocess: str = "auto",
                 **backend_options) -> None:
        from pfpn.runtime.gpu.device_fusion import POSTPROCESS_CHOICES

        if postprocess not in POSTPROCESS_CHOICES:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_CHOICES}, got {postprocess!r}")
        kwargs = dict(backend_options)
        choice = choose_backend(model, backend)
        if choice == "tensorrt":
            kwargs.update(postprocess=postprocess)
        elif postprocess == "gpu":
            raise ValueError("postprocess='gpu' needs a TensorRT engine (.engine): the kernels read the network's "
                             "outputs on the device")
        if choice == "onnxruntime":
            kwargs.update(providers=providers, threads=threads)
        elif choice == "openvino":
            kwargs.update(threads=threads)
        opened: Backend = open_backend(model, backend, **kwargs)
        self.backend: Backend = opened if getattr(opened, "thread_safe", False) else SerializedBackend(opened)
        self.metadata = opened.metadata
        # what runs: ONNX Runtime's active execution providers (short names, e.g. ("cuda", "cpu")),
        # else the backend, e.g. ("tensorrt",) or ("openvino",)
        self.providers: tuple[str, ...] = tuple(getattr(opened, "active_providers", None) or (choice,))
        self.categories = CategoryTable(self.metadata.categories)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    def settings(self) -> dict[str, float | int]:
        """The thresholds this predictor applies, as exported into the model file: score_threshold,
        max_detections (in the network), mask_threshold, mask_overlap_threshold, stuff_area_limit
        (post-processing)."""
        return self.metadata.deployment_settings()

    # ------------------------------------------------------------------------------------------
    def predict(self, image: np.ndarray | str | os.PathLike) -> PanopticResult:
        """One image: an (H, W, 3) uint8 BGR array or an image path -> PanopticResult."""
        return self.predict_detailed([image])[0][0]

    def predict_batch(self, images: Sequence[np.ndarray | str | os.PathLike]) -> list[PanopticResult]:
        """Several images, ``batch_size`` per network call."""
        return [result for result, _, _ in self.predict_detailed(images)]

    def predict_timed(self, image: np.ndarray | str | os.PathLike) -> tuple[PanopticResult, Timings]:
        """One image -> (its PanopticResult, the seconds spent per stage)."""
        result, _, timings = self.predict_detailed([image])[0]
        return result, timings

    def predict_maps(self, images: Sequence[np.ndarray | str | os.PathLike]) -> list[PanopticMap]:
        """Several images -> their model-level maps with the detections behind them."""
        return [panoptic for _, panoptic, _ in self.predict_detailed(images)]

    def predict_detailed(self, images: Sequence[np.ndarray | str | os.PathLike]
                         ) -> list[tuple[PanopticResult, PanopticMap, Timings]]:
        """Several images -> per image (PanopticResult, PanopticMap, Timings): pre-processing and
        network seconds are the call's shared equally by its images; post-processing includes the
        COCO formatting."""
        out: list[tuple[PanopticResult, PanopticMap, Timings]] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._predict_chunk(images[start:start + self.batch_size], start))
        return out

    def _predict_chunk(self, images: Sequence[np.ndarray | str | os.PathLike], offset: int
                       ) -> list[tuple[PanopticResult, PanopticMap, Timings]]:
        meta = self.metadata
        t0 = time.perf_counter()
        bgr = [load_image(im, f"image {offset + i}") for i, im in enumerate(images)]
        batch, sizes, factors = prepare_batch(bgr, meta.max_long_side, meta.max_short_side, meta.size_divisor)
        t1 = time.perf_counter()
        on_device = getattr(self.backend, "device_postprocess", False)
        if on_device:  # TensorRT + GPU post-processing: the maps come back from the device
            originals = [im.shape[:2] for im in bgr]
            device_maps = self.backend.run_panoptic(batch, sizes, originals, factors)  # type: ignore[attr-defined]
        else:
            outputs = self.backend.run(batch, sizes)
        t2 = time.perf_counter()
        out = []
        for i, image in enumerate(bgr):
            t_start = time.perf_counter()
            panoptic = device_maps[i] if on_device else panoptic_map_single_image(
                outputs, i, original_size=image.shape[:2], resized_size=sizes[i], scale_factor=factors[i],
                metadata=meta)
            result = to_panoptic_result(panoptic, self.categories)
            timings = Timings(preprocess=(t1 - t0) / len(bgr), network=(t2 - t1) / len(bgr),
                              postprocess=time.perf_counter() - t_start, images=1)
            out.append((result, panoptic, timings))
        return out
