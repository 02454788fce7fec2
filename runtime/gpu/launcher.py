"""Load the ahead-of-time compiled post-processing kernels (``runtime/gpu/ptx``) and launch them
with the CUDA driver API through cuda-python (``cuda.bindings.driver``). Torch-free and
Triton-free.

The PTX files and ``manifest.json`` come from ``runtime/gpu/build_ptx.py``. The manifest gives,
per kernel and target, the entry name, ``num_warps`` (block = 32 * num_warps threads), the
dynamic shared memory the kernel expects at launch, and the full parameter list of the PTX
entry: the kernel's own (non-constexpr) arguments followed by the parameters Triton adds to
every kernel (in Triton 3.8: ``global_scratch`` and ``profile_scratch``, two ``.u64`` global
pointers; Triton's own launcher passes per-launch scratch allocations there, or NULL when the
kernel's scratch size is 0). :meth:`KernelModule.launch` packs exactly that list.

Without a driver or a device every entry point raises :class:`GpuUnavailableError` (a
``RuntimeError``) that says what is missing.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

PTX_DIR = Path(__file__).resolve().parent / "ptx"
MANIFEST_NAME = "manifest.json"

# Triton signature type -> ctypes type of the kernel parameter
_SCALAR_CTYPES = {
    "i1": ctypes.c_int8, "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
    "u1": ctypes.c_uint8, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64, "fp32": ctypes.c_float, "f32": ctypes.c_float, "fp64": ctypes.c_double,
}


class GpuUnavailableError(RuntimeError):
    """No usable CUDA driver / device / cuda-python, or no PTX for this device."""


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:  # pragma: no cover - depends on the install
        raise GpuUnavailableError("the GPU post-processing needs cuda-python (cuda.bindings): "
                                  f"pip install cuda-python ({e})") from e
    return driver


def _check(result: Any, what: str) -> Any:
    """cuda.bindings calls return (CUresult, *values): raise on error, return the values."""
    drv = _driver()
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


def _as_int(handle: Any) -> int:
    """Address of a cuda.bindings handle (CUdeviceptr, CUstream, ...) or an int."""
    if isinstance(handle, int):
        return handle
    try:
        return int(handle)
    except TypeError:
        return int(handle.getPtr())


class CudaContext:
    """The primary context of one device, made current on this thread."""

    def __init__(self, device: int = 0) -> None:
        drv = _driver()
        try:
            err = drv.cuInit(0)
        except Exception as e:  # libcuda not found (cuda.pathfinder) or stub library
            raise GpuUnavailableError(f"no usable CUDA driver: {e}") from e
        err = err[0] if isinstance(err, tuple) else err
        if err != drv.CUresult.CUDA_SUCCESS:
            raise GpuUnavailableError(f"CUDA driver initialisation failed ({err.name if hasattr(err, 'name') else err}): "
                                      "no GPU, or the driver is not usable from this process")
        count = _check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if count == 0:
            raise GpuUnavailableError("the CUDA driver sees no GPU")
        if not 0 <= device < count:
            raise GpuUnavailableError(f"CUDA device {device} does not exist ({count} device(s))")
        self.device_index = device
        self.device = _check(drv.cuDeviceGet(device), "cuDeviceGet")
        self.context = _check(drv.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        _check(drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        attr = drv.CUdevice_attribute
        self.capability = (
            _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device), "cc"),
            _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device), "cc"),
        )
        self.sm_count = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self.device),
                               "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)")
        name = _check(drv.cuDeviceGetName(128, self.device), "cuDeviceGetName")
        self.name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)

    def make_current(self) -> None:
        _check(_driver().cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def create_stream(self) -> "Stream":
        drv = _driver()
        handle = _check(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        return Stream(handle, owned=True)

    def close(self) -> None:
        if getattr(self, "context", None) is not None:
            _check(_driver().cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")
            self.context = None


class Stream:
    def __init__(self, handle: Any, owned: bool = False) -> None:
        self.handle = handle
        self.owned = owned

    @property
    def address(self) -> int:
        return _as_int(self.handle)

    def synchronize(self) -> None:
        _check(_driver().cuStreamSynchronize(self.handle), "cuStreamSynchronize")

    def close(self) -> None:
        if self.owned and self.handle is not None:
            _check(_driver().cuStreamDestroy(self.handle), "cuStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """cuMemAlloc'd device memory (freed by close())."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.handle = _check(_driver().cuMemAlloc(max(self.nbytes, 1)), f"cuMemAlloc({self.nbytes})")

    @property
    def ptr(self) -> int:
        return _as_int(self.handle)

    def close(self) -> None:
        if self.handle is not None:
            _check(_driver().cuMemFree(self.handle), "cuMemFree")
            self.handle = None


