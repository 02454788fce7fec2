"""Random and COCO-sized cases for the GPU post-processing kernels under Triton's interpreter,
and GpuPostprocessor itself end to end on a stand-in CUDA driver that runs the interpreted
kernels; identical label maps to the PyTorch reference required. How the checks run:
tests/runtime/gpu/interpreter_harness.py.
"""
from __future__ import annotations

import ctypes
import time

import numpy as np
import pytest

from pfpn.runtime.contract import FusionConfig
from pfpn.runtime.gpu.device_fusion import ImageGeometry, KernelConfig

from tests.runtime.gpu.interpreter_harness import (IN_CHILD, RANDOM_GEOMETRIES, compare, interpreter_tests,
                                                   random_case, run_reference)

if IN_CHILD:
    import torch

    from pfpn.runtime.gpu import kernels as K


child_results, test_interpreted = interpreter_tests(__file__)


@pytest.mark.parametrize("seed", range(8))
def check_random_cases_identical(seed):
    rng = np.random.default_rng(100 + seed)
    geometry = RANDOM_GEOMETRIES[seed % len(RANDOM_GEOMETRIES)]
    t, s = 8, 7
    d = 24
    n = int(rng.integers(0, d + 1))
    cfg = KernelConfig(num_thing_classes=t, num_stuff_classes=s, max_detections=d,
                       fusion=FusionConfig(stuff_area_limit=int(rng.choice([0, 60, 300]))))
    inputs = random_case(rng, t=t, s=s, d=d, n=n, geometry=geometry, ties=seed % 2 == 1)
    equal, kept = compare(inputs, cfg, geometry, programs=int(rng.choice([1, 2, 5, 1000])))
    assert equal == 1.0, f"seed {seed}: {equal:.6f} of the pixels agree ({kept} instances)"


