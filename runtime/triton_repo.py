"""Write a Triton Inference Server model repository that serves panoptic requests.

    python runtime/triton_repo.py --model model_ort.onnx --out model_repository
    python runtime/triton_repo.py --model model_int8.onnx --out repo --instances 2 --threads 1
    python runtime/triton_repo.py --model model_trt_fp16.engine --network-backend tensorrt --out repo
    python runtime/triton_repo.py --model model_trt.onnx --network-backend tensorrt --out repo   # engine built later

Two models (both read the exported file's own metadata, which the panoptic model's config
carries as the parameter ``pfpn_metadata``: categories, sizes, thresholds):

* ``pfpn_panoptic`` (Python backend, runtime/triton_models/panoptic.py): the request's image
  (encoded bytes as ``IMAGE`` or a uint8 BGR array as ``IMAGE_BGR``) -> ``ID_MAP`` (int32 COCO
  ids), ``SEGMENTS_INFO`` (JSON) and ``PANOPTIC_PNG``. Dynamic batching with ragged inputs:
  requests that arrive together are resized, grouped by padded canvas, and each group is one
  network call (batching after resize; a group is what ``Predictor.predict_batch`` computes).
* ``pfpn_network``: the exported network, by ``--network-backend``: ``python`` (this project's
  ONNX Runtime backend inside the Python backend: what runs with the bundled tritonserver on a
  CPU), ``onnxruntime`` (Triton's native ONNX Runtime backend, NVIDIA's containers) or
  ``tensorrt`` (a ``.engine`` as ``model.plan``: the engine carries its plugins). Engines are tied
  to a GPU model and TensorRT version, so a ``trt``-flavor ``.onnx`` is accepted too: it must pass
  TensorRT's ONNX rules (runtime/trt/conformance.py, 0 errors), is stored as ``model.onnx`` next to
  where ``model.plan`` goes, and the printed ``runtime/build_engine.py`` command builds the plan on
  the serving machine.

The folder is written to a temporary sibling and renamed into place: nothing half-written.
Torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


from pfpn.runtime.backends import read_model_metadata  # noqa: E402
from pfpn.runtime.contract import MASK_SIZE  # noqa: E402

PANOPTIC_MODEL = "pfpn_panoptic"
NETWORK_MODEL = "pfpn_network"
NETWORK_BACKENDS = ("python", "onnxruntime", "tensorrt")
MODELS_DIR = Path(__file__).resolve().parent / "triton_models"


def _parameters(values: dict[str, str]) -> str:
    items = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in values.items())
    return f"parameters [\n{items}\n]\n"


def panoptic_config(*, metadata_props: dict[str, str], instances: int, max_batch_size: int,
                    queue_delay_us: int) -> str:
    """config.pbtxt of the pfpn_panoptic model."""
    return (f'name: "{PANOPTIC_MODEL}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
            "input [\n"
            '  { name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1 ] optional: true allow_ragged_batch: true },\n'
            '  { name: "IMAGE_BGR" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] optional: true allow_ragged_batch: true }\n'
            "]\n"
            "output [\n"
            '  { name: "ID_MAP" data_type: TYPE_INT32 dims: [ -1, -1 ] },\n'
            '  { name: "SEGMENTS_INFO" data_type: TYPE_STRING dims: [ 1 ] },\n'
            '  { name: "PANOPTIC_PNG" data_type: TYPE_UINT8 dims: [ -1 ] }\n'
            "]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
            f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
            + _parameters({"network_model": NETWORK_MODEL, "pfpn_metadata": json.dumps(metadata_props)}))


def network_config(*, network_backend: str, model_file: str, instances: int, threads: int,
                   runtime_backend: str | None) -> str:
    """config.pbtxt of the pfpn_network model (whole batches from pfpn_panoptic: max_batch_size 0,
    the batch is the first of the dims)."""
    head = {"python": 'backend: "python"', "onnxruntime": 'backend: "onnxruntime"',
            "tensorrt": 'platform: "tensorrt_plan"'}[network_backend]
    kind = "KIND_GPU" if network_backend == "tensorrt" else "KIND_CPU"
    text = (f'name: "{NETWORK_MODEL}"\n{head}\nmax_batch_size: 0\n'
            "input [\n"
            '  { name: "images" data_type: TYPE_UINT8 dims: [ -1, -1, -1, 3 ] },\n'
            '  { name: "image_sizes" data_type: TYPE_INT64 dims: [ -1, 2 ] }\n'
            "]\n"
            "output [\n"
            '  { name: "boxes" data_type: TYPE_FP32 dims: [ -1, -1, 4 ] },\n'
            '  { name: "scores" data_type: TYPE_FP32 dims: [ -1, -1 ] },\n'
            '  { name: "labels" data_type: TYPE_INT64 dims: [ -1, -1 ] },\n'
            f'  {{ name: "mask_probs" data_type: TYPE_FP32 dims: [ -1, -1, {MASK_SIZE}, {MASK_SIZE} ] }},\n'
            '  { name: "num_detections" data_type: TYPE_INT64 dims: [ -1 ] },\n'
            '  { name: "semantic_logits" data_type: TYPE_FP32 dims: [ -1, -1, -1, -1 ] }\n'
            "]\n"
            f"instance_group [ {{ count: {instances} kind: {kind} }} ]\n")
    if network_backend == "python":
        text += _parameters({"model_file": model_file, "threads": str(threads), "runtime_backend": runtime_backend or ""})
    elif network_backend == "onnxruntime":
        text += _parameters({"intra_op_thread_count": str(threads)})
    return text


def check_trt_onnx(model: Path, flavor: str) -> None:
    """A trt-flavor .onnx that TensorRT's ONNX parser accepts (runtime/trt/conformance.py), or
    ValueError listing what it would refuse."""
    import onnx

    from pfpn.runtime.trt.conformance import check_onnx

    if flavor != "trt":
        raise ValueError(f"{model}: the tensorrt network backend needs a trt-flavor export (custom RoIAlign / NMS "
                         f"plugins) or its engine; this file is the {flavor!r} flavor")
    report = check_onnx(onnx.load(str(model), load_external_data=False))
    if report.errors:
        raise ValueError(f"{model}: {len(report.errors)} TensorRT conformance errors:\n{report.format(notes=False)}")


def write_model_repository(*, model: str | os.PathLike, out: str | os.PathLike, network_backend: str = "python",
                           instances: int = 1, threads: int = 1, max_batch_size: int = 8, queue_delay_us: int = 5000,
                           runtime_backend: str | None = None, overwrite: bool = False) -> Path:
    """The repository for ``model`` (.onnx, or .engine for ``network_backend="tensorrt"``) at
    ``out`` -> out. ``instances``: model instances of each of the two models; ``threads``: CPU
    threads of each network instance; ``runtime_backend``: "openvino" to run the network with
    OpenVINO inside the Python backend."""
    model, out = Path(model), Path(out)
    if network_backend not in NETWORK_BACKENDS:
        raise ValueError(f"network backend must be one of {NETWORK_BACKENDS}, got {network_backend!r}")
    if instances < 1 or threads < 1 or max_batch_size < 1 or queue_delay_us < 0:
        raise ValueError("instances, threads and max_batch_size must be >= 1 and the queue delay >= 0")
    is_engine = model.suffix.lower() in (".engine", ".plan")
    if is_engine and network_backend != "tensorrt":
        raise ValueError(f"{model}: a TensorRT engine is served by --network-backend tensorrt")
    metadata = read_model_metadata(model)
    if network_backend == "tensorrt" and not is_engine:
        check_trt_onnx(model, metadata.flavor)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_file = "model.plan" if is_engine else "model.onnx"
        for name in (PANOPTIC_MODEL, NETWORK_MODEL):
            (tmp / name / "1").mkdir(parents=True)
        shutil.copy2(MODELS_DIR / "panoptic.py", tmp / PANOPTIC_MODEL / "1" / "model.py")
        (tmp / PANOPTIC_MODEL / "config.pbtxt").write_text(panoptic_config(
            metadata_props=metadata.to_props(), instances=instances, max_batch_size=max_batch_size,
            queue_delay_us=queue_delay_us))
        shutil.copy2(model, tmp / NETWORK_MODEL / "1" / model_file)
        if network_backend == "python":
            shutil.copy2(MODELS_DIR / "network.py", tmp / NETWORK_MODEL / "1" / "model.py")
        (tmp / NETWORK_MODEL / "config.pbtxt").write_text(network_config(
            network_backend=network_backend, model_file=model_file, instances=instances, threads=threads,
            runtime_backend=runtime_backend))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported .onnx (ort flavor or int8), or a TensorRT .engine")
    p.add_argument("--out", required=True, help="model repository folder to write")
    p.add_argument("--network-backend", choices=NETWORK_BACKENDS, default="python")
    p.add_argument("--runtime-backend", choices=["onnxruntime", "openvino"], default=None,
                   help="with --network-backend python: which of this project's backends runs the network")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count) of each model")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per network instance")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=5000, help="dynamic batching: longest wait for more requests")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        out = write_model_repository(model=args.model, out=args.out, network_backend=args.network_backend,
                                     instances=args.instances, threads=args.threads, max_batch_size=args.max_batch_size,
                                     queue_delay_us=args.queue_delay_us, runtime_backend=args.runtime_backend,
                                     overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({PANOPTIC_MODEL} + {NETWORK_MODEL}, network backend {args.network_backend})")
    if args.network_backend == "tensorrt" and Path(args.model).suffix.lower() == ".onnx":
        net = out / NETWORK_MODEL / "1"
        print(f"then, on the serving GPU: python runtime/build_engine.py --onnx {net / 'model.onnx'} --fp16 "
              f"--out {net / 'model.plan'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
