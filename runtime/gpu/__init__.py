"""GPU post-processing (mask pasting, panoptic fusion, semantic argmax) as CUDA kernels written in
Triton, compiled ahead of time to PTX (``runtime/gpu/ptx``) and launched with cuda-python:
``runtime.gpu.device_fusion.GpuPostprocessor``. Nothing here imports torch; only
``runtime/gpu/kernels.py`` and ``runtime/gpu/build_ptx.py`` (build time, tests) import Triton."""
