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

Contexts, streams and buffers come from the project's one CUDA layer, ``runtime/cuda_driver.py``. Without
a driver, a device, or PTX the device can run, :class:`runtime.cuda_driver.GpuUnavailableError` (a
``RuntimeError``) says what is missing.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pfpn.runtime import cuda_driver
from pfpn.runtime.gpu.triton_aot import PtxError, nearest_target

PTX_DIR = Path(__file__).resolve().parent / "ptx"
MANIFEST_NAME = "manifest.json"

# Triton signature type -> ctypes type of the kernel parameter
SCALAR_CTYPES = {
    "i1": ctypes.c_int8, "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
    "u1": ctypes.c_uint8, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64, "fp32": ctypes.c_float, "f32": ctypes.c_float, "fp64": ctypes.c_double,
}


# ----------------------------------------------------------------------------------------------
# manifest and kernels


@dataclass(frozen=True)
class KernelInfo:
    """One kernel for one target, as described by the manifest."""

    name: str  # Triton function name
    entry: str  # PTX .entry name
    file: str
    target: int  # e.g. 75 for sm_75
    num_warps: int
    shared: int  # dynamic shared memory bytes to pass at launch
    params: tuple[tuple[str, str], ...]  # (name, type) of every PTX parameter, implicit ones included
    scratch: dict  # implicit parameter name -> {"size": bytes per program, "align": bytes}


def read_manifest(ptx_dir: Path | str = PTX_DIR) -> dict:
    path = Path(ptx_dir) / MANIFEST_NAME
    if not path.is_file():
        raise cuda_driver.GpuUnavailableError(f"no compiled kernels: {path} is missing (run python -m pfpn.runtime.gpu.build_ptx)")
    return json.loads(path.read_text())


def select_target(available: Sequence[int], capability: tuple[int, int]) -> int:
    """The PTX target for a device: its own compute capability if built, else the highest lower
    one (PTX is JIT-compiled forward). sm_90a-style arch-specific PTX is never built."""
    try:
        return nearest_target(capability[0] * 10 + capability[1], available)
    except PtxError:
        raise cuda_driver.GpuUnavailableError(
            f"no PTX for this GPU (compute capability {capability[0]}.{capability[1]}): the post-processing "
            f"kernels are built for {', '.join(f'sm_{t}' for t in sorted(available)) or 'nothing'} and newer") from None


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

    def launch(self, stream: cuda_driver.Stream) -> None:
        gx, gy, gz = self.grid
        if gx <= 0 or gy <= 0 or gz <= 0:
            return
        cuda_driver.check(cuda_driver.driver().cuLaunchKernel(self.function, gx, gy, gz, self.block, 1, 1, self.shared, stream.handle,
                                        ctypes.addressof(self.array), 0), f"cuLaunchKernel({self.name})")


class KernelModule:
    """All post-processing kernels loaded for the current device (one CUmodule per PTX file)."""

    def __init__(self, ctx: cuda_driver.CudaContext, ptx_dir: Path | str = PTX_DIR) -> None:
        drv = cuda_driver.driver()
        self.ctx = ctx
        ptx_dir = Path(ptx_dir)
        manifest = read_manifest(ptx_dir)
        targets = sorted({k["target"] for k in manifest["kernels"]})
        self.target = select_target(targets, ctx.capability)
        self.infos = kernel_infos(manifest, self.target)
        self.manifest = manifest
        self._modules: list = []
        self._functions: dict[str, Any] = {}
        self._scratch: dict[str, cuda_driver.DeviceBuffer] = {}
        ctx.make_current()
        for name, info in self.infos.items():
            ptx = (ptx_dir / info.file).read_bytes() + b"\0"
            module = cuda_driver.check(drv.cuModuleLoadData(ptx), f"cuModuleLoadData({info.file})")
            self._modules.append(module)
            function = cuda_driver.check(drv.cuModuleGetFunction(module, info.entry.encode()), f"cuModuleGetFunction({info.entry})")
            if info.shared > 48 * 1024:
                attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                cuda_driver.check(drv.cuFuncSetAttribute(function, attr, info.shared), "cuFuncSetAttribute")
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
            buf = self._scratch[key] = cuda_driver.DeviceBuffer(nbytes)
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
                values.append(SCALAR_CTYPES[ptype](next(it)))
        array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        return PreparedLaunch(name, self._functions[name], (gx, gy, gz), 32 * info.num_warps, info.shared, values,
                              array)

    def launch(self, name: str, grid: tuple[int, int, int], args: Sequence[Any], stream: cuda_driver.Stream) -> None:
        self.prepare(name, grid, args).launch(stream)

    def close(self) -> None:
        drv = cuda_driver.driver()
        for buf in self._scratch.values():
            buf.close()
        self._scratch.clear()
        for module in self._modules:
            cuda_driver.check(drv.cuModuleUnload(module), "cuModuleUnload")
        self._modules.clear()
        self._functions.clear()