def memset_d32(ptr: int, value: int, count: int, stream: Stream) -> None:
    if count:
        drv = _driver()
        _check(drv.cuMemsetD32Async(drv.CUdeviceptr(ptr), value, count, stream.handle), "cuMemsetD32Async")


def copy_to_host(dst: Any, ptr: int, nbytes: int, stream: Stream) -> None:
    """dst: a writable C-contiguous numpy array (at least nbytes)."""
    if nbytes:
        drv = _driver()
        _check(drv.cuMemcpyDtoHAsync(dst.ctypes.data, drv.CUdeviceptr(ptr), nbytes, stream.handle),
               "cuMemcpyDtoHAsync")


def copy_to_device(ptr: int, src: Any, stream: Stream) -> None:
    """src: a C-contiguous numpy array."""
    if src.nbytes:
        drv = _driver()
        _check(drv.cuMemcpyHtoDAsync(drv.CUdeviceptr(ptr), src.ctypes.data, src.nbytes, stream.handle),
               "cuMemcpyHtoDAsync")


# ----------------------------------------------------------------------------------------------
# manifest and kernels


@dataclass(frozen=True)
class KernelInfo:
    """One kernel for one target, as described by the manifest."""

    name: str  # Triton function name
    entry: str  # PTX .entry name
    file: str
    target: int  # e.g. 87 for sm_87
    num_warps: int
    shared: int  # dynamic shared memory bytes to pass at launch
    params: tuple[tuple[str, str], ...]  # (name, type) of every PTX parameter, implicit ones included
    scratch: dict  # implicit parameter name -> {"size": bytes per program, "align": bytes}


def read_manifest(ptx_dir: Path | str = PTX_DIR) -> dict:
    path = Path(ptx_dir) / MANIFEST_NAME
    if not path.is_file():
        raise GpuUnavailableError(f"no compiled kernels: {path} is missing (run python -m runtime.gpu.build_ptx)")
    return json.loads(path.read_text())


def select_target(available: Sequence[int], capability: tuple[int, int]) -> int:
    """The PTX target for a device: its own compute capability if built, else the highest lower
    one (PTX is JIT-compiled forward). sm_90a-style arch-specific PTX is never built."""
    cc = capability[0] * 10 + capability[1]
    usable = [t for t in available if t <= cc]
    if not usable:
        raise GpuUnavailableError(
            f"no PTX for this GPU (compute capability {capability[0]}.{capability[1]}); built targets: "
            f"{', '.join(f'sm_{t}' for t in sorted(available)) or 'none'}. "
            f"Run python -m runtime.gpu.build_ptx --arch {cc}")
    return max(usable)


def kernel_infos(manifest: dict, target: int) -> dict[str, KernelInfo]:
    out = {}
    for k in manifest["kernels"]:
        if k["target"] != target:
            continue
        out[k["name"]] = KernelInfo(name=k["name"], entry=k["entry"], file=k["file"], target=k["target"],
                                    num_warps=k["num_warps"], shared=k["shared"],
                                    params=tuple((p["name"], p["type"]) for p in k["params"]),
                                    scratch={s["name"]: s for s in k["implicit_params"]})
    return out


