"""TensorRT plugins for the two custom operators, as Python-defined ("quickly deployable") plugins
with ahead-of-time kernels: ``pfpn::MultiLevelRoIAlign`` and ``pfpn::BatchedNMS``.

    from pfpn.plugins.trt_plugins import register_plugins
    register_plugins()   # before parsing a trt-flavor ONNX file (runtime/build_engine.py does it)

* Shape / type descriptions (``@trtp.register``) are thin wrappers of the plain functions below
  (:func:`roi_align_output_dims`, :func:`roi_align_output_dtype`, :func:`nms_output_dims`,
  :func:`nms_output_dtypes`), which tests call without TensorRT. Both ops have data-independent
  output shapes: ``[K, C, output_height, output_width]``; ``[B, max_output_boxes]`` and ``[B]``.
* Implementations are ``@trtp.aot_impl`` only (TensorRT >= 10.9): the Triton kernels of
  ``plugins/triton_kernels.py`` are compiled for the build GPU's SM at engine-build time and their
  PTX is embedded in the engine, so the engine runs without Python (C++, trtexec).
* The ONNX parser finds them from the ``trt``-flavor nodes: op_type = plugin name,
  ``plugin_version="1"``, ``plugin_namespace="pfpn"``. Plugin attributes are the node's scalar
  attributes (``plugin_*`` strings are not plugin fields).

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` inspects real annotation
objects.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from pfpn.plugins.names import NMS_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, ROI_ALIGN_NAME
ROI_ALIGN_ID = f"{PLUGIN_NAMESPACE}::{ROI_ALIGN_NAME}"
NMS_ID = f"{PLUGIN_NAMESPACE}::{NMS_NAME}"
PLUGIN_IDS = (ROI_ALIGN_ID, NMS_ID)
NUM_LEVELS = 4
# the attributes of each plugin, in registration order (the ONNX node's non-plugin_* attributes)
ROI_ALIGN_ATTRS = ("output_height", "output_width", "sampling_ratio", "base_stride", "finest_scale")
NMS_ATTRS = ("iou_threshold", "score_threshold", "max_output_boxes")
# What TensorRT's ONNX parser must find for each trt-flavor node (runtime/trt/conformance.py checks
# the exported nodes against it; a test checks it against the registration signatures below).
PLUGIN_SPECS: Tuple[Dict[str, Any], ...] = (
    {"name": ROI_ALIGN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION,
     "attributes": {"output_height": "INT", "output_width": "INT", "sampling_ratio": "INT", "base_stride": "INT",
                    "finest_scale": "FLOAT"},
     "input_types": ("FLOAT",) * (1 + NUM_LEVELS)},
    {"name": NMS_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION,
     "attributes": {"iou_threshold": "FLOAT", "score_threshold": "FLOAT", "max_output_boxes": "INT"},
     "input_types": ("FLOAT", "FLOAT", "INT64")},
)
SM_ENV = "PFPN_PLUGIN_SM"  # compile the kernels for this SM instead of the current GPU's


class PluginShapeError(ValueError):
    pass


Dim = Any  # an int (static), None (unknown) or a TensorRT symbolic shape expression


def _static(d: Dim) -> Optional[int]:
    return d if isinstance(d, int) and not isinstance(d, bool) else None


# ----------------------------------------------------------------------------------------------
# plain shape / type functions (no TensorRT)

def roi_align_output_dims(rois: Sequence[Dim], feats: Sequence[Sequence[Dim]], output_height: int,
                          output_width: int) -> List[Dim]:
    """rois [K, 5], feats L x [B, C, H_l, W_l] -> [K, C, output_height, output_width]."""
    if len(rois) != 2:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: rois must be [K, 5], got rank {len(rois)}")
    if _static(rois[1]) is not None and rois[1] != 5:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: rois must be [K, 5] (batch, x1, y1, x2, y2), got [.., {rois[1]}]")
    if len(feats) != NUM_LEVELS:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: expects {NUM_LEVELS} feature maps (P2..P5), got {len(feats)}")
    for i, f in enumerate(feats):
        if len(f) != 4:
            raise PluginShapeError(f"{ROI_ALIGN_NAME}: feature map {i} must be [B, C, H, W], got rank {len(f)}")
    channels = [_static(f[1]) for f in feats]
    known = {c for c in channels if c is not None}
    if len(known) > 1:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: feature maps have different channel counts {channels}")
    batches = {b for b in (_static(f[0]) for f in feats) if b is not None}
    if len(batches) > 1:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: feature maps have different batch sizes {sorted(batches)}")
    if output_height <= 0 or output_width <= 0:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: output size must be positive, got {output_height}x{output_width}")
    return [rois[0], feats[0][1], int(output_height), int(output_width)]


def roi_align_output_dtype(input_dtypes: Sequence[str]) -> str:
    """All five inputs float32 -> float32 (the spec's types; an fp16 engine casts around the plugin)."""
    if len(input_dtypes) != 1 + NUM_LEVELS:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: expects {1 + NUM_LEVELS} inputs, got {len(input_dtypes)}")
    bad = [f"input {i}: {t}" for i, t in enumerate(input_dtypes) if t != "float32"]
    if bad:
        raise PluginShapeError(f"{ROI_ALIGN_NAME}: inputs must be float32 ({', '.join(bad)})")
    return "float32"


def nms_output_dims(boxes: Sequence[Dim], scores: Sequence[Dim], groups: Sequence[Dim],
                    max_output_boxes: int) -> Tuple[List[Dim], List[Dim]]:
    """boxes [B, N, 4], scores [B, N], groups [B, N] -> (selected [B, K], num_selected [B]).
    Independent of the data: TensorRT allocates both outputs before running."""
    if len(boxes) != 3 or len(scores) != 2 or len(groups) != 2:
        raise PluginShapeError(f"{NMS_NAME}: expects boxes [B, N, 4], scores [B, N], groups [B, N]; got ranks "
                               f"{len(boxes)}, {len(scores)}, {len(groups)}")
    if _static(boxes[2]) is not None and boxes[2] != 4:
        raise PluginShapeError(f"{NMS_NAME}: boxes must be [B, N, 4], got [.., .., {boxes[2]}]")
    for axis, what in ((0, "B"), (1, "N")):
        sizes = {s for s in (_static(boxes[axis]), _static(scores[axis]), _static(groups[axis])) if s is not None}
        if len(sizes) > 1:
            raise PluginShapeError(f"{NMS_NAME}: boxes, scores and groups disagree on {what}: {sorted(sizes)}")
    if max_output_boxes <= 0:
        raise PluginShapeError(f"{NMS_NAME}: max_output_boxes must be positive, got {max_output_boxes}")
    return [scores[0], int(max_output_boxes)], [scores[0]]


def nms_output_dtypes(input_dtypes: Sequence[str]) -> Tuple[str, str]:
    if list(input_dtypes) != ["float32", "float32", "int64"]:
        raise PluginShapeError(f"{NMS_NAME}: inputs must be (float32 boxes, float32 scores, int64 groups), got "
                               f"{tuple(input_dtypes)}")
    return "int64", "int64"


def plugin_target_sm(env: Optional[Dict[str, str]] = None, gpu_sm: Optional[int] = None) -> int:
    """The SM the kernels are compiled for: ``$PFPN_PLUGIN_SM`` if set (e.g. "87"), else the GPU's,
    mapped to the highest target the compiler knows that the GPU runs (sm_103 -> sm_100)."""
    from pfpn.runtime.gpu.triton_aot import PtxError, nearest_target

    env = dict(os.environ) if env is None else env
    if env.get(SM_ENV):
        try:
            sm = int(env[SM_ENV].lower().replace("sm_", "").rstrip("af"))
        except ValueError:
            raise PluginShapeError(f"{SM_ENV}={env[SM_ENV]!r} is not an SM number like 87 or 90") from None
    else:
        if gpu_sm is None:
            from pfpn.runtime.cuda_driver import gpus

            gpu_sm = gpus()[0].sm
        sm = int(gpu_sm)
    try:
        return nearest_target(sm)
    except PtxError as e:
        raise PluginShapeError(str(e)) from None


# kernels compiled by aot_impl during a build, for the engine sidecar: plugin id -> details
COMPILED: Dict[str, Dict[str, Any]] = {}


def _record(plugin_id: str, kernel: Any, sm: int) -> None:
    COMPILED[plugin_id] = {"kernel": kernel.entry, "sm": sm, "ptx_target": kernel.target,
                           "ptx_isa_version": kernel.ptx_isa, "num_warps": kernel.num_warps,
                           "shared_mem": kernel.shared}


# ----------------------------------------------------------------------------------------------
# TensorRT registration (thin)

_registered = False


def register_plugins() -> List[str]:
    """Register both plugins with TensorRT's plugin registry (once per process) -> their ids."""
    global _registered
    if _registered:
        return list(PLUGIN_IDS)
    from pfpn.runtime.trt.runner import import_tensorrt

    import_tensorrt()  # a one-line ImportError when TensorRT is missing
    import tensorrt as trt

    try:
        import tensorrt.plugin as trtp  # type: ignore[import-untyped]  # tensorrt-stubs do not cover it
    except ImportError as e:
        raise ImportError(f"TensorRT {trt.__version__} has no tensorrt.plugin module (needs >= 10.6): {e}") from None
    if not hasattr(trtp, "aot_impl"):
        raise ImportError(f"TensorRT {trt.__version__} has no ahead-of-time Python plugins (tensorrt.plugin.aot_impl "
                          f"needs >= 10.9); use the ort export flavor instead")
    from pfpn.plugins import triton_kernels as tk

    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int64: "int64",
             trt.int8: "int8", trt.bool: "bool"}

    def dtype_name(desc: Any) -> str:
        return names.get(desc.dtype, str(desc.dtype))

    def dims(desc: Any) -> List[Any]:
        return [desc.shape_expr[i] for i in range(len(desc.shape_expr))]

    # --- MultiLevelRoIAlign ---------------------------------------------------------------------
    @trtp.register(ROI_ALIGN_ID)
    def roi_align_desc(rois: trtp.TensorDesc, p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc,
                       p5: trtp.TensorDesc, output_height: int, output_width: int, sampling_ratio: int,
                       base_stride: int, finest_scale: float) -> trtp.TensorDesc:
        feats = (p2, p3, p4, p5)
        roi_align_output_dtype([dtype_name(t) for t in (rois, *feats)])
        k, c, oh, ow = roi_align_output_dims(dims(rois), [dims(f) for f in feats], output_height, output_width)
        return trtp.from_shape_expr((k, c, oh, ow), dtype=trt.float32)

    @trtp.aot_impl(ROI_ALIGN_ID)
    def roi_align_aot(rois: trtp.TensorDesc, p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc,
                      p5: trtp.TensorDesc, output_height: int, output_width: int, sampling_ratio: int,
                      base_stride: int, finest_scale: float, outputs: Tuple[trtp.TensorDesc], tactic: int
                      ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        sm = plugin_target_sm()
        kernel = tk.compile_kernel("roi_align_kernel", sm, tk.roi_align_constexprs(
            output_height, output_width, sampling_ratio, base_stride, finest_scale))
        _record(ROI_ALIGN_ID, kernel, sm)
        k = rois.shape_expr[0]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = k * (output_height * output_width) + 1  # tk.roi_align_grid: never an empty grid
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared
        scalars = [k, p2.shape_expr[1]]
        for f in (p2, p3, p4, p5):
            scalars += [f.shape_expr[2], f.shape_expr[3]]
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
        return kernel.entry, kernel.ptx, launch, extra

    # --- BatchedNMS -----------------------------------------------------------------------------
    @trtp.register(NMS_ID)
    def nms_desc(boxes: trtp.TensorDesc, scores: trtp.TensorDesc, groups: trtp.TensorDesc, iou_threshold: float,
                 score_threshold: float, max_output_boxes: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        nms_output_dtypes([dtype_name(t) for t in (boxes, scores, groups)])
        (b, k), (b2,) = nms_output_dims(dims(boxes), dims(scores), dims(groups), max_output_boxes)
        return (trtp.from_shape_expr((b, k), dtype=trt.int64), trtp.from_shape_expr((b2,), dtype=trt.int64))

    @trtp.aot_impl(NMS_ID)
    def nms_aot(boxes: trtp.TensorDesc, scores: trtp.TensorDesc, groups: trtp.TensorDesc, iou_threshold: float,
                score_threshold: float, max_output_boxes: int, outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],
                tactic: int
                ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        sm = plugin_target_sm()
        kernel = tk.compile_kernel("nms_kernel", sm, tk.nms_constexprs(iou_threshold, score_threshold,
                                                                       max_output_boxes))
        _record(NMS_ID, kernel, sm)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = scores.shape_expr[0]  # one program per image (the profile's min batch is >= 1)
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(scores.shape_expr[0]), trtp.SymInt32(scores.shape_expr[1])])
        return kernel.entry, kernel.ptx, launch, extra

    _registered = True
    return list(PLUGIN_IDS)


def plugin_infos() -> List[Dict[str, Any]]:
    """Sidecar entries for the plugins (with the kernels compiled during this process's build)."""
    out = []
    for pid in PLUGIN_IDS:
        ns, name = pid.split("::")
        out.append({"name": name, "namespace": ns, "version": PLUGIN_VERSION, "implementation": "aot-ptx",
                    "kernel": dict(COMPILED.get(pid, {}))})
    return out
