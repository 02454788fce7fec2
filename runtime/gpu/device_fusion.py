"""GPU post-processing of one image's contract outputs (runtime/contract.py) left on the device
by the network: mask pasting, panoptic fusion and semantic argmax, with only the final (H, W)
int32 label map (and the tiny list of kept detections) copied back. Torch-free, Triton-free:
the kernels (``runtime/gpu/kernels.py``) are precompiled PTX launched through cuda-python.

Same semantics as ``training/model/panoptic_fusion.py`` composed as in
``training/predictor.py:label_map_single_image`` (and the numpy ``runtime/fusion.py``):
label map values ``label + k * instance_offset`` for kept instance k (1-based, in fusion order),
stuff labels ``T .. T + S - 1``, VOID ``T + S``.

Launch sequence (all on one stream, no host synchronisation until the final copy;
:func:`launch_plan` is the single description of it, also driven on the CPU by the tests):

1. memset 0 of the int32 workspace and of the (H, W) int32 label map (0 = free pixel);
2. ``fusion_sort_kernel`` (1 program): fusion order = torch's ``argsort(-scores)``;
3. for each of the D detection slots: ``instance_stats_kernel`` (area, already-covered pixels,
   mask computed on the fly from the 28x28 probabilities) then ``instance_write_kernel``
   (keep/skip, instance number, paint free pixels); slots >= num_detections exit at once;
4. ``semantic_kernel``: argmax of the two-stage bilinear upsampling for free pixels + stuff
   histogram;
5. ``small_stuff_kernel``: small stuff -> VOID;
6. copy back the label map, the kept count and the kept detection indices; synchronise.

Neither the N full-resolution masks nor the S + 1 full-resolution logit planes ever exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from pfpn.runtime import cuda_driver
from pfpn.runtime.contract import MASK_SIZE, SEMANTIC_STRIDE, FusionConfig

SORT_BLOCK = 128  # max detections per image the sort kernel handles (contract default: 100)
HIST_BINS = 128  # max stuff classes
INSTANCE_TILE = (16, 64)
SEMANTIC_TILE = (16, 32)
SMALL_STUFF_BLOCK = 1024


@dataclass(frozen=True)
class KernelSpec:
    """What the PTX build needs to compile a kernel and the launcher to call it."""

    name: str
    params: tuple[tuple[str, str], ...]  # (argument name, Triton type), non-constexpr, in order
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4


_IT, _IW = INSTANCE_TILE
_ST, _SW = SEMANTIC_TILE
KERNEL_SPECS: tuple[KernelSpec, ...] = (
    KernelSpec("fusion_sort_kernel",
               (("scores_ptr", "*fp32"), ("num_det_ptr", "*i64"), ("order_ptr", "*i32"), ("D", "i32")),
               {"BLOCK": SORT_BLOCK, "STACK": 32}, num_warps=1),
    KernelSpec("instance_stats_kernel",
               (("slot", "i32"), ("boxes_ptr", "*fp32"), ("probs_ptr", "*fp32"), ("num_det_ptr", "*i64"),
                ("order_ptr", "*i32"), ("label_map_ptr", "*i32"), ("stats_ptr", "*i32"), ("H", "i32"), ("W", "i32"),
                ("M", "i32"), ("sx", "fp32"), ("sy", "fp32"), ("mask_thr", "fp32")),
               {"TH": _IT, "TW": _IW}, num_warps=4),
    KernelSpec("instance_write_kernel",
               (("slot", "i32"), ("boxes_ptr", "*fp32"), ("probs_ptr", "*fp32"), ("labels_ptr", "*i64"),
                ("num_det_ptr", "*i64"), ("order_ptr", "*i32"), ("label_map_ptr", "*i32"), ("stats_ptr", "*i32"),
                ("count_ptr", "*i32"), ("kept_ptr", "*i32"), ("H", "i32"), ("W", "i32"), ("M", "i32"),
                ("sx", "fp32"), ("sy", "fp32"), ("mask_thr", "fp32"), ("overlap_thr", "fp32"), ("offset", "i32")),
               {"TH": _IT, "TW": _IW}, num_warps=4),
    KernelSpec("semantic_kernel",
               (("logits_ptr", "*fp32"), ("label_map_ptr", "*i32"), ("hist_ptr", "*i32"), ("H", "i32"), ("W", "i32"),
                ("RH", "i32"), ("RW", "i32"), ("PH", "i32"), ("PW", "i32"), ("LH", "i32"), ("LW", "i32"),
                ("S", "i32"), ("T", "i32")),
               {"TH": _ST, "TW": _SW, "NB": HIST_BINS}, num_warps=4),
    KernelSpec("small_stuff_kernel",
               (("label_map_ptr", "*i32"), ("hist_ptr", "*i32"), ("HW", "i32"), ("S", "i32"), ("T", "i32"),
                ("limit", "i32")),
               {"BLOCK": SMALL_STUFF_BLOCK}, num_warps=4),
)
SPECS_BY_NAME = {s.name: s for s in KERNEL_SPECS}


# ----------------------------------------------------------------------------------------------
# launch plan


@dataclass(frozen=True)
class Buf:
    """A kernel pointer argument: buffer ``name`` + ``offset`` elements of its dtype."""

    name: str
    offset: int = 0


@dataclass(frozen=True)
class Memset:
    """Zero ``count`` int32 elements of buffer ``name``."""

    name: str
    count: int


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    args: tuple  # Buf | int | np.float32, in KernelSpec.params order


Step = Union[Memset, Launch]

# buffers a plan refers to (dtype, shape in terms of the plan's sizes)
BUFFERS = {
    "boxes": "float32 [D, 4] (resized-image pixels)",
    "scores": "float32 [D]",
    "labels": "int64 [D]",
    "mask_probs": "float32 [D, M, M]",
    "num_detections": "int64 [1]",
    "semantic_logits": "float32 [S + 1, LH, LW]",
    "label_map": "int32 [H, W] (output)",
    "workspace": "int32 [WorkspaceLayout.size]",
}


@dataclass(frozen=True)
class WorkspaceLayout:
    """int32 element offsets inside the workspace buffer (zeroed before each image)."""

    order: int
    stats: int
    count: int
    kept: int
    hist: int
    size: int

    @classmethod
    def for_detections(cls, d: int) -> "WorkspaceLayout":
        order = 0
        stats = order + d
        count = stats + 2 * d
        kept = count + d + 1
        hist = kept + d
        return cls(order, stats, count, kept, hist, hist + HIST_BINS)


@dataclass(frozen=True)
class KernelConfig:
    """What the kernels know of the model: class counts, detection slots, the mask threshold and
    the fusion parameters (the runtime's one :class:`runtime.contract.FusionConfig`)."""

    num_thing_classes: int
    num_stuff_classes: int
    max_detections: int
    mask_threshold: float = 0.5
    fusion: FusionConfig = FusionConfig()
    mask_size: int = MASK_SIZE

    def validate(self) -> None:
        if not 1 <= self.max_detections <= SORT_BLOCK:
            raise ValueError(f"GPU post-processing handles 1..{SORT_BLOCK} detections per image, "
                             f"not {self.max_detections}")
        if not 1 <= self.num_stuff_classes <= HIST_BINS:
            raise ValueError(f"GPU post-processing handles 1..{HIST_BINS} stuff classes, not {self.num_stuff_classes}")
        if self.num_thing_classes + self.num_stuff_classes >= self.fusion.instance_offset:
            raise ValueError("instance_offset must exceed the number of labels (things + stuff + VOID)")
        if self.mask_size < 1:
            raise ValueError("mask_size must be positive")


@dataclass(frozen=True)
class ImageGeometry:
    """Host-known sizes of one image, all (h, w): original image, resized image inside the
    padding, padded network input, stride-4 logits; scale_factor = (new_w / w, new_h / h)."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    scale_factor: tuple[float, float]
    logits_size: tuple[int, int] | None = None

    @property
    def logits(self) -> tuple[int, int]:
        if self.logits_size is not None:
            return tuple(self.logits_size)
        return (self.padded_size[0] // SEMANTIC_STRIDE, self.padded_size[1] // SEMANTIC_STRIDE)

    def validate(self) -> None:
        (h, w), (rh, rw), (ph, pw), (lh, lw) = self.original_size, self.resized_size, self.padded_size, self.logits
        if min(h, w, rh, rw, ph, pw, lh, lw) < 1:
            raise ValueError(f"empty image size in {self}")
        if rh > ph or rw > pw:
            raise ValueError(f"resized size {self.resized_size} exceeds the padded size {self.padded_size}")
        if h * w >= 2**31 or ph * pw >= 2**31:
            raise ValueError("image too large for int32 pixel indexing")
        sx, sy = self.scale_factor
        if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
            raise ValueError(f"scale factor must be positive, got {self.scale_factor}")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launch_plan(config: KernelConfig, geometry: ImageGeometry, *, programs: int) -> list[Step]:
    """Every memset and kernel launch for one image, in stream order. ``programs``: grid size of
    the per-instance kernels (they loop over the instance's region tiles)."""
    config.validate()
    geometry.validate()
    d = config.max_detections
    h, w = geometry.original_size
    rh, rw = geometry.resized_size
    ph, pw = geometry.padded_size
    lh, lw = geometry.logits
    s, t = config.num_stuff_classes, config.num_thing_classes
    sx, sy = (np.float32(v) for v in geometry.scale_factor)  # the reference divides by float32 factors
    m = config.mask_size
    mask_thr = np.float32(config.mask_threshold)
    overlap_thr = np.float32(config.fusion.mask_overlap_threshold)
    ws = WorkspaceLayout.for_detections(d)
    programs = max(1, min(int(programs), cdiv(h, _IT) * cdiv(w, _IW)))
    steps: list[Step] = [Memset("workspace", ws.size), Memset("label_map", h * w)]
    steps.append(Launch("fusion_sort_kernel", (1, 1, 1),
                        (Buf("scores"), Buf("num_detections"), Buf("workspace", ws.order), d)))
    for slot in range(d):
        steps.append(Launch("instance_stats_kernel", (programs, 1, 1),
                            (slot, Buf("boxes"), Buf("mask_probs"), Buf("num_detections"), Buf("workspace", ws.order),
                             Buf("label_map"), Buf("workspace", ws.stats), h, w, m, sx, sy, mask_thr)))
        steps.append(Launch("instance_write_kernel", (programs, 1, 1),
                            (slot, Buf("boxes"), Buf("mask_probs"), Buf("labels"), Buf("num_detections"),
                             Buf("workspace", ws.order), Buf("label_map"), Buf("workspace", ws.stats),
                             Buf("workspace", ws.count), Buf("workspace", ws.kept), h, w, m, sx, sy, mask_thr,
                             overlap_thr, config.fusion.instance_offset)))
    steps.append(Launch("semantic_kernel", (cdiv(w, _SW), cdiv(h, _ST), 1),
                        (Buf("semantic_logits"), Buf("label_map"), Buf("workspace", ws.hist), h, w, rh, rw, ph, pw,
                         lh, lw, s, t)))
    steps.append(Launch("small_stuff_kernel", (cdiv(h * w, SMALL_STUFF_BLOCK), 1, 1),
                        (Buf("label_map"), Buf("workspace", ws.hist), h * w, s, t, config.fusion.stuff_area_limit)))
    for step in steps:
        if isinstance(step, Launch):
            assert len(step.args) == len(SPECS_BY_NAME[step.kernel].params), step.kernel
    return steps


def read_back(label_map: np.ndarray, workspace: np.ndarray, config: KernelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(label map (H, W) int32, kept detection indices int32 [K]) from the copied-back buffers."""
    ws = WorkspaceLayout.for_detections(config.max_detections)
    num_kept = int(workspace[ws.count + config.max_detections])
    return label_map, workspace[ws.kept: ws.kept + num_kept].copy()


# ----------------------------------------------------------------------------------------------
# the GPU post-processor


_ITEMSIZE = {"boxes": 4, "scores": 4, "labels": 8, "mask_probs": 4, "num_detections": 8, "semantic_logits": 4,
             "label_map": 4, "workspace": 4}


def device_pointer(x: Any) -> int:
    """A device address from an int, a ``__cuda_array_interface__`` object (CuPy, Numba, ...),
    or an object with ``.ptr`` / ``.handle`` / ``data_ptr()``."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    for attr in ("ptr", "handle"):
        if hasattr(x, attr):
            v = getattr(x, attr)
            try:
                return int(v)
            except TypeError:
                return int(v.getPtr())
    if hasattr(x, "data_ptr"):
        return int(x.data_ptr())
    raise TypeError(f"cannot take a device pointer from {type(x).__name__}")


def image_pointers(outputs: dict, index: int, *, max_detections: int, num_stuff_classes: int,
                   logits_size: Sequence[int], mask_size: int = MASK_SIZE) -> dict[str, int]:
    """Device pointers of image ``index`` inside batched, C-contiguous contract outputs
    (``outputs``: output name -> device pointer of the [B, ...] buffer, runtime/contract.py)."""
    d, m = max_detections, mask_size
    lh, lw = logits_size
    row_bytes = {"boxes": d * 4 * 4, "scores": d * 4, "labels": d * 8, "mask_probs": d * m * m * 4,
                 "num_detections": 8, "semantic_logits": (num_stuff_classes + 1) * lh * lw * 4}
    return {name: device_pointer(outputs[name]) + index * size for name, size in row_bytes.items()}


class GpuPostprocessor:
    """Runs the fusion kernels on device-resident contract outputs of one image.

    ``run(boxes=..., scores=..., labels=..., mask_probs=..., num_detections=...,
    semantic_logits=..., original_size=..., resized_size=..., padded_size=..., scale_factor=...)``
    takes DEVICE pointers (ints or CUDA-array-interface objects) to one image's rows of the
    contract outputs (shapes in :data:`BUFFERS`, D = max_detections) and returns (label map
    (H, W) int32, kept detection rows int32 [K]) as :func:`read_back` (the TensorRT backend adds
    the host detections to make a ``runtime.result.PanopticMap``). Raises :class:`runtime.cuda_driver.GpuUnavailableError` (a
    RuntimeError) when no CUDA driver/GPU or no PTX for the device is available.
    """

    def __init__(self, *, num_thing_classes: int, num_stuff_classes: int, max_detections: int,
                 mask_threshold: float = 0.5, fusion: FusionConfig = FusionConfig(), mask_size: int = MASK_SIZE,
                 device: int = 0, stream: Any = None, ptx_dir: Any = None, programs: int | None = None) -> None:
        from pfpn.runtime.gpu import launcher

        self.config = KernelConfig(num_thing_classes=num_thing_classes, num_stuff_classes=num_stuff_classes,
                                   max_detections=max_detections, mask_threshold=mask_threshold, fusion=fusion,
                                   mask_size=mask_size)
        self.config.validate()
        self.context = cuda_driver.CudaContext(device)
        self.kernels = launcher.KernelModule(self.context, ptx_dir or launcher.PTX_DIR)
        missing = [s.name for s in KERNEL_SPECS if s.name not in self.kernels.infos]
        if missing:
            raise cuda_driver.GpuUnavailableError(f"compiled kernels missing for sm_{self.kernels.target}: {missing}")
        self.stream = self.context.create_stream() if stream is None else cuda_driver.Stream.from_address(int(stream))
        self.programs = programs or 4 * self.context.sm_count
        self.workspace_layout = WorkspaceLayout.for_detections(max_detections)
        self.workspace = cuda_driver.DeviceBuffer(4 * self.workspace_layout.size)
        self._label_map: Any = None
        self._prepared: dict = {}

    @classmethod
    def from_metadata(cls, metadata: Any, **kwargs: Any) -> "GpuPostprocessor":
        """From a :class:`runtime.contract.ModelMetadata`."""
        return cls(num_thing_classes=metadata.num_thing_classes, num_stuff_classes=metadata.num_stuff_classes,
                   max_detections=metadata.max_detections, mask_threshold=metadata.mask_threshold,
                   fusion=metadata.fusion, **kwargs)

    def _label_map_buffer(self, nbytes: int) -> Any:
        if self._label_map is None or self._label_map.nbytes < nbytes:
            if self._label_map is not None:
                self._label_map.close()
            self._label_map = cuda_driver.DeviceBuffer(nbytes)
            self._prepared.clear()  # packed launches point at the old buffer
        return self._label_map

    def enqueue(self, *, boxes: Any, scores: Any, labels: Any, mask_probs: Any, num_detections: Any,
                semantic_logits: Any, original_size: Sequence[int], resized_size: Sequence[int],
                padded_size: Sequence[int], scale_factor: Sequence[float],
                logits_size: Sequence[int] | None = None) -> int:
        """Enqueue the whole post-processing on the stream; returns the device address of the
        (H, W) int32 label map (valid until the next call). No synchronisation."""
        geometry = ImageGeometry(tuple(original_size), tuple(resized_size), tuple(padded_size),
                                 (float(scale_factor[0]), float(scale_factor[1])),
                                 tuple(logits_size) if logits_size is not None else None)
        h, w = geometry.original_size
        out = self._label_map_buffer(4 * h * w)
        pointers = {"boxes": boxes, "scores": scores, "labels": labels, "mask_probs": mask_probs,
                    "num_detections": num_detections, "semantic_logits": semantic_logits}
        base = {k: device_pointer(v) for k, v in pointers.items()}
        base["label_map"] = out.ptr
        base["workspace"] = self.workspace.ptr
        self.context.make_current()
        # the ~2 D + 3 launches are packed once per (geometry, buffers): with fixed network
        # output buffers (the usual TensorRT bindings) later images only call cuLaunchKernel
        key = (geometry, tuple(sorted(base.items())))
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = []
            for step in launch_plan(self.config, geometry, programs=self.programs):
                if isinstance(step, Memset):
                    prepared.append((base[step.name], step.count))
                    continue
                args = [base[a.name] + a.offset * _ITEMSIZE[a.name] if isinstance(a, Buf) else a for a in step.args]
                prepared.append(self.kernels.prepare(step.kernel, step.grid, args))
            if len(self._prepared) >= 8:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepared
        for item in prepared:
            if isinstance(item, tuple):
                cuda_driver.memset_d32(item[0], 0, item[1], self.stream)
            else:
                item.launch(self.stream)
        return out.ptr

    def run(self, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`enqueue`, copy the label map and kept list back, synchronise -> (label map
        (H, W) int32, kept detection rows int32 [K])."""
        h, w = kwargs["original_size"]
        ptr = self.enqueue(**kwargs)
        label_map = np.empty((h, w), dtype=np.int32)
        workspace = np.empty(self.workspace_layout.size, dtype=np.int32)
        cuda_driver.copy_ptr_to_host(label_map, ptr, label_map.nbytes, self.stream)
        cuda_driver.copy_ptr_to_host(workspace, self.workspace.ptr, workspace.nbytes, self.stream)
        self.stream.synchronize()
        return read_back(label_map, workspace, self.config)

    def close(self) -> None:
        for obj in (self._label_map, self.workspace, self.kernels, self.stream):
            if obj is not None:
                obj.close()
        self._label_map = None
        self.context.close()


POSTPROCESS_CHOICES = ("auto", "gpu", "cpu")


def warn_on_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def open_gpu_postprocessor(metadata: Any, *, postprocess: str = "auto", device: int = 0, stream: Any = None,
                           warn: Any = warn_on_stderr) -> "GpuPostprocessor | None":
    """The GPU post-processor for a model (:class:`runtime.contract.ModelMetadata`), or None for
    the numpy one.

    postprocess: "gpu" (the kernels or an error), "cpu" (numpy), "auto" (the kernels where they
    run, else numpy with a one-line warning through ``warn``: no driver, a GPU older than the
    PTX's lowest target, or a model outside the kernels' limits such as > 128 detections)."""
    from pfpn.runtime.cuda_driver import GpuUnavailableError

    if postprocess not in POSTPROCESS_CHOICES:
        raise ValueError(f"postprocess must be one of {POSTPROCESS_CHOICES}, got {postprocess!r}")
    if postprocess == "cpu":
        return None
    try:
        return GpuPostprocessor.from_metadata(metadata, device=device, stream=stream)
    except (GpuUnavailableError, ValueError) as e:
        if postprocess == "gpu":
            raise
        warn(f"warning: GPU post-processing unavailable ({' '.join(str(e).split())}); using the CPU (numpy) "
             f"post-processing")
        return None
