"""The GPU checks that run the PyTorch model (benchmarks/gpu_check.py): the small demo and R-50
models with random "firing" weights, test images, the export graph's outputs, and the checks
``postprocess_kernels_small`` / ``postprocess_kernels_r50`` (the AOT post-processing kernels
against the numpy post-processing) and ``torch_cuda_vs_cpu``. PyTorch is imported lazily."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pfpn.benchmarks.gpu_check_common import (MATCH_IOU, CheckContext, check_result, compare_label_maps,
                                              detection_agreement, median_ms, relative_error, require_gpu_driver,
                                              require_torch, require_torch_cuda, summarize_map_comparisons)

# torch_cuda_vs_cpu: what counts as a gross mismatch
MAX_SEMANTIC_REL_ERR = 1e-3
MIN_MATCHED_FRACTION = 0.9


# ----------------------------------------------------------------------------------------------
# models, images, network outputs (torch, imported lazily)


def small_categories() -> Any:
    from pfpn.runtime.categories import CategoryTable
    from pfpn.training.data.synthetic import SYNTHETIC_CATEGORIES

    return CategoryTable(SYNTHETIC_CATEGORIES)


def build_small_model(seed: int = 0) -> tuple[Any, Any]:
    """The small demo config with random weights biased to detect -> (model on the CPU, TrainConfig)."""
    torch = require_torch()
    from pfpn.training.config import tiny_synthetic
    from pfpn.training.model.panoptic_fpn import build_model
    from pfpn.training.random_checkpoint import make_firing

    cats = small_categories()
    config = tiny_synthetic(cats.num_things, cats.num_stuff)
    torch.manual_seed(seed)
    return make_firing(build_model(config.model)).eval(), config


def build_r50_model(seed: int = 0) -> tuple[Any, Any]:
    torch = require_torch()
    from pfpn.training.config import PRESETS
    from pfpn.training.model.panoptic_fpn import build_model
    from pfpn.training.random_checkpoint import make_firing

    config = PRESETS["r50_fpn_1x"]()
    torch.manual_seed(seed)
    return make_firing(build_model(config.model)).eval(), config


def small_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic scenes (BGR uint8) of several sizes, landscape and portrait, not multiples of 32."""
    from pfpn.training.data.synthetic import make_synthetic_sample

    sizes = [(192, 256), (150, 200), (256, 192), (97, 130), (180, 300), (240, 160)]
    return [make_synthetic_sample(np.random.default_rng([seed, i]), *sizes[i % len(sizes)])[0] for i in range(count)]