def check_coco_sized_categories_and_100_detections():
    """T = 80, S = 53, D = 100 (the contract's defaults), a 61x83 original resized by 13/8."""
    rng = np.random.default_rng(7)
    geometry = ImageGeometry((61, 83), (99, 135), (128, 160), (135 / 83, 99 / 61))
    cfg = KernelConfig(num_thing_classes=80, num_stuff_classes=53, max_detections=100,
                       fusion=FusionConfig(stuff_area_limit=40))
    inputs = random_case(rng, t=80, s=53, d=100, n=40, geometry=geometry, ties=False)  # ties: tested above
    start = time.perf_counter()
    equal, kept = compare(inputs, cfg, geometry, programs=4)
    assert equal == 1.0 and kept > 3
    print(f"COCO-sized case: {kept} instances, interpreter + reference {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------------------------
# GpuPostprocessor itself, end to end, on a stand-in CUDA driver whose "device" is host memory and
# whose cuLaunchKernel runs the interpreted kernels (decoding the launcher's void** parameters)


class InterpreterDriver:
    """The cuda.bindings.driver calls runtime/cuda_driver.py and runtime/gpu/launcher.py make, backed by
    host memory."""

    class CUresult:
        CUDA_SUCCESS = 0

    CUdevice_attribute = type("A", (), {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": "major",
                                        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": "minor",
                                        "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT": "sms"})
    CUstream_flags = type("F", (), {"CU_STREAM_NON_BLOCKING": 1})
    CUfunction_attribute = type("FA", (), {"CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES": 8})

    def __init__(self, capability=(8, 7)):
        self.capability = capability
        self.allocations: dict[int, torch.Tensor] = {}
        self.calls: list[str] = []
        self.infos = None

    # context, device
    def cuInit(self, flags):
        return (0,)

    def cuDeviceGetCount(self):
        return 0, 1

    def cuDeviceGet(self, i):
        return 0, i

    def cuDevicePrimaryCtxRetain(self, dev):
        return 0, "ctx"

    def cuDevicePrimaryCtxRelease(self, dev):
        return (0,)

    def cuCtxSetCurrent(self, ctx):
        return (0,)

    def cuDeviceGetAttribute(self, attr, dev):
        return 0, {"major": self.capability[0], "minor": self.capability[1], "sms": 2}[attr]

    def cuDeviceGetName(self, size, dev):
        return 0, b"interpreter\0"

    def cuStreamCreate(self, flags):
        return 0, 1234

    def cuStreamSynchronize(self, stream):
        self.calls.append("sync")
        return (0,)

    def cuStreamDestroy(self, stream):
        return (0,)

    # memory
    def CUdeviceptr(self, ptr):
        return int(ptr)

    def cuMemAlloc(self, nbytes):
        t = torch.full((nbytes,), 0xAB, dtype=torch.uint8)  # garbage, like fresh device memory
        self.allocations[t.data_ptr()] = t
        return 0, t.data_ptr()

    def cuMemFree(self, ptr):
        del self.allocations[int(ptr)]
        return (0,)

    def _view(self, addr: int, dtype) -> torch.Tensor:
        for base, t in self.allocations.items():
            if base <= addr < base + t.numel():
                off = addr - base
                itemsize = torch.empty(0, dtype=dtype).element_size()
                assert off % itemsize == 0
                count = (t.numel() - off) // itemsize
                return t[off: off + count * itemsize].view(dtype)
        raise AssertionError(f"address {addr:#x} is not device memory")

    def cuMemsetD32Async(self, ptr, value, count, stream):
        self.calls.append("memset")
        self._view(int(ptr), torch.int32)[:count] = value
        return (0,)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        self.calls.append("copy_back")
        self._view(int(src), torch.uint8)  # must be device memory
        ctypes.memmove(dst, int(src), nbytes)
        return (0,)

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        self._view(int(dst), torch.uint8)
        ctypes.memmove(int(dst), src, nbytes)
        return (0,)

    # modules and launches
    def cuModuleLoadData(self, image):
        assert image.endswith(b"\0") and b".visible .entry" in image
        return 0, image

    def cuModuleGetFunction(self, module, name):
        return 0, name.decode()

    def cuModuleUnload(self, module):
        return (0,)

    def cuFuncSetAttribute(self, *args):
        return (0,)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        from pfpn.runtime.gpu import launcher

        info = next(i for i in self.infos.values() if i.entry == f)
        assert bx == 32 * info.num_warps and by == bz == 1 and shared == info.shared
        array = (ctypes.c_void_p * len(info.params)).from_address(params)
        dtypes = {"*fp32": torch.float32, "*i32": torch.int32, "*i64": torch.int64}
        args = []
        for (pname, ptype), addr in zip(info.params, array):
            if pname in info.scratch:
                assert ctypes.c_uint64.from_address(addr).value == 0  # no scratch: NULL
                continue
            if ptype.startswith("*"):
                args.append(self._view(ctypes.c_uint64.from_address(addr).value, dtypes[ptype]))
            else:
                value = launcher.SCALAR_CTYPES[ptype].from_address(addr).value
                args.append(float(np.float32(value)) if ptype == "fp32" else int(value))
        manifest_constexprs = next(k for k in self.manifest["kernels"] if k["entry"] == f and
                                   k["target"] == info.target)["constexprs"]
        getattr(K, info.name)[(gx, gy, gz)](*args, **manifest_constexprs)
        self.calls.append(info.name)
        return (0,)


def check_gpu_postprocessor_end_to_end_on_interpreter_driver(monkeypatch):
    from pfpn.runtime import cuda_driver
    from pfpn.runtime.gpu import launcher
    from pfpn.runtime.gpu.device_fusion import GpuPostprocessor

    drv = InterpreterDriver()
    monkeypatch.setattr(cuda_driver, "driver", lambda: drv)
    drv.manifest = launcher.read_manifest()
    post = GpuPostprocessor(num_thing_classes=8, num_stuff_classes=7, max_detections=12,
                            fusion=FusionConfig(stuff_area_limit=60))
    drv.infos = post.kernels.infos
    assert post.kernels.target == 75 and post.programs == 8  # the sm_75 PTX on an sm_87 device
    rng = np.random.default_rng(21)
    geometry = RANDOM_GEOMETRIES[1]
    inputs = random_case(rng, t=8, s=7, d=12, n=9, geometry=geometry, ties=True)
    device = {}
    for name, t in inputs.items():
        arr = np.ascontiguousarray(t.numpy())
        device[name] = cuda_driver.DeviceBuffer(arr.nbytes)
        cuda_driver.copy_to_device(device[name].ptr, arr, post.stream)
    drv.calls.clear()
    label_map, kept = post.run(**{k: b.ptr for k, b in device.items()}, original_size=geometry.original_size,
                               resized_size=geometry.resized_size, padded_size=geometry.padded_size,
                               scale_factor=geometry.scale_factor)
    ref, ref_kept = run_reference(inputs, post.config, geometry)
    np.testing.assert_array_equal(label_map, ref)
    assert label_map.dtype == np.int32 and kept.tolist() == list(ref_kept)
    # nothing comes back before the end: memsets, launches, then the copies and one sync
    assert drv.calls[:2] == ["memset", "memset"]
    assert drv.calls[-3:] == ["copy_back", "copy_back", "sync"]
    assert "copy_back" not in drv.calls[:-3] and "sync" not in drv.calls[:-1]
    assert drv.calls.count("instance_write_kernel") == 12
    # a second image in the same buffers reuses the packed launches
    inputs = random_case(rng, t=8, s=7, d=12, n=12, geometry=geometry, ties=False)
    for name, t in inputs.items():
        cuda_driver.copy_to_device(device[name].ptr, np.ascontiguousarray(t.numpy()), post.stream)
    label_map, kept = post.run(**{k: b.ptr for k, b in device.items()}, original_size=geometry.original_size,
                               resized_size=geometry.resized_size, padded_size=geometry.padded_size,
                               scale_factor=geometry.scale_factor)
    assert len(post._prepared) == 1
    ref, ref_kept = run_reference(inputs, post.config, geometry)
    np.testing.assert_array_equal(label_map, ref)
    assert kept.tolist() == list(ref_kept)
    for b in device.values():
        b.close()
    post.close()
