"""End to end: the torch-free Predictor (ONNX Runtime + numpy post-processing) against the
PyTorch predictor on the same checkpoint; batches, threads, bad model files."""
from __future__ import annotations

import concurrent.futures
import json

import cv2
import numpy as np
import pytest

from pfpn.runtime import Predictor
from pfpn.runtime.backends import ModelError
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.predictor import PanopticPredictor


@pytest.fixture(scope="module")
def images(synthetic_root):
    ds = CocoPanopticDataset(synthetic_root, "val")
    base = [ds[i]["image"] for i in range(4)]
    # several sizes: the original 96x128, upscaled, portrait, not multiples of 32
    return base + [cv2.resize(base[0], (301, 200)), cv2.resize(base[1], (150, 230))]


def test_matches_pytorch_predictor(tiny_checkpoint, tiny_onnx, images):
    torch_pred = PanopticPredictor.from_checkpoint(tiny_checkpoint)
    pred = Predictor(tiny_onnx, threads=1)
    assert pred.categories.to_json() == torch_pred.categories.to_json()
    total, same, instances = 0, 0, 0
    for image in images:
        ours = pred.predict(image)
        ref = torch_pred.predict(image)
        same += int((ours.id_map == ref.id_map).sum())
        total += ours.id_map.size
        instances += sum(s["isthing"] for s in ref.segments_info)
        # the segments agree wherever the maps agree (ids, categories)
        ref_segs = {s["id"]: s["category_id"] for s in ref.segments_info}
        for s in ours.segments_info:
            if s["id"] in ref_segs:
                assert ref_segs[s["id"]] == s["category_id"]
    assert instances > 5  # things were exercised
    assert same / total >= 0.999, same / total


def test_batch_and_paths(tiny_onnx, images, tmp_path):
    pred = Predictor(tiny_onnx, threads=1, batch_size=3)
    paths = []
    for i, image in enumerate(images[:3]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    from_paths = pred.predict_batch(paths)
    singles = [Predictor(tiny_onnx, threads=1).predict(im) for im in images[:3]]
    for a, b in zip(from_paths, singles):
        assert np.array_equal(a.id_map, b.id_map)


def test_thread_safe(tiny_onnx, images):
    pred = Predictor(tiny_onnx, threads=1)
    expected = [pred.predict(im).id_map for im in images]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: pred.predict(im).id_map, images * 2))
    for a, b in zip(got, expected * 2):
        assert np.array_equal(a, b)


def test_bad_model_files(tmp_path, tiny_onnx):
    with pytest.raises(FileNotFoundError):
        Predictor(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_onnx.read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a readable ONNX model|cannot load"):
        Predictor(corrupt)
    import onnx

    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ModelError, match="metadata lacks"):
        Predictor(foreign)
    model = onnx.load(str(tiny_onnx))
    for p in model.metadata_props:
        if p.key == "contract_version":
            p.value = "0"
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(ModelError, match="contract version"):
        Predictor(old)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelError, match="cannot run in ONNX Runtime"):
        Predictor(engine, backend="onnxruntime")
    with pytest.raises(ModelError, match="not available"):
        Predictor(tiny_onnx, providers=["tensorrt"])


def test_bad_images(tiny_onnx):
    pred = Predictor(tiny_onnx, threads=1)
    with pytest.raises(ValueError, match="grey image"):
        pred.predict(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        pred.predict(np.zeros((20, 20, 3), np.float64))


def test_directory_is_not_an_image(tiny_checkpoint, tiny_onnx, tmp_path):
    from pfpn.runtime.images import ImageError

    for predictor in (Predictor(tiny_onnx, threads=1), PanopticPredictor.from_checkpoint(tiny_checkpoint)):
        with pytest.raises(ImageError, match="is a directory, not an image file"):
            predictor.predict(tmp_path)


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (2, 3000)])
def test_extreme_aspect_ratios_run(tiny_checkpoint, tiny_onnx, shape):
    """REFERENCE §2's resize would give a zero-pixel side (mmdetection fails in cv2.resize there); both
    predictors keep at least one pixel per side and return a map of the original size, the same."""
    from pfpn.runtime.preprocess import rescale_size

    h, w = shape
    new_w, new_h, _ = rescale_size(w, h, 256, 192)
    # hand-computed: scale = min(256 / 5000, 192 / 1) = 0.0512 -> 256 x 1 (int(0.0512 + 0.5) = 0 -> 1)
    assert min(new_w, new_h) >= 1 and max(new_w, new_h) == 256
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    result, ours, _ = Predictor(tiny_onnx, threads=1).predict_detailed([image])[0]
    torch_map = PanopticPredictor.from_checkpoint(tiny_checkpoint).predict_maps([image])[0].label_map
    assert ours.label_map.shape == torch_map.shape == shape
    assert np.array_equal(ours.label_map, torch_map)
    assert result.id_map.shape == shape


def test_metadata_exposed(tiny_onnx):
    pred = Predictor(tiny_onnx)
    assert pred.metadata.flavor == "ort" and pred.metadata.max_long_side == 256
    assert json.dumps(pred.categories.to_json())


def test_postprocess_choice_reaches_the_engine_backend(tiny_onnx, tmp_path, monkeypatch):
    """Predictor(engine, postprocess=...) opens the TensorRT backend with that choice (the backend
    itself needs a GPU; here a recorder stands in for it)."""
    from pfpn.runtime.trt import backend as trt_backend

    seen = []

    class Recorder:
        def __init__(self, path, **kwargs):
            seen.append(kwargs)
            self.metadata = Predictor(tiny_onnx, threads=1).metadata
            self.name = "tensorrt"

    monkeypatch.setattr(trt_backend, "TensorRTBackend", Recorder)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    for choice in ("auto", "gpu", "cpu"):
        Predictor(engine, postprocess=choice)
    assert seen == [{"postprocess": "auto"}, {"postprocess": "gpu"}, {"postprocess": "cpu"}]
    with pytest.raises(ValueError, match="postprocess must be one of"):
        Predictor(engine, postprocess="fast")
