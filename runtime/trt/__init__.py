"""TensorRT deployment: GPU-free preparation (fp16 / Q/DQ graphs, calibration data, profiles,
engine files) and a thin execution layer.

Everything that decides something is a plain function that runs without TensorRT or a GPU:

* ``fp16``: fp16 conversion of an ONNX graph (keep-fp32 list, Casts at the boundaries);
* ``qdq``: Q/DQ insertion on convolutions from calibration ranges (ONNX Runtime collects them);
* ``calibration``: the one calibration feed (the runtime's pre-processing; also quantize_int8's), a
  lazy TRT 10 calibrator;
* ``profiles``: optimisation-profile shapes (parse, validate, explain);
* ``build_plan`` / ``build_inputs``: an engine build's decisions (API, precision plan, network
  flags, engine name, typed problems) and its checked inputs and parser ONNX (build_engine.py);
* ``conformance`` (+ ``conformance_rules``, ``conformance_report``): TensorRT's ONNX rules;
* ``engine_file``: engine + JSON sidecar (model metadata, TensorRT version, plugins), version checks;
* ``builder``: the TensorRT build itself (parse, configure, serialize), thin;
* ``runner``: engine execution on one CUDA stream (TensorRT 10/11 tensor API, cuda-python).

``tensorrt`` and ``cuda`` are imported lazily, only by the functions that need them.
"""
