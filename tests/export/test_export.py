"""export/to_onnx.py round trips on the small config: both flavors run and match PyTorch,
dynamic sizes and batch, empty results, metadata, OpenVINO, and clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pfpn.export import to_onnx
from pfpn.export.metadata import read_metadata
from pfpn.export.verify import compare
from pfpn.runtime.backends import OnnxRuntimeBackend
from pfpn.runtime.contract import CONTRACT_VERSION, OUTPUT_NAMES
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.preprocess import prepare_batch
from pfpn.training.checkpoint import save_checkpoint
from pfpn.training.config import tiny_synthetic
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.model.panoptic_fpn import build_model
from pfpn.training.predictor import PanopticPredictor
from pfpn.training.random_checkpoint import make_firing

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(path: Path, categories: CategoryTable, firing: bool) -> Path:
    config = tiny_synthetic(categories.num_things, categories.num_stuff)
    torch.manual_seed(0)
    model = build_model(config.model)
    if firing:
        make_firing(model)
    save_checkpoint(path, model=model, config=config, categories=categories)
    return path


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_onnx, tiny_trt_onnx):
    """The firing small model (conftest) and both flavors of its export."""
    return tiny_checkpoint, {"ort": tiny_onnx, "trt": tiny_trt_onnx}


def _images(synthetic_root):
    ds = CocoPanopticDataset(synthetic_root, "val")
    import cv2

    base = [ds[i]["image"] for i in range(3)]
    # exported at 192x256; run at portrait, landscape and sizes that are not multiples of 32
    return [cv2.resize(base[0], (150, 230)), cv2.resize(base[1], (301, 200)), base[2]]


def _backend(path: Path):
    """The runtime's ONNX Runtime backend (it registers the reference custom ops for the trt flavor)."""
    return OnnxRuntimeBackend(path, threads=1)


@pytest.mark.parametrize("flavor", ["ort", "trt"])
def test_round_trip_matches_pytorch(exported, synthetic_root, flavor):
    ckpt, paths = exported
    predictor = PanopticPredictor.from_checkpoint(ckpt)
    rows = compare(predictor, _backend(paths[flavor]), _images(synthetic_root))
    assert all(r.num_torch > 0 for r in rows)  # the detector fires: instances are compared
    for r in rows:
        assert r.ok, r


def test_metadata_describes_the_file(exported):
    _, paths = exported
    for flavor, path in paths.items():
        meta = read_metadata(onnx.load(str(path), load_external_data=False))
        assert meta.contract_version == CONTRACT_VERSION and meta.flavor == flavor
        assert meta.mean == (123.675, 116.28, 103.53) and meta.score_threshold == 0.6
        assert [c["name"] for c in meta.categories][:1] == ["circle"] and meta.num_thing_classes == 4
        assert meta.max_long_side == 256 and meta.size_divisor == 32
    model = onnx.load(str(paths["trt"]))
    custom = [n for n in model.graph.node if n.domain == "ai.onnx.contrib"]
    assert sorted({n.op_type for n in custom}) == ["BatchedNMS", "MultiLevelRoIAlign"]
    for n in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_namespace"] == b"pfpn" and attrs["plugin_version"] == b"1"
    assert not [n for n in onnx.load(str(paths["ort"])).graph.node if n.domain not in ("", "ai.onnx")]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)


def test_batch_of_four_equals_batch_of_one(exported, synthetic_root):
    _, paths = exported
    ds = CocoPanopticDataset(synthetic_root, "val")
    images = [ds[i]["image"] for i in range(4)]
    backend = _backend(paths["ort"])
    batch, sizes, _ = prepare_batch(images, 256, 192, 32)
    together = backend.run(batch, sizes)
    for i in range(4):
        single = backend.run(batch[i:i + 1], sizes[i:i + 1])
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(together[name][i:i + 1], single[name], rtol=1e-5, atol=1e-5)


def test_no_detections(tmp_path, synthetic_root):
    cats = CocoPanopticDataset(synthetic_root, "val").categories
    ckpt = _checkpoint(tmp_path / "quiet.pt", cats, firing=False)
    out = tmp_path / "quiet.onnx"
    assert to_onnx.main(["--ckpt", str(ckpt), "--out", str(out), "--threads", "1"]) == 0
    predictor = PanopticPredictor.from_checkpoint(ckpt)
    rows = compare(predictor, _backend(out), [np.zeros((100, 120, 3), np.uint8)])
    assert rows[0].num_torch == rows[0].num_onnx == 0 and rows[0].ok


def test_openvino_runs_the_ort_flavor(exported, synthetic_root):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from pfpn.runtime.backends import OpenVinoBackend

    ckpt, paths = exported
    rows = compare(PanopticPredictor.from_checkpoint(ckpt), OpenVinoBackend(paths["ort"], threads=1),
                   _images(synthetic_root))
    for r in rows:
        assert r.ok, r


