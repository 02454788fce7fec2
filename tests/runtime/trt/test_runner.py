"""The TensorRT runner's loading order, against a stand-in for the tensorrt module that behaves
like TensorRT where it matters: deserialising an engine that holds a plugin from TensorRT's
plugin library (the ort flavor's ROIAlign_TRT) fails unless ``init_libnvinfer_plugins`` ran."""
from __future__ import annotations

import types

import numpy as np
import pytest

from pfpn.runtime import cuda_driver
from pfpn.runtime.trt import engine_file as ef
from pfpn.runtime.trt import runner
from pfpn.runtime.trt.engine_file import EngineInfo


class FakeTensorRT(types.SimpleNamespace):
    """init_libnvinfer_plugins registers ROIAlign_TRT; an engine needing it loads only after that."""

    def __init__(self):
        super().__init__(__version__="10.13.3.9", Builder=object, calls=[], registry=set())
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class Engine:
            num_io_tensors = 8
            names = ["images", "image_sizes", "boxes", "scores", "labels", "mask_probs", "num_detections",
                     "semantic_logits"]

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return "in" if name in ("images", "image_sizes") else "out"

            def get_tensor_dtype(self, name):
                return np.float32

            def create_execution_context(self):
                return object()

        class Runtime:
            def __init__(self, logger):
                trt.calls.append("Runtime")

            def deserialize_cuda_engine(self, data):
                trt.calls.append("deserialize")
                needs = data.decode().split(":", 1)[1].split(",") if b":" in data else []
                return Engine() if all(p in trt.registry for p in needs if p) else None

        self.Logger, self.Runtime = Logger, Runtime
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.nptype = lambda dtype: dtype

    def init_libnvinfer_plugins(self, logger, namespace):
        self.calls.append("init_libnvinfer_plugins")
        self.registry.add("ROIAlign_TRT")
        return True


class FakeContext:
    compute_capability = "9.0"

    def create_stream(self):
        return cuda_driver.Stream(1234)

    def close(self):
        pass


def test_deserialize_initialises_the_plugin_library_first():
    trt = FakeTensorRT()
    _, engine = runner.deserialize_engine(trt, b"plan:ROIAlign_TRT", trt.Logger(2))
    assert engine is not None
    assert trt.calls.index("init_libnvinfer_plugins") < trt.calls.index("deserialize")


def test_the_runner_loads_an_ort_flavor_engine(tiny_onnx, tmp_path, monkeypatch):
    import onnx

    from pfpn.export.metadata import read_metadata

    metadata = read_metadata(onnx.load(str(tiny_onnx)))
    trt = FakeTensorRT()
    monkeypatch.setattr(runner, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda_driver, "CudaContext", lambda device=0: FakeContext())
    path = tmp_path / "m_ort.engine"
    info = EngineInfo(tensorrt_version="10.13.3.9", trt_api="10", precision="fp16",
                      profile={"min": "1x32x32", "opt": "1x800x1344", "max": "1x1344x1344"},
                      model_metadata=metadata.to_props(), device_name="NVIDIA H100", compute_capability="9.0",
                      plugins=[])
    ef.write_engine(path, b"plan:ROIAlign_TRT", info)
    r = runner.TrtRunner(path)
    assert r.engine is not None and r.outputs[0] == "boxes"
    assert trt.calls == ["init_libnvinfer_plugins", "Runtime", "deserialize"]
    # the stand-in is faithful: without the plugin library the same engine does not load
    bare = FakeTensorRT()
    assert bare.Runtime(None).deserialize_cuda_engine(b"plan:ROIAlign_TRT") is None
    with pytest.raises(RuntimeError, match="could not deserialize"):
        monkeypatch.setattr(runner, "deserialize_engine", lambda t, d, l: (None, None))
        runner.TrtRunner(path)
