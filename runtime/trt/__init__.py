"""TensorRT deployment: GPU-free preparation (fp16 / Q/DQ graphs, calibration data, profiles,
engine files) and a thin execution layer.

Everything that decides something is a plain function that runs without TensorRT or a GPU:

* ``fp16``: fp16 conversion of an ONNX graph (keep-fp32 list, Casts at the boundaries);
* ``qdq``: Q/DQ insertion on convolutions from calibration ranges (ONNX Runtime collects them);
* ``calibration``: calibration batches with the runtime's pre-processing, a lazy TRT 10 calibrator;
* ``profiles``: optimisation-profile shapes (parse, validate, explain);
* ``engine_file``: engine + JSON sidecar (model metadata, TensorRT version, plugins), version checks;
* ``runner``: engine execution on one CUDA stream (TensorRT 10/11 tensor API, cuda-python).

``tensorrt`` and ``cuda`` are imported lazily, only by the functions that need them.
"""