def test_verify_flag_and_opset_18(exported, tmp_path):
    ckpt, _ = exported
    proc = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), "--ckpt", str(ckpt), "--opset", "18",
                           "--out", str(tmp_path / "m18.onnx"), "--verify", "--verify-count", "3",
                           "--verify-json", str(tmp_path / "parity.json"), "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/3 images within thresholds" in proc.stdout
    assert len(json.loads((tmp_path / "parity.json").read_text())) == 3


def _run_script(*args):
    return subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), *args], capture_output=True,
                          text=True, timeout=600)


def test_bad_inputs_fail_clearly_and_leave_nothing(exported, tmp_path):
    ckpt, _ = exported
    cases = [
        (["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a.onnx")], "not found"),
        (["--ckpt", str(ckpt), "--opset", "16", "--out", str(tmp_path / "b.onnx")], "opset"),
        (["--ckpt", str(ckpt), "--out", str(tmp_path / "c.txt")], "must end with .onnx"),
        (["--ckpt", str(ckpt), "--export-size", "big", "--out", str(tmp_path / "d.onnx")], "--export-size"),
        (["--ckpt", str(ckpt), "--score-threshold", "1.5", "--out", str(tmp_path / "f.onnx")], "score_threshold"),
        (["--ckpt", str(ckpt), "--max-detections", "0", "--out", str(tmp_path / "g.onnx")], "max_detections"),
        (["--ckpt", str(ckpt), "--stuff-area-limit", "-1", "--out", str(tmp_path / "h.onnx")], "stuff_area_limit"),
    ]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    cases.append((["--ckpt", str(junk), "--out", str(tmp_path / "e.onnx")], "not a readable PyTorch checkpoint"))
    for args, message in cases:
        proc = _run_script(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]  # nothing half-written


def test_help_explains_every_option():
    proc = _run_script("--help")
    assert proc.returncode == 0
    for option in ("--ckpt", "--out", "--flavor", "--opset", "--export-size", "--simplify", "--verify",
                   "--verify-images", "--verify-backend", "--score-threshold", "--max-detections",
                   "--mask-threshold", "--mask-overlap-threshold", "--stuff-area-limit"):
        assert option in proc.stdout


def test_deployment_settings_at_export(exported, synthetic_root, tmp_path):
    """--score-threshold & co. are recorded in the metadata, reported by the runtime and followed
    by the network and the fusion: the same detections and maps as the PyTorch model run with
    those settings, and detections below the published 0.6 that the default export drops."""
    from dataclasses import replace

    from pfpn.runtime.predictor import Predictor
    from pfpn.training.checkpoint import load_model

    ckpt, paths = exported
    out = tmp_path / "tuned.onnx"
    proc = _run_script("--ckpt", str(ckpt), "--out", str(out), "--threads", "1", "--score-threshold", "0.3",
                       "--max-detections", "120", "--mask-threshold", "0.4", "--mask-overlap-threshold", "0.8",
                       "--stuff-area-limit", "50")
    assert proc.returncode == 0, proc.stderr
    assert "score_threshold 0.3, max_detections 120" in proc.stdout
    wanted = {"score_threshold": 0.3, "max_detections": 120, "mask_threshold": 0.4, "mask_overlap_threshold": 0.8,
              "stuff_area_limit": 50}
    assert read_metadata(onnx.load(out)).deployment_settings() == wanted
    tuned, default = Predictor(out, threads=1), Predictor(paths["ort"], threads=1)
    assert tuned.settings == wanted
    assert default.settings == {"score_threshold": 0.6, "max_detections": 100, "mask_threshold": 0.5,
                                "mask_overlap_threshold": 0.5, "stuff_area_limit": 192}

    # the PyTorch model with the same settings, configured independently of the exporter
    model, loaded = load_model(ckpt)
    cfg = loaded.config.model
    cfg = replace(cfg, box_head=replace(cfg.box_head, score_threshold=0.3, max_detections=120),
                  mask_head=replace(cfg.mask_head, mask_threshold=0.4),
                  fusion=replace(cfg.fusion, mask_overlap_threshold=0.8, stuff_area_limit=50))
    reference = build_model(cfg)
    reference.load_state_dict(model.state_dict())
    torch_predictor = PanopticPredictor(reference, cfg, loaded.categories)
    images = _images(synthetic_root)
    rows = compare(torch_predictor, _backend(out), images)
    assert all(r.ok for r in rows), rows
    below_default, counts = 0, []
    for image in images:
        t, d = tuned.predict_maps([image])[0], default.predict_maps([image])[0]
        assert len(t.scores) <= 120 and len(d.scores) <= 100 and (t.scores > 0.3).all() and (d.scores > 0.6).all()
        below_default += int((t.scores <= 0.6).sum())
        counts.append((len(t.scores), len(d.scores)))
    assert below_default > 0, counts  # the lower threshold lets through detections the default drops
    assert max(t for t, _ in counts) > 100, counts  # more than the default maximum
