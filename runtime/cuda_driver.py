"""The project's one CUDA layer (CUDA driver API through cuda-python's ``cuda.bindings.driver``):
errors, devices, the primary context, streams, device buffers and copies. Both GPU users build
on it: the TensorRT runner (``runtime/trt/runner.py``) and the post-processing kernel launcher
(``runtime/gpu/launcher.py``), so one engine's outputs and the kernels share a context, a stream
and buffers without conversion. Torch-free.

The driver API's primary context is the context the CUDA runtime (and so TensorRT) uses for the
device, so memory allocated here is valid for TensorRT and the other way round.

cuda-python must be a 12.x release (``cuda-python>=12.6,<13``, see pyproject's ``gpu`` extra):
cuda-bindings 13 needs a CUDA 13 driver (R580+) and fails on CUDA 12 ones.

Without cuda-python, a driver or a device every entry point raises
:class:`GpuUnavailableError` (a ``RuntimeError``) that says what is missing; a failing driver
call raises :class:`CudaError` naming the call and CUDA's error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class GpuUnavailableError(RuntimeError):
    """No usable cuda-python / CUDA driver / device (or, for the kernels, no PTX for it)."""


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


def driver() -> Any:
    """``cuda.bindings.driver`` (tests replace this function with a stand-in driver)."""
    try:
        from cuda.bindings import driver as drv  # type: ignore[import-untyped]  # no type information
    except ImportError as e:  # pragma: no cover - depends on the install
        raise GpuUnavailableError(f"the GPU path needs cuda-python 12.x (import cuda.bindings failed: {e}); "
                                  f"pip install 'cuda-python>=12.6,<13'") from e
    return drv


def check(result: Any, what: str) -> Any:
    """cuda.bindings calls return ``(CUresult, *values)``: raise CudaError on error, else return
    the value (or the tuple of values, or None)."""
    drv = driver()
    if not isinstance(result, tuple):
        result = (result,)
    err = result[0]
    if err != drv.CUresult.CUDA_SUCCESS:
        name = drv.cuGetErrorName(err)
        text = drv.cuGetErrorString(err)
        name = name[1].decode() if name[0] == drv.CUresult.CUDA_SUCCESS and name[1] else str(err)
        text = text[1].decode() if text[0] == drv.CUresult.CUDA_SUCCESS and text[1] else ""
        raise CudaError(f"CUDA driver call {what} failed: {name} {text}".rstrip())
    values = result[1:]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def as_int(handle: Any) -> int:
    """Address of a cuda.bindings handle (CUdeviceptr, CUstream, ...) or an int."""
    if isinstance(handle, int):
        return handle
    try:
        return int(handle)
    except TypeError:
        return int(handle.getPtr())


def init_driver() -> tuple[Any, int]:
    """``cuInit`` -> (driver, device count); GpuUnavailableError when there is no usable driver
    or no device."""
    drv = driver()
    try:
        err = drv.cuInit(0)
    except Exception as e:  # libcuda not found (cuda.pathfinder) or a stub library
        raise GpuUnavailableError(f"no usable CUDA driver: {' '.join(str(e).split())}") from e
    err = err[0] if isinstance(err, tuple) else err
    if err != drv.CUresult.CUDA_SUCCESS:
        raise GpuUnavailableError(f"CUDA driver initialisation failed ({getattr(err, 'name', err)}): no GPU, or the "
                                  "driver is not usable from this process")
    count = check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
    if not count:
        raise GpuUnavailableError("the CUDA driver sees no GPU")
    return drv, int(count)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> int:
        major, minor = self.compute_capability.split(".")
        return int(major) * 10 + int(minor)


def _device_facts(drv: Any, device: Any) -> tuple[str, tuple[int, int], int]:
    attr = drv.CUdevice_attribute
    major = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "cc major")
    minor = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "cc minor")
    sms = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device),
                "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)")
    name = check(drv.cuDeviceGetName(128, device), "cuDeviceGetName")
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return name, (int(major), int(minor)), int(sms)


def gpus() -> list[GpuInfo]:
    """The visible CUDA GPUs; GpuUnavailableError with the reason when there is none."""
    drv, count = init_driver()
    out = []
    for i in range(count):
        name, (major, minor), _ = _device_facts(drv, check(drv.cuDeviceGet(i), "cuDeviceGet"))
        out.append(GpuInfo(i, name, f"{major}.{minor}"))
    return out


class CudaContext:
    """The primary context of one device, made current on this thread."""

    def __init__(self, device: int = 0) -> None:
        drv, count = init_driver()
        if not 0 <= device < count:
            raise GpuUnavailableError(f"CUDA device {device} does not exist ({count} device(s))")
        self.device_index = device
        self.device = check(drv.cuDeviceGet(device), "cuDeviceGet")
        self.context = check(drv.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        check(drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.name, self.capability, self.sm_count = _device_facts(drv, self.device)

    @property
    def compute_capability(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    def make_current(self) -> None:
        check(driver().cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def create_stream(self) -> "Stream":
        drv = driver()
        handle = check(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        return Stream(handle, owned=True)

    def close(self) -> None:
        if getattr(self, "context", None) is not None:
            check(driver().cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")
            self.context = None


class Stream:
    """A CUDA stream: ``handle`` for cuda.bindings calls, ``address`` (int) for TensorRT."""

    def __init__(self, handle: Any, owned: bool = False) -> None:
        self.handle = handle
        self.owned = owned

    @classmethod
    def from_address(cls, address: int) -> "Stream":
        """A stream someone else owns (e.g. the TensorRT runner's), by its address."""
        return cls(driver().CUstream(int(address)), owned=False)

    @property
    def address(self) -> int:
        return as_int(self.handle)

    def synchronize(self) -> None:
        check(driver().cuStreamSynchronize(self.handle), "cuStreamSynchronize")

    def close(self) -> None:
        if self.owned and self.handle is not None:
            check(driver().cuStreamDestroy(self.handle), "cuStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """``nbytes`` of device memory (at least 1 byte, so that empty tensors get a valid address);
    freed by close()."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.handle = check(driver().cuMemAlloc(max(self.nbytes, 1)), f"cuMemAlloc({self.nbytes})")

    @property
    def ptr(self) -> int:
        return as_int(self.handle)

    def copy_from_host(self, array: Any, stream: Stream) -> None:
        """Queue a copy of a numpy array into the buffer's start."""
        import numpy as np

        host = np.ascontiguousarray(array)
        if host.nbytes > self.nbytes:
            raise ValueError(f"{host.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")
        copy_to_device(self.ptr, host, stream)

    def copy_to_host(self, out: Any, stream: Stream) -> Any:
        """Queue a copy of the buffer's start into ``out`` (C-contiguous numpy array; valid after
        the stream synchronises)."""
        if not out.flags.c_contiguous or out.nbytes > self.nbytes:
            raise ValueError("copy_to_host needs a C-contiguous array no larger than the buffer")
        copy_ptr_to_host(out, self.ptr, out.nbytes, stream)
        return out

    def close(self) -> None:
        if self.handle is not None:
            check(driver().cuMemFree(self.handle), "cuMemFree")
            self.handle = None


def memset_d32(ptr: int, value: int, count: int, stream: Stream) -> None:
    if count:
        drv = driver()
        check(drv.cuMemsetD32Async(drv.CUdeviceptr(ptr), value, count, stream.handle), "cuMemsetD32Async")


def copy_ptr_to_host(dst: Any, ptr: int, nbytes: int, stream: Stream) -> None:
    """dst: a writable C-contiguous numpy array (at least nbytes)."""
    if nbytes:
        drv = driver()
        check(drv.cuMemcpyDtoHAsync(dst.ctypes.data, drv.CUdeviceptr(ptr), nbytes, stream.handle),
              "cuMemcpyDtoHAsync")


def copy_to_device(ptr: int, src: Any, stream: Stream) -> None:
    """src: a C-contiguous numpy array."""
    if src.nbytes:
        drv = driver()
        check(drv.cuMemcpyHtoDAsync(drv.CUdeviceptr(ptr), src.ctypes.data, src.nbytes, stream.handle),
              "cuMemcpyHtoDAsync")
