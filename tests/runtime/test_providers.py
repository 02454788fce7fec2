"""ONNX Runtime execution providers (runtime/backends.py): requested ones this build lacks are
dropped with one warning, one that is in the build but does not start is another warning, and
the backend / Predictor say what runs. This machine has the CPU build (onnxruntime) only."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from pfpn.runtime import Predictor
from pfpn.runtime import backends
from pfpn.runtime.backends import ModelError, ProviderWarning, short_provider_name, usable_providers

CPU_ONLY = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), rng.integers(0, 256, (150, 113, 3), dtype=np.uint8)]


def _provider_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ProviderWarning)]


@pytest.mark.skipif(not CPU_ONLY, reason="onnxruntime-gpu is installed: CUDA is available here")
def test_cuda_then_cpu_on_the_cpu_build_warns_once_and_runs_on_the_cpu(tiny_onnx, images):
    with pytest.warns(ProviderWarning) as record:
        pred = Predictor(tiny_onnx, providers=("cuda", "cpu"), threads=1)
    (message,) = _provider_warnings(record)  # one warning
    assert "CUDAExecutionProvider" in message and "not available" in message
    for name in ort.get_available_providers():
        assert name in message  # what is available
    assert 'pip install ".[gpu]"' in message and "onnxruntime-gpu" in message
    assert pred.providers == ("cpu",) and pred.backend.active_providers == ("cpu",)
    assert pred.backend.name == "onnxruntime[CPU]"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderWarning)  # asking for what is there: no warning
        cpu = Predictor(tiny_onnx, providers=("cpu",), threads=1)
    assert cpu.providers == ("cpu",)
    for image in images:
        a, b = pred.predict(image), cpu.predict(image)
        assert np.array_equal(a.id_map, b.id_map) and a.segments_info == b.segments_info


def test_every_missing_provider_is_named_in_one_warning():
    with pytest.warns(ProviderWarning) as record:
        got = usable_providers(["tensorrt", "cuda", "CPU", "cpu"], ["CPUExecutionProvider"])
    assert got == ["CPUExecutionProvider"]  # repeats dropped, case-insensitive aliases
    (message,) = _provider_warnings(record)
    assert "TensorrtExecutionProvider, CUDAExecutionProvider not available" in message


def test_none_of_the_requested_available_is_an_error(tiny_onnx):
    with pytest.raises(ModelError, match=r"TensorrtExecutionProvider not available.*available: .*CPUExecutionProvider"
                                         r".*onnxruntime-gpu"):
        Predictor(tiny_onnx, providers=["tensorrt"])
    with pytest.raises(ModelError, match="no ONNX Runtime execution provider requested"):
        usable_providers([], ["CPUExecutionProvider"])


def test_short_names():
    assert short_provider_name("CUDAExecutionProvider") == "cuda"
    assert short_provider_name("TensorrtExecutionProvider") == "tensorrt"
    assert short_provider_name("CPUExecutionProvider") == "cpu"
    assert short_provider_name("DmlExecutionProvider") == "dml"
    assert short_provider_name("AzureExecutionProvider") == "azure"


def test_an_available_provider_that_does_not_start_is_a_warning(tiny_onnx, monkeypatch, images):
    """What onnxruntime-gpu does without the CUDA libraries: CUDA is in get_available_providers(),
    the session silently runs on the CPU. Here a session that reports just that stands in."""
    real_session = ort.InferenceSession
    asked = []

    class CudaFailsSession:
        def __init__(self, path, options=None, providers=None):
            asked.append(list(providers))
            self._session = real_session(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._session, name)

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaFailsSession)
    with pytest.warns(ProviderWarning) as record:
        pred = Predictor(tiny_onnx, providers=("cuda", "cpu"), threads=1)
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    (message,) = _provider_warnings(record)
    assert "CUDAExecutionProvider" in message and "did not start" in message and "CPUExecutionProvider" in message
    assert pred.providers == ("cpu",) and pred.backend.name == "onnxruntime[CPU]"
    assert pred.predict(images[0]).id_map.shape == images[0].shape[:2]


def test_active_providers_name_the_session_order(tiny_onnx, monkeypatch):
    """Both started: the session's own order, e.g. onnxruntime[CUDA,CPU]."""
    real_session = ort.InferenceSession

    class BothStart:
        def __init__(self, path, options=None, providers=None):
            self._session = real_session(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._session, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", BothStart)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderWarning)
        backend = backends.OnnxRuntimeBackend(tiny_onnx, providers=("cuda", "cpu"), threads=1)
    assert backend.active_providers == ("cuda", "cpu") and backend.name == "onnxruntime[CUDA,CPU]"
    assert backend.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_other_backends_name_themselves(tiny_onnx):
    pytest.importorskip("openvino")
    assert Predictor(tiny_onnx, backend="openvino", threads=1).providers == ("openvino",)
