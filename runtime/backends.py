"""Network backends behind one interface: ``run(images, image_sizes) -> {output name: array}``
on host numpy arrays (the export contract, runtime/contract.py). Torch-free.

* :class:`OnnxRuntimeBackend`: ``.onnx`` files; CPU by default, CUDA / TensorRT execution
  providers when requested and in the installed build (onnxruntime-gpu); ``active_providers``
  says which run. ``trt``-flavor files run on the CPU with the numpy
  reference custom ops (slow; for checking).
* The TensorRT engine backend lives in ``runtime/trt/`` and is chosen for ``.engine`` files.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata


class ModelError(ValueError):
    """A model file the runtime cannot use (missing, corrupt, not ours, wrong version)."""


class Backend(Protocol):
    metadata: ModelMetadata
    name: str
    # whether run() may be called from several threads at once (the Predictor serialises the
    # calls of a backend that says False, or does not say)
    thread_safe: bool

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        """images (B, H, W, 3) uint8, image_sizes (B, 2) int64 -> the contract outputs."""


PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
                    "dml": "DmlExecutionProvider", "directml": "DmlExecutionProvider",
                    "rocm": "ROCMExecutionProvider", "coreml": "CoreMLExecutionProvider"}
SHORT_PROVIDER_NAMES = {"DmlExecutionProvider": "dml",
                        **{v: k for k, v in PROVIDER_ALIASES.items() if k not in ("dml", "directml")}}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
GPU_INSTALL_HINT = ('the CUDA and TensorRT execution providers come with onnxruntime-gpu in place of onnxruntime: '
                    'pip install ".[gpu]" (not ".[cpu]")')


class ProviderWarning(UserWarning):
    """A requested ONNX Runtime execution provider is not used (not in this build, or failed to start)."""


def provider_name(name: str) -> str:
    """"cuda" / "CUDA" / "CUDAExecutionProvider" -> "CUDAExecutionProvider" (unknown names pass through)."""
    return PROVIDER_ALIASES.get(name.lower(), name)


def short_provider_name(name: str) -> str:
    """"CUDAExecutionProvider" -> "cuda" (others: without "ExecutionProvider", lower case)."""
    return SHORT_PROVIDER_NAMES.get(name, name.removesuffix("ExecutionProvider").lower())


def usable_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers (full names, priority order, no repeats) this ONNX Runtime build has.

    Missing ones are dropped with one :class:`ProviderWarning` naming them, what is available and
    the install hint; none of the requested available is a :class:`ModelError`."""
    wanted = list(dict.fromkeys(provider_name(p) for p in requested))
    if not wanted:
        raise ModelError("no ONNX Runtime execution provider requested (e.g. providers=('cpu',))")
    usable = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    hint = f"; {GPU_INSTALL_HINT}" if any(p in GPU_PROVIDERS for p in missing) else ""
    if not usable:
        raise ModelError(f"ONNX Runtime execution provider(s) {', '.join(missing)} not available in this "
                         f"onnxruntime build (available: {', '.join(available)}){hint}")
    if missing:
        warnings.warn(ProviderWarning(
            f"ONNX Runtime execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(available)}); running on {', '.join(usable)}{hint}"), stacklevel=3)
    return usable


def warn_not_started(usable: Sequence[str], active: Sequence[str]) -> list[str]:
    """Warn (one :class:`ProviderWarning`) about requested, available providers the session did not
    start: ONNX Runtime drops a provider whose libraries fail to load with only a log line. -> them."""
    failed = [p for p in usable if p not in active]
    if failed:
        gpu = any(p in GPU_PROVIDERS for p in failed)
        cuda = " (CUDA 12 and cuDNN 9 libraries missing or not found?)" if gpu else ""
        warnings.warn(ProviderWarning(
            f"ONNX Runtime execution provider(s) {', '.join(failed)} are in this build but did not start{cuda}; "
            f"the session runs on {', '.join(active)}"), stacklevel=3)
    return failed


class OnnxRuntimeBackend:
    """An exported ``.onnx`` file in ONNX Runtime (sessions run concurrently).

    providers: names like "cpu", "cuda", "tensorrt" (or full ONNX Runtime provider names), in
    priority order; default CPU. Requested providers this onnxruntime build lacks are dropped with
    one :class:`ProviderWarning` (none of them available: :class:`ModelError`); one that is in the
    build but does not start (e.g. CUDA libraries missing) is another warning. ``active_providers``
    (short names, e.g. ("cuda", "cpu")) and ``name`` (e.g. "onnxruntime[CUDA,CPU]") say what runs.
    ``trt_options`` are passed to the TensorRT execution provider (e.g. trt_fp16_enable,
    trt_engine_cache_enable, trt_timing_cache_enable). Opening one checks that exactly one ONNX
    Runtime package is installed (runtime/ort_package.py).
    """

    thread_safe = True  # InferenceSession.run is thread-safe

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] = ("cpu",), threads: int | None = None,
                 trt_options: dict | None = None) -> None:
        _check_onnxruntime_package_once()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        wanted = usable_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        metadata = _read_onnx_metadata(path)
        if metadata.flavor == "trt":
            from pfpn.plugins.ort_ops import session_options  # numpy reference ops, registered once

            options = session_options()
            if threads:
                options.intra_op_num_threads = int(threads)
        provider_args: list = []
        for p in wanted:
            provider_args.append((p, dict(trt_options or {})) if p == "TensorrtExecutionProvider" else p)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=provider_args)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from e
        self.metadata = metadata
        active = list(self.session.get_providers())
        warn_not_started(wanted, active)
        self.providers = tuple(active)  # full ONNX Runtime names, in the session's priority order
        self.active_providers = tuple(short_provider_name(p) for p in active)
        self.name = f"onnxruntime[{','.join(p.removesuffix('ExecutionProvider') for p in active)}]"
        self._check_io(path)

    def _check_io(self, path: Path) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
            raise ModelError(f"{path}: inputs {inputs} / outputs {outputs} do not follow the export contract "
                             f"({list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)})")

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        # InferenceSession.run may be called from several threads at once
        values = self.session.run(None, {"images": images, "image_sizes": image_sizes})
        return dict(zip(OUTPUT_NAMES, values))


