"""Run an exported (ort-flavor) file with OpenVINO on the CPU behind ONNX Runtime's
``session.run(None, feed)`` interface. Inference precision is forced to f32: OpenVINO
defaults to bf16 on CPUs that have it, which breaks parity."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


class OpenVinoSession:
    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("OpenVINO is not installed (pip install openvino)") from e
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.model = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.model.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.model.outputs]

    def run(self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        by_name = {k.get_any_name(): v for k, v in result.items()}
        names = list(output_names) if output_names else self.output_names
        return [np.asarray(by_name[n]) for n in names]
