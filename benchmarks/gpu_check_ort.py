"""The ONNX Runtime GPU check (benchmarks/gpu_check.py): ``ort_cuda_providers`` runs the small
model's ort-flavor export through ``runtime.Predictor(model, providers=("cuda", "cpu"))`` and
``Predictor(model, providers=("cpu",))`` on the same images and reports what runs
(``predictor.providers``, which must include "cuda"), the milliseconds per image of both and the
agreement of the panoptic id maps. Skipped with a one-line reason where onnxruntime-gpu (the
CUDA execution provider) is not installed. :func:`compare_providers` is the GPU-free part."""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from pfpn.benchmarks.gpu_check_common import (IMAGES_QUICK, CheckContext, SkipCheck, check_result,
                                              compare_label_maps, median_ms, one_line)

MIN_PIXEL_AGREEMENT = 0.999  # CUDA vs CPU kernels: float rounding may flip a border pixel
GPU_MISSING = "onnxruntime-gpu is not installed (CUDAExecutionProvider missing): pip install '.[gpu]'"


def require_ort_cuda() -> Any:
    """onnxruntime with the CUDA execution provider in its build (onnxruntime-gpu), or SkipCheck."""
    try:
        import onnxruntime as ort
    except Exception as e:
        raise SkipCheck(f"{GPU_MISSING} (import onnxruntime failed: {one_line(e)})") from None
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SkipCheck(f"{GPU_MISSING}; this build has {', '.join(available)}")
    return ort


def segment_keys(segments_info: Sequence[dict]) -> list[tuple[int, int]]:
    """The (id, category_id) pairs of a result's segments, sorted."""
    return sorted((int(s["id"]), int(s["category_id"])) for s in segments_info)


def compare_providers(model, images: Sequence[np.ndarray], *, providers: Sequence[str] = ("cuda", "cpu"),
                      reference: Sequence[str] = ("cpu",), threads: int | None = None,
                      budget: Any = None) -> dict:
    """The same images through ``Predictor(model, providers=providers)`` and through
    ``Predictor(model, providers=reference)`` -> {"providers" / "reference_providers" (what runs,
    ``Predictor.providers``), "ms_per_image" / "reference_ms_per_image" (medians after one warm-up
    call each), "agreement" (fraction of identical panoptic ids over all pixels),
    "segments_match" (same (id, category_id) segments on every image), "per_image", "warnings"
    (the ProviderWarnings of opening them: a provider missing or not started)}. The
    image loop stops early when ``budget`` (gpu_check_common.Budget) runs low."""
    from pfpn.runtime.backends import ProviderWarning
    from pfpn.runtime.predictor import Predictor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test = Predictor(model, providers=tuple(providers), threads=threads)
        ref = Predictor(model, providers=tuple(reference), threads=threads)
    said = [one_line(w.message) for w in caught if issubclass(w.category, ProviderWarning)]
    if images:  # warm-up: CUDA initialisation, cuDNN algorithm search, memory arena
        test.predict(images[0])
        ref.predict(images[0])
    rows, times, ref_times = [], [], []
    differing = pixels = 0
    for i, image in enumerate(images):
        if budget is not None and budget.low(5.0):
            break
        t0 = time.perf_counter()
        a = test.predict(image)
        t1 = time.perf_counter()
        b = ref.predict(image)
        t2 = time.perf_counter()
        times.append(t1 - t0)
        ref_times.append(t2 - t1)
        c = compare_label_maps(a.id_map, b.id_map)
        same_segments = segment_keys(a.segments_info) == segment_keys(b.segments_info)
        rows.append({"image": i, "size": list(image.shape[:2]), **c, "segments_match": same_segments,
                     "segments": len(a.segments_info), "reference_segments": len(b.segments_info)})
        differing += c["differing"]
        pixels += c["pixels"]
    return {"providers": list(test.providers), "reference_providers": list(ref.providers),
            "backend": test.backend.name, "reference_backend": ref.backend.name,
            "images": len(rows), "ms_per_image": median_ms(times), "reference_ms_per_image": median_ms(ref_times),
            "agreement": 1.0 - differing / pixels if pixels else 0.0, "pixels_differing": differing,
            "segments_match": bool(rows) and all(r["segments_match"] for r in rows), "per_image": rows,
            "warnings": said}


def judge_providers(result: dict, *, required: str = "cuda") -> tuple[str, str]:
    """(status, reason) of a :func:`compare_providers` result: ``required`` must run and the maps
    agree on at least MIN_PIXEL_AGREEMENT of the pixels."""
    if required not in result["providers"]:
        return "fail", (f"{required} did not start: the session runs on {', '.join(result['providers'])} (CUDA 12 / "
                        f"cuDNN 9 libraries missing?)")
    if not result["images"]:
        return "fail", "no image was compared (time budget)"
    if result["agreement"] < MIN_PIXEL_AGREEMENT:
        return "fail", f"panoptic ids agree on {result['agreement']:.4%} < {MIN_PIXEL_AGREEMENT:.1%}"
    return "pass", ""


def format_providers_summary(result: dict) -> str:
    return (f"{result['backend']} providers={','.join(result['providers'])}: {result['ms_per_image']} ms/image vs "
            f"{result['reference_backend']} {result['reference_ms_per_image']} ms/image; {result['agreement']:.4%} "
            f"identical panoptic ids over {result['images']} images, segments "
            f"{'match' if result['segments_match'] else 'differ'}")


def check_ort_cuda_providers(ctx: CheckContext) -> dict:
    ort = require_ort_cuda()
    from pfpn.benchmarks.gpu_check_models import small_images
    from pfpn.benchmarks.gpu_check_trt import small_exports
    from pfpn.runtime.ort_package import check_onnxruntime_package

    packages = check_onnxruntime_package()  # both onnxruntime and onnxruntime-gpu: a fail naming the fix
    paths = small_exports(ctx)
    images = small_images(IMAGES_QUICK if ctx.quick else 6, seed=9)
    result = compare_providers(paths["ort"], images, budget=ctx.budget)
    status, reason = judge_providers(result)
    return check_result(status, format_providers_summary(result), reason=reason, onnxruntime_version=ort.__version__,
                        onnxruntime_packages=packages, available_providers=ort.get_available_providers(), **result)