@dataclass
class PreparedLaunch:
    """A kernel launch with its parameters packed (reusable: pack once, launch many times)."""

    name: str
    function: Any
    grid: tuple[int, int, int]
    block: int
    shared: int
    values: list  # ctypes parameter values (kept alive: the array points at them)
    array: Any  # ctypes void*[]

    def launch(self, stream: Stream) -> None:
        gx, gy, gz = self.grid
        if gx <= 0 or gy <= 0 or gz <= 0:
            return
        _check(_driver().cuLaunchKernel(self.function, gx, gy, gz, self.block, 1, 1, self.shared, stream.handle,
                                        ctypes.addressof(self.array), 0), f"cuLaunchKernel({self.name})")


class KernelModule:
    """All post-processing kernels loaded for the current device (one CUmodule per PTX file)."""

    def __init__(self, ctx: CudaContext, ptx_dir: Path | str = PTX_DIR) -> None:
        drv = _driver()
        self.ctx = ctx
        ptx_dir = Path(ptx_dir)
        manifest = read_manifest(ptx_dir)
        targets = sorted({k["target"] for k in manifest["kernels"]})
        self.target = select_target(targets, ctx.capability)
        self.infos = kernel_infos(manifest, self.target)
        self.manifest = manifest
        self._modules: list = []
        self._functions: dict[str, Any] = {}
        self._scratch: dict[str, DeviceBuffer] = {}
        ctx.make_current()
        for name, info in self.infos.items():
            ptx = (ptx_dir / info.file).read_bytes() + b"\0"
            module = _check(drv.cuModuleLoadData(ptx), f"cuModuleLoadData({info.file})")
            self._modules.append(module)
            function = _check(drv.cuModuleGetFunction(module, info.entry.encode()), f"cuModuleGetFunction({info.entry})")
            if info.shared > 48 * 1024:
                attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                _check(drv.cuFuncSetAttribute(function, attr, info.shared), "cuFuncSetAttribute")
            self._functions[name] = function

    def _scratch_ptr(self, kernel: str, pname: str, spec: dict, programs: int) -> int:
        size = int(spec.get("size", 0))
        if size <= 0:
            return 0  # NULL, as Triton's launcher passes when the kernel needs no scratch
        nbytes = size * programs + int(spec.get("align", 1))
        key = f"{kernel}.{pname}"
        buf = self._scratch.get(key)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.close()
            buf = self._scratch[key] = DeviceBuffer(nbytes)
        align = max(int(spec.get("align", 1)), 1)
        return (buf.ptr + align - 1) // align * align

    def prepare(self, name: str, grid: tuple[int, int, int], args: Sequence[Any]) -> "PreparedLaunch":
        """Pack the parameters of one launch of kernel ``name``: ``args`` are its own parameters
        in manifest order (device pointers as ints); the implicit Triton parameters (scratch
        pointers: NULL when the kernel needs none, as Triton's launcher passes) are appended."""
        info = self.infos[name]
        explicit = [p for p in info.params if p[0] not in info.scratch]
        if len(args) != len(explicit):
            raise ValueError(f"{name}: {len(args)} arguments for {len(explicit)} parameters "
                             f"({', '.join(p for p, _ in explicit)})")
        gx, gy, gz = (int(g) for g in grid)
        values = []
        it = iter(args)
        for pname, ptype in info.params:
            if pname in info.scratch:
                values.append(ctypes.c_uint64(self._scratch_ptr(name, pname, info.scratch[pname], gx * gy * gz)))
            elif ptype.startswith("*"):
                values.append(ctypes.c_uint64(int(next(it))))
            else:
                values.append(_SCALAR_CTYPES[ptype](next(it)))
        array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        return PreparedLaunch(name, self._functions[name], (gx, gy, gz), 32 * info.num_warps, info.shared, values,
                              array)

    def launch(self, name: str, grid: tuple[int, int, int], args: Sequence[Any], stream: Stream) -> None:
        self.prepare(name, grid, args).launch(stream)

    def close(self) -> None:
        drv = _driver()
        for buf in self._scratch.values():
            buf.close()
        self._scratch.clear()
        for module in self._modules:
            _check(drv.cuModuleUnload(module), "cuModuleUnload")
        self._modules.clear()
        self._functions.clear()
