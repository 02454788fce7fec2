"""float32 arithmetic as torch's CPU kernels do it, shared by the mask pasting and the semantic
upsampling of the torch-free post-processing (runtime/mask_paste.py, runtime/semantic_labels.py)."""
from __future__ import annotations

import numpy as np

F32 = np.float32
F64 = np.float64


def fma32(a, b, c) -> np.ndarray:
    """float32 a * b + c rounded once (a fused multiply-add), emulated in float64."""
    return (np.asarray(a, F64) * b + c).astype(F32)
