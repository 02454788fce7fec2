"""Run a TensorRT engine built by runtime/build_engine.py: TensorRT 10/11 name-based tensor API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on ONE CUDA stream, with the
project's one CUDA layer (``runtime/cuda_driver.py``: primary context, stream, device buffers), which the
GPU post-processing kernels share.

Output buffers stay on the device, sized once for the profile's max batch. ``infer`` copies them
to the host; ``enqueue`` returns the device tensors (pointer, shape, dtype) instead, so that a GPU
post-processor (mask pasting, fusion) consumes them in place on the same stream, and
``copy_outputs`` fetches the few small ones it needs on the host.

Thin by design: what can be decided without a GPU (shapes, versions, metadata) lives in
``profiles`` / ``engine_file`` and is tested there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pfpn.runtime import cuda_driver
from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata
from pfpn.runtime.trt.engine_file import EngineInfo, read_engine
from pfpn.runtime.trt.profiles import Profile


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor living in device memory: what a GPU post-processor receives."""
    name: str
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


def import_tensorrt() -> Any:
    """``tensorrt`` or an ImportError with a one-line reason (type stubs alone are not TensorRT)."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a shim whose import raises something else
        raise ImportError(f"TensorRT is not installed (import tensorrt failed: {' '.join(str(e).split())})") from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        where = ", ".join(getattr(trt, "__path__", []) or [getattr(trt, "__file__", "?") or "?"])
        raise ImportError(f"TensorRT is not installed (import tensorrt found only a package without the TensorRT "
                          f"bindings at {where}, e.g. type stubs)")
    return trt


def deserialize_engine(trt: Any, data: bytes, logger: Any) -> tuple[Any, Any]:
    """-> (IRuntime, ICudaEngine or None). TensorRT's bundled plugin library is initialised first:
    an ``ort``-flavor engine holds the ROIAlign_TRT plugin (what TensorRT's ONNX parser makes of
    RoiAlign), and deserialising fails unless its creator is registered (``initLibNvInferPlugins``,
    NvInferPlugin.h). A ``trt``-flavor engine carries its own ahead-of-time plugin kernels and needs
    neither Python nor this project's plugin registration to load."""
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    return runtime, runtime.deserialize_cuda_engine(data)


class TrtRunner:
    """engine + sidecar -> outputs. ``infer(images, image_sizes)``; see the module docstring."""

    def __init__(self, engine_path: str | os.PathLike, *, device: int = 0) -> None:
        trt = import_tensorrt()  # a one-line ImportError when TensorRT is missing
        self.cuda_context = cuda_driver.CudaContext(device)
        data, self.info = read_engine(engine_path, trt.__version__, self.cuda_context.compute_capability)
        self.metadata: ModelMetadata = self.info.metadata()
        self.profile = Profile.from_dict(self.info.profile)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime, self.engine = deserialize_engine(trt, data, self.logger)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda_context.create_stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self.inputs) != sorted(INPUT_NAMES) or sorted(self.outputs) != sorted(OUTPUT_NAMES):
            raise RuntimeError(f"engine I/O {self.inputs} -> {self.outputs} is not the export contract's "
                               f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._in_buffers: dict[str, cuda_driver.DeviceBuffer] = {}
        self._out_buffers: dict[str, cuda_driver.DeviceBuffer] = {}

    def _buffer(self, pool: dict[str, cuda_driver.DeviceBuffer], name: str, nbytes: int) -> cuda_driver.DeviceBuffer:
        buf = pool.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.close()
            buf = pool[name] = cuda_driver.DeviceBuffer(nbytes)
        return buf

    def enqueue(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, DeviceTensor]:
        """Copy inputs, set shapes and addresses, launch on the stream (no synchronisation)."""
        b, h, w = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
        if not self.profile.contains(b, h, w):
            raise ValueError(self.profile.explain_outside(b, h, w))
        feeds = {"images": images, "image_sizes": np.ascontiguousarray(image_sizes, dtype=np.int64)}
        for name, host in feeds.items():
            buf = self._buffer(self._in_buffers, name, host.nbytes)
            buf.copy_from_host(host, self.stream)
            if not self.context.set_input_shape(name, tuple(host.shape)):
                raise ValueError(f"TensorRT rejected shape {host.shape} for {name}")
            self.context.set_tensor_address(name, buf.ptr)
        tensors = {}
        for name in self.outputs:
            dims = self.context.get_tensor_shape(name)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name} has an unresolved shape {shape}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtypes[name].itemsize
            buf = self._buffer(self._out_buffers, name, nbytes)
            self.context.set_tensor_address(name, buf.ptr)
            tensors[name] = DeviceTensor(name, buf.ptr, shape, self.dtypes[name])
        if not self.context.execute_async_v3(self.stream.address):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return tensors

    def copy_outputs(self, tensors: Mapping[str, DeviceTensor], names: Sequence[str] | None = None
                     ) -> dict[str, np.ndarray]:
        """Host copies of the enqueued outputs ``names`` (default: all), queued on the stream: valid
        after the next synchronisation."""
        return {name: self._out_buffers[name].copy_to_host(np.empty(tensors[name].shape, tensors[name].dtype),
                                                           self.stream)
                for name in (names if names is not None else list(tensors))}

    def infer(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        host = self.copy_outputs(self.enqueue(images, image_sizes))
        self.stream.synchronize()
        return host

    def close(self) -> None:
        for pool in (self._in_buffers, self._out_buffers):
            for buf in pool.values():
                buf.close()
            pool.clear()
        self.stream.close()
        self.cuda_context.close()

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_info(engine_path: str | os.PathLike) -> EngineInfo:
    """The sidecar of an engine without loading TensorRT."""
    from pfpn.runtime.trt.engine_file import read_engine_info

    return read_engine_info(engine_path)