class OpenVinoBackend:
    """An ort-flavor ``.onnx`` file in OpenVINO on the CPU. Inference precision is forced to f32:
    OpenVINO defaults to bf16 on CPUs that have it, which breaks parity with the other backends."""

    thread_safe = True  # a compiled model runs infer requests concurrently

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("OpenVINO is not installed (pip install openvino)") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.metadata = _read_onnx_metadata(path)
        if self.metadata.flavor != "ort":
            raise ModelError(f"{path}: OpenVINO runs the ort flavor only (this file is {self.metadata.flavor!r})")
        core = ov.Core()
        config: dict = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._local = threading.local()  # one infer request per thread
        self.name = "openvino"
        self.active_providers = ("openvino",)

    def run_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        return {k.get_any_name(): np.asarray(v) for k, v in result.items()}

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        by_name = self.run_feed({"images": images, "image_sizes": image_sizes})
        return {name: by_name[name] for name in OUTPUT_NAMES}


_PACKAGE_CHECKED = False


def _check_onnxruntime_package_once() -> None:
    """runtime/ort_package.py's check, the first time an ONNX Runtime backend opens in this process
    (reading the installed metadata takes a moment)."""
    global _PACKAGE_CHECKED
    if not _PACKAGE_CHECKED:
        from pfpn.runtime.ort_package import check_onnxruntime_package

        check_onnxruntime_package()
        _PACKAGE_CHECKED = True


def _read_onnx_metadata(path: Path) -> ModelMetadata:
    """The contract metadata of an .onnx file, without loading the weights."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
    except ImportError:
        import onnxruntime as ort

        try:
            props = dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                         .get_modelmeta().custom_metadata_map)
        except Exception as e:
            raise ModelError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
    except Exception as e:  # DecodeError, truncated protobuf, ...
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    try:
        return ModelMetadata.from_props(props)
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from e


def read_model_metadata(path: str | os.PathLike) -> ModelMetadata:
    """What an exported file says about itself: an .onnx file's metadata, or a TensorRT engine's
    (from its sidecar, runtime/trt/engine_file.py); neither loads the weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix.lower() in (".engine", ".plan"):
        from pfpn.runtime.trt.engine_file import read_engine_info

        try:
            return ModelMetadata.from_props(read_engine_info(path).model_metadata)
        except ValueError as e:
            raise ModelError(f"{path}: {e}") from e
    return _read_onnx_metadata(path)


def choose_backend(path: str | os.PathLike, backend: str | None = None) -> str:
    """The backend by argument ("onnxruntime", "openvino", "tensorrt") or by file type
    (.onnx -> onnxruntime, .engine/.plan -> tensorrt)."""
    return backend or ("tensorrt" if Path(path).suffix.lower() in (".engine", ".plan") else "onnxruntime")


def open_backend(path: str | os.PathLike, backend: str | None = None, **kwargs) -> Backend:
    """Open the backend :func:`choose_backend` picks."""
    suffix = Path(path).suffix.lower()
    choice = choose_backend(path, backend)
    if choice == "onnxruntime":
        if suffix in (".engine", ".plan"):
            raise ModelError(f"{path}: a TensorRT engine cannot run in ONNX Runtime; use backend='tensorrt' "
                             "or the .onnx it was built from")
        return OnnxRuntimeBackend(path, **kwargs)
    if choice == "openvino":
        return OpenVinoBackend(path, threads=kwargs.get("threads"))
    if choice == "tensorrt":
        from pfpn.runtime.trt.backend import TensorRTBackend  # needs tensorrt + cuda-python

        return TensorRTBackend(path, **kwargs)
    raise ModelError(f"unknown backend {choice!r}: choose 'onnxruntime', 'openvino' or 'tensorrt'")


class SerializedBackend:
    """Wraps a backend that is not safe to call from several threads at once."""

    thread_safe = True  # it takes a lock around the wrapped backend

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.metadata = backend.metadata
        self.name = backend.name
        if hasattr(backend, "active_providers"):
            self.active_providers = backend.active_providers
        self._lock = threading.Lock()

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            return self.backend.run(images, image_sizes)

    @property
    def device_postprocess(self) -> bool:
        return getattr(self.backend, "gpu_post", None) is not None

    def run_panoptic(self, *args, **kwargs):
        """Network + device post-processing (TensorRT backend with GPU kernels)."""
        with self._lock:
            return self.backend.run_panoptic(*args, **kwargs)
