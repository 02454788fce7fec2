"""Run an exported (ort-flavor) file with OpenVINO behind ONNX Runtime's
``session.run(None, feed)`` interface (what export/verify.py drives)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from runtime.backends import OpenVinoBackend
from runtime.contract import OUTPUT_NAMES


class OpenVinoSession:
    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        self.backend = OpenVinoBackend(onnx_path, threads=threads)

    def run(self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        by_name = self.backend.run_feed(feed)
        return [by_name[n] for n in (output_names or OUTPUT_NAMES)]
