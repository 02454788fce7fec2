"""The torch-free predictor applications embed.

    from pfpn.runtime import Predictor
    predictor = Predictor("model.onnx")          # or "model.engine" (TensorRT)
    result = predictor.predict("street.jpg")     # or an (H, W, 3) uint8 BGR array
    result.id_map, result.segments_info          # COCO panoptic ids (0 = VOID) and segments

Pre-processing (SPEC resize, padding), the network (ONNX Runtime or TensorRT) and the numpy
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
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pfpn.runtime.backends import Backend, SerializedBackend, choose_backend, open_backend
from pfpn.runtime.images import load_image
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.postprocess import postprocess_single_image, to_panoptic_result
from pfpn.runtime.preprocess import prepare_batch
from pfpn.runtime.result import PanopticResult, panoptic_result_from_label_map


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


@dataclass
class Prediction:
    """What ``predict_detailed`` returns: the result plus the raw detections behind it."""

    result: PanopticResult
    label_map: np.ndarray  # (H, W) model-level map: label + k * offset, stuff labels, VOID
    boxes: np.ndarray  # (N, 4) detections in original-image pixels
    scores: np.ndarray
    labels: np.ndarray
    timings: Timings = field(default_factory=Timings)


def prediction_single_image(outputs: dict[str, np.ndarray], index: int, *, original_size: tuple[int, int],
                            resized_size, scale_factor: tuple[float, float], metadata, categories: CategoryTable
                            ) -> Prediction:
    """Image ``index`` of a network call's outputs (runtime/contract.py) -> its Prediction: the
    numpy post-processing with the thresholds the model file records. What Predictor does after
    the network, for callers that run the network themselves (the Triton model, runtime/triton_models)."""
    n = int(outputs["num_detections"][index])
    boxes = outputs["boxes"][index, :n]
    scores = outputs["scores"][index, :n]
    labels = outputs["labels"][index, :n]
    post = postprocess_single_image(
        boxes, scores, labels, outputs["mask_probs"][index, :n], outputs["semantic_logits"][index],
        resized_size=(int(resized_size[0]), int(resized_size[1])), original_size=tuple(original_size[:2]),
        scale_factor=scale_factor, num_thing_classes=metadata.num_thing_classes,
        mask_threshold=metadata.mask_threshold, mask_overlap_threshold=metadata.mask_overlap_threshold,
        stuff_area_limit=metadata.stuff_area_limit, instance_offset=metadata.instance_offset)
    result = to_panoptic_result(post, categories, scores)
    sx, sy = scale_factor
    boxes_orig = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
    return Prediction(result, post.label_map, boxes_orig, scores.copy(), labels.copy())


class Predictor:
    """Panoptic FPN from an exported file.

    Args:
        model: ``.onnx`` (ONNX Runtime) or ``.engine`` (TensorRT) path.
        backend: "onnxruntime", "openvino" or "tensorrt"; default by file type.
        providers: ONNX Runtime execution providers in priority order ("cpu", "cuda", "tensorrt").
        threads: CPU threads for ONNX Runtime.
        batch_size: images per network call in :meth:`predict_batch`.
        postprocess: "auto" (TensorRT engines: the GPU kernels where they run on this GPU, else
            numpy with a one-line warning; other backends: numpy), "gpu" (the kernels or an error),
            "cpu" (numpy).
    """

    def __init__(self, model: str | os.PathLike, *, backend: str | None = None, providers: Sequence[str] = ("cpu",),
                 threads: int | None = None, batch_size: int = 1, postprocess: str = "auto",
                 **backend_options) -> None:
        from pfpn.runtime.gpu.postprocess import POSTPROCESS_CHOICES

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
        concurrent = opened.name.startswith(("onnxruntime", "openvino"))
        self.backend: Backend = opened if concurrent else SerializedBackend(opened)
        self.metadata = opened.metadata
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
        return self.predict_detailed([image])[0].result

    def predict_batch(self, images: Sequence[np.ndarray | str | os.PathLike]) -> list[PanopticResult]:
        """Several images, ``batch_size`` per network call."""
        return [p.result for p in self.predict_detailed(images)]

    def predict_detailed(self, images: Sequence[np.ndarray | str | os.PathLike]) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._predict_chunk(images[start:start + self.batch_size], start))
        return out

    def _predict_chunk(self, images: Sequence[np.ndarray | str | os.PathLike], offset: int) -> list[Prediction]:
        meta = self.metadata
        t0 = time.perf_counter()
        bgr = [load_image(im, f"image {offset + i}") for i, im in enumerate(images)]
        batch, sizes, factors = prepare_batch(bgr, meta.max_long_side, meta.max_short_side, meta.size_divisor)
        t1 = time.perf_counter()
        if getattr(self.backend, "device_postprocess", False):
            return self._predict_on_device(bgr, batch, sizes, factors, t0, t1)
        outputs = self.backend.run(batch, sizes)
        t2 = time.perf_counter()
        preds = []
        for i, image in enumerate(bgr):
            t_start = time.perf_counter()
            pred = prediction_single_image(outputs, i, original_size=image.shape[:2], resized_size=sizes[i],
                                           scale_factor=factors[i], metadata=meta, categories=self.categories)
            pred.timings = Timings(preprocess=(t1 - t0) / len(bgr), network=(t2 - t1) / len(bgr),
                                   postprocess=time.perf_counter() - t_start, images=1)
            preds.append(pred)
        return preds

    def _predict_on_device(self, bgr: list[np.ndarray], batch: np.ndarray, sizes: np.ndarray,
                           factors: list[tuple[float, float]], t0: float, t1: float) -> list[Prediction]:
        """TensorRT + GPU post-processing: the label maps come back from the device."""
        device_maps = self.backend.run_panoptic(batch, sizes, [im.shape[:2] for im in bgr], factors)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        preds = []
        for image, dev, factor in zip(bgr, device_maps, factors):
            t_start = time.perf_counter()
            scores = dev.scores[dev.kept] if len(dev.kept) else np.zeros(0, np.float32)
            result = panoptic_result_from_label_map(dev.label_map, self.categories, instance_scores=scores,
                                                    instance_offset=self.metadata.instance_offset)
            sx, sy = factor
            boxes = dev.boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
            timing = Timings(preprocess=(t1 - t0) / len(bgr), network=(t2 - t1) / len(bgr),
                             postprocess=time.perf_counter() - t_start, images=1)
            preds.append(Prediction(result, dev.label_map.astype(np.int64), boxes, dev.scores, dev.labels, timing))
        return preds