def photo_images(count: int, height: int = 800, width: int = 1333, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``count`` BGR images of height x width: scikit-image's bundled photographs (resized) where
    importable, else random smooth images -> (images, what they are)."""
    import cv2

    photos: list[np.ndarray] = []
    source = "random smooth images (scikit-image not importable)"
    try:
        from skimage import data as skdata

        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "motorcycle_left"):
            try:
                img = np.asarray(getattr(skdata, name)())
            except Exception:  # not bundled in this version (needs a download): skip it
                continue
            if img.ndim == 2:
                img = np.stack([img] * 3, -1)
            photos.append(np.ascontiguousarray(img[..., :3][..., ::-1]).astype(np.uint8))
        if photos:
            source = f"{len(photos)} scikit-image photographs, resized (flipped / shifted variants)"
    except Exception:
        pass
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if photos:
            img = photos[i % len(photos)]
            if (i // len(photos)) % 2:
                img = img[:, ::-1]
            img = cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_LINEAR)
            if i >= 2 * len(photos):
                img = np.roll(img, shift=(37 * i) % width, axis=1)
        else:
            low = rng.uniform(0, 255, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
            img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(img, dtype=np.uint8))
    return out, source


@dataclass
class NetworkRun:
    """One image through the export graph: host copies of the contract outputs (batch of 1)."""

    outputs: dict[str, np.ndarray]
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    scale_factor: tuple[float, float]
    seconds: float


def export_graph(model: Any, config: Any, device: str) -> Any:
    """``export.graph.ExportablePanopticFPN`` of ``model`` on ``device`` (eval)."""
    from pfpn.export.graph import ExportablePanopticFPN

    return ExportablePanopticFPN(model, config.model).to(device).eval()


def run_network(graph: Any, image_bgr: np.ndarray, metadata: Any, device: str) -> NetworkRun:
    """REFERENCE §2 pre-processing (runtime.preprocess.prepare_batch) and the export graph on ``device``."""
    torch = require_torch()
    from pfpn.runtime.contract import OUTPUT_NAMES
    from pfpn.runtime.preprocess import prepare_batch

    batch, sizes, factors = prepare_batch([image_bgr], metadata.max_long_side, metadata.max_short_side,
                                          metadata.size_divisor)
    t0 = time.perf_counter()
    with torch.no_grad():
        outs = graph(torch.from_numpy(batch).to(device), torch.from_numpy(sizes).to(device))
    host = {name: t.detach().cpu().numpy() for name, t in zip(OUTPUT_NAMES, outs)}
    seconds = time.perf_counter() - t0
    return NetworkRun(host, (int(image_bgr.shape[0]), int(image_bgr.shape[1])), (int(sizes[0][0]), int(sizes[0][1])),
                      (int(batch.shape[1]), int(batch.shape[2])), (float(factors[0][0]), float(factors[0][1])), seconds)


def numpy_postprocess(run: NetworkRun, metadata: Any) -> Any:
    """The numpy post-processing exactly as runtime.predictor.Predictor._predict_chunk calls it."""
    from pfpn.runtime.fusion import postprocess_single_image

    o = run.outputs
    n = int(o["num_detections"][0])
    return postprocess_single_image(
        o["boxes"][0, :n], o["scores"][0, :n], o["labels"][0, :n], o["mask_probs"][0, :n], o["semantic_logits"][0],
        resized_size=run.resized_size, original_size=run.original_size, scale_factor=run.scale_factor,
        num_thing_classes=metadata.num_thing_classes, mask_threshold=metadata.mask_threshold,
        fusion=metadata.fusion)


def gpu_postprocess(post: Any, run: NetworkRun, stream: Any) -> tuple[Any, float]:
    """One image's contract outputs copied into device buffers, then the kernels (timed: the
    kernels, the label map copy back and the synchronisation) -> ((label map, kept rows), seconds)."""
    from pfpn.runtime import cuda_driver

    names = ("boxes", "scores", "labels", "mask_probs", "num_detections", "semantic_logits")
    bufs = {}
    try:
        for name in names:
            host = np.ascontiguousarray(run.outputs[name][0] if name != "num_detections" else run.outputs[name][:1])
            bufs[name] = cuda_driver.DeviceBuffer(host.nbytes)
            cuda_driver.copy_to_device(bufs[name].ptr, host, stream)
        stream.synchronize()
        logits_size = tuple(int(v) for v in run.outputs["semantic_logits"].shape[2:])
        t0 = time.perf_counter()
        out = post.run(**{k: b.ptr for k, b in bufs.items()}, original_size=run.original_size,
                       resized_size=run.resized_size, padded_size=run.padded_size, scale_factor=run.scale_factor,
                       logits_size=logits_size)
        return out, time.perf_counter() - t0
    finally:
        for b in bufs.values():
            b.close()


# ----------------------------------------------------------------------------------------------
# 2. post-processing kernels vs numpy


def _postprocess_kernels(ctx: CheckContext, which: str) -> dict:
    require_gpu_driver()
    torch = require_torch_cuda()
    from pfpn.export.metadata import build_metadata
    from pfpn.runtime.gpu.device_fusion import GpuPostprocessor

    if which == "small":
        model, config = build_small_model()
        cats = small_categories()
        images, source = small_images(ctx.num_images), "synthetic scenes of 6 sizes"
    else:
        from pfpn.runtime.categories import coco_panoptic_categories
        from pfpn.runtime.categories import CategoryTable

        model, config = build_r50_model()
        cats = CategoryTable(coco_panoptic_categories())
        images, source = photo_images(ctx.num_images)
    meta = build_metadata(config.model, cats, flavor="ort", source=f"random {which} model (firing)")
    graph = export_graph(model, config, "cuda")
    post = GpuPostprocessor.from_metadata(meta)
    rows, gpu_s, cpu_s, net_s, detections = [], [], [], [], []
    stopped = ""
    try:
        for i, image in enumerate(images):
            if ctx.budget.low(20.0):
                stopped = f"time budget: stopped after {i} of {len(images)} images"
                break
            run = run_network(graph, image, meta, "cuda")
            net_s.append(run.seconds)
            t0 = time.perf_counter()
            ref = numpy_postprocess(run, meta)
            cpu_s.append(time.perf_counter() - t0)
            (got_map, got_kept), seconds = gpu_postprocess(post, run, post.stream)
            gpu_s.append(seconds)
            row = compare_label_maps(ref.label_map, got_map)
            row["kept_equal"] = [int(k) for k in got_kept] == [int(k) for k in ref.kept]
            row.update(image=i, size=list(run.original_size), detections=int(run.outputs["num_detections"][0]),
                       kept=len(ref.kept))
            detections.append(row["detections"])
            rows.append(row)
    finally:
        post.close()
        del graph
        torch.cuda.empty_cache()
    totals = summarize_map_comparisons(rows)
    ok = bool(rows) and totals["images_identical"] == totals["images"]
    gpu_ms, cpu_ms = median_ms(gpu_s[1:] or gpu_s), median_ms(cpu_s)
    summary = (f"{totals['images_identical']}/{totals['images']} images identical, {totals['pixels_differing']} px "
               f"differ; gpu {gpu_ms} ms/img, numpy {cpu_ms} ms/img; detections {min(detections, default=0)}.."
               f"{max(detections, default=0)}")
    if stopped:
        summary += f" ({stopped})"
    return check_result("pass" if ok else "fail", summary, **totals, gpu_ms_per_image_median=gpu_ms,
                        gpu_ms_first_image=round(1000 * gpu_s[0], 3) if gpu_s else None,
                        numpy_ms_per_image_median=cpu_ms, network_ms_per_image_median=median_ms(net_s[1:] or net_s),
                        images_source=source, stopped_early=stopped, per_image=rows,
                        reason="" if ok else "the GPU and numpy post-processing disagree (per_image lists where)")


def check_postprocess_kernels_small(ctx: CheckContext) -> dict:
    return _postprocess_kernels(ctx, "small")


def check_postprocess_kernels_r50(ctx: CheckContext) -> dict:
    return _postprocess_kernels(ctx, "r50")


# ----------------------------------------------------------------------------------------------
# 4. PyTorch on CUDA vs CPU


def compare_network_outputs(ref: NetworkRun, got: NetworkRun) -> dict:
    """Export-graph outputs of one image on two devices: detections matched by IoU, relative error
    of the semantic logits inside the image (not the padding)."""
    a, b = ref.outputs, got.outputs
    na, nb = int(a["num_detections"][0]), int(b["num_detections"][0])
    match = detection_agreement(a["boxes"][0, :na], a["labels"][0, :na], b["boxes"][0, :nb], b["labels"][0, :nb])
    h4, w4 = -(-ref.resized_size[0] // 4), -(-ref.resized_size[1] // 4)
    sa, sb = a["semantic_logits"][0][:, :h4, :w4], b["semantic_logits"][0][:, :h4, :w4]
    return {**match, "semantic_rel_err": relative_error(sa, sb),
            "semantic_max_abs_diff": float(np.abs(sa.astype(np.float64) - sb).max()) if sa.size else 0.0}


def check_torch_cuda_vs_cpu(ctx: CheckContext) -> dict:
    torch = require_torch_cuda()
    from pfpn.export.metadata import build_metadata

    model, config = build_small_model()
    meta = build_metadata(config.model, small_categories(), flavor="ort", source="random small model (firing)")
    images = small_images(2, seed=5)
    cpu_graph = export_graph(model, config, "cpu")
    cpu_runs = [run_network(cpu_graph, im, meta, "cpu") for im in images]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        import copy

        cuda_graph = export_graph(copy.deepcopy(model), config, "cuda")
        cuda_runs = [run_network(cuda_graph, im, meta, "cuda") for im in images]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rows = [compare_network_outputs(r, g) for r, g in zip(cpu_runs, cuda_runs)]
    matched = sum(r["matched"] for r in rows)
    most = sum(max(r["num_a"], r["num_b"]) for r in rows)
    fraction = matched / most if most else 1.0
    rel = max(r["semantic_rel_err"] for r in rows)
    gross = rel > MAX_SEMANTIC_REL_ERR or fraction < MIN_MATCHED_FRACTION
    reasons = []
    if gross:
        reasons.append(f"gross mismatch: semantic rel. err {rel:.2e} (limit {MAX_SEMANTIC_REL_ERR:g}), "
                       f"{fraction:.1%} of detections matched at IoU > {MATCH_IOU} (limit {MIN_MATCHED_FRACTION:.0%})")
    summary = (f"2 images, {matched}/{most} detections matched (IoU > {MATCH_IOU}), semantic rel. err {rel:.2e}, "
               f"max abs {max(r['semantic_max_abs_diff'] for r in rows):.2e} (TF32 off)")
    return check_result("fail" if reasons else "pass", summary, per_image=rows, matched_fraction=fraction,
                        semantic_rel_err=rel, reason="; ".join(reasons))
