"""TensorRT engines behind the runtime's backend interface.

The network runs on the GPU (``runtime/trt/runner.py``: one CUDA stream, outputs kept on the
device). With GPU post-processing (``postprocess="auto"`` where the kernels run, or "gpu") the
post-processing kernels (``runtime/gpu/``: mask pasting, fusion, semantic argmax) consume the
network's device outputs on the same stream, and only the final label map, the kept-instance list
and the small detection arrays come back to the host. Otherwise ("cpu", or "auto" on a GPU the
kernels do not run on, with a one-line warning) the contract outputs are copied to the host and
the numpy post-processing runs there.

Needs tensorrt, cuda-python and a CUDA GPU; otherwise construction raises ImportError /
RuntimeError with a one-line reason.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from pfpn.runtime.contract import MASK_SIZE
from pfpn.runtime.result import PanopticMap


class TensorRTBackend:
    thread_safe = False  # one execution context and stream: the Predictor serialises the calls

    def __init__(self, path: str | os.PathLike, *, device: int = 0, postprocess: str = "auto") -> None:
        from pfpn.runtime.gpu.device_fusion import open_gpu_postprocessor
        from pfpn.runtime.trt.runner import TrtRunner

        self.runner = TrtRunner(path, device=device)
        self.metadata = self.runner.metadata
        self.gpu_post: Any = open_gpu_postprocessor(self.metadata, postprocess=postprocess, device=device,
                                                    stream=self.runner.stream.address)
        self.name = "tensorrt" + ("+gpu-post" if self.gpu_post is not None else "")

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        """Host copies of the contract outputs (for the numpy post-processing or checks)."""
        result: dict[str, np.ndarray] = self.runner.infer(images, image_sizes)
        return result

    def run_panoptic(self, images: np.ndarray, image_sizes: np.ndarray, original_sizes: Sequence[tuple[int, int]],
                     scale_factors: Sequence[tuple[float, float]]) -> list[PanopticMap]:
        """Network + GPU post-processing; nothing but the results leaves the device (the label
        map, the kept list and the small detection arrays)."""
        if self.gpu_post is None:
            raise RuntimeError("this backend has no GPU post-processing (postprocess='cpu' or not available)")
        from pfpn.runtime.gpu.device_fusion import image_pointers

        tensors = self.runner.enqueue(images, image_sizes)
        pointers = {name: t.ptr for name, t in tensors.items()}
        logits_size = tuple(int(v) for v in tensors["semantic_logits"].shape[2:])  # padded size / stride 4
        padded = (int(images.shape[1]), int(images.shape[2]))
        meta = self.metadata
        # the detections and their 28x28 masks come back too (0.3 MB an image): the instance view
        small = self.runner.copy_outputs(tensors, ("boxes", "scores", "labels", "mask_probs", "num_detections"))
        out = []
        for i in range(images.shape[0]):
            ptrs = image_pointers(pointers, i, max_detections=meta.max_detections,
                                  num_stuff_classes=meta.num_stuff_classes,
                                  logits_size=logits_size, mask_size=MASK_SIZE)
            label_map, kept = self.gpu_post.run(
                **ptrs, original_size=tuple(original_sizes[i]), resized_size=tuple(int(v) for v in image_sizes[i]),
                padded_size=padded, scale_factor=tuple(scale_factors[i]), logits_size=logits_size)
            n = int(small["num_detections"][i])
            sx, sy = scale_factors[i]
            boxes = small["boxes"][i, :n] / np.array([sx, sy, sx, sy], dtype=np.float32)  # original-image pixels
            out.append(PanopticMap(label_map=label_map.astype(np.int64), kept=[int(k) for k in kept], boxes=boxes,
                                   scores=small["scores"][i, :n], labels=small["labels"][i, :n],
                                   instance_offset=meta.instance_offset, mask_probs=small["mask_probs"][i, :n],
                                   mask_threshold=meta.mask_threshold))
        return out

    def close(self) -> None:
        if self.gpu_post is not None:
            self.gpu_post.close()
        self.runner.close()
