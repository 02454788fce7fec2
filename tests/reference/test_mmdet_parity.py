"""Our PyTorch predictor against the reference implementation (mmdetection 3.3 + mmcv 2.1 CPU ops).

Same checkpoint, same image -> the same panoptic id map, pixel for pixel (SPEC: thing pixels
label + k * 1000, stuff labels, VOID). Needs a Python with mmdet installed: set MMDET_PYTHON
(default /opt/mmref/bin/python, see /opt/mmref/REFERENCE.md for how that environment was built)
and MMDET_RUN_REFERENCE (default /opt/mmref/run_reference.py). Skipped, saying so, otherwise.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.coco_categories import coco_panoptic_categories
from runtime.panoptic_io import CategoryTable
from training.checkpoint import save_mmdet_checkpoint
from training.config import ModelConfig, r50_fpn_1x, tiny_synthetic
from training.data.coco_panoptic import CocoPanopticDataset
from training.model.panoptic_fpn import build_model
from training.predictor import PanopticPredictor

MMDET_PYTHON = os.environ.get("MMDET_PYTHON", "/opt/mmref/bin/python")
RUN_REFERENCE = os.environ.get("MMDET_RUN_REFERENCE", "/opt/mmref/run_reference.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(MMDET_PYTHON).is_file() and Path(RUN_REFERENCE).is_file()),
                       reason=f"reference mmdetection not available (MMDET_PYTHON={MMDET_PYTHON}, "
                              f"MMDET_RUN_REFERENCE={RUN_REFERENCE})"),
]


def mmdet_config_text(config: ModelConfig, base_config: str) -> str:
    """An mmdetection config describing ``config`` (only what differs from the published one)."""
    b, c = config.backbone, config.fpn.out_channels
    widths = [b.base_channels * 2**i * (4 if b.depth >= 50 else 1) for i in range(4)]
    inp = config.input
    return f"""
_base_ = {base_config!r}
model = dict(
    backbone=dict(depth={b.depth}, base_channels={b.base_channels}, stem_channels={b.stem_channels}),
    neck=dict(in_channels={widths}, out_channels={c}),
    rpn_head=dict(in_channels={c}, feat_channels={config.rpn.feat_channels}),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels={c}),
        bbox_head=dict(in_channels={c}, fc_out_channels={config.box_head.fc_channels},
                       num_classes={config.num_thing_classes}),
        mask_roi_extractor=dict(out_channels={c}),
        mask_head=dict(num_convs={config.mask_head.num_convs}, in_channels={c},
                       conv_out_channels={config.mask_head.conv_channels}, num_classes={config.num_thing_classes})),
    semantic_head=dict(in_channels={c}, inner_channels={config.semantic_head.inner_channels},
                       num_things_classes={config.num_thing_classes}, num_stuff_classes={config.num_stuff_classes},
                       norm_cfg=dict(type='GN', num_groups={config.semantic_head.num_groups}, requires_grad=True)),
    panoptic_fusion_head=dict(num_things_classes={config.num_thing_classes},
                              num_stuff_classes={config.num_stuff_classes}),
    test_cfg=dict(
        rpn=dict(nms_pre={config.rpn.pre_nms_top_n_test}, max_per_img={config.rpn.post_nms_top_n_test}),
        panoptic=dict(stuff_area_limit={config.fusion.stuff_area_limit})))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({inp.max_long_side}, {inp.max_short_side}), keep_ratio=True),
    dict(type='LoadPanopticAnnotations'),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def _reference_map(ckpt: Path, image: Path, out: Path, config_file: Path | None) -> np.ndarray:
    cmd = [MMDET_PYTHON, RUN_REFERENCE, "--ckpt", str(ckpt), "--image", str(image), "--out", str(out), "--threads", "1"]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def _base_config_path() -> str:
    code = "import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', " \
           "'panoptic_fpn', 'panoptic-fpn_r50_fpn_1x_coco.py'))"
    return subprocess.run([MMDET_PYTHON, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def _compare(model, config: ModelConfig, categories: CategoryTable, images: list[Path], tmp: Path,
             config_file: Path | None) -> list[int]:
    torch.set_num_threads(1)
    ckpt = tmp / "model.pth"
    save_mmdet_checkpoint(ckpt, model, categories)
    predictor = PanopticPredictor(model, config, categories)
    num_instances = []
    for i, image in enumerate(images):
        ours = predictor.predict_label_maps([image])[0].label_map.numpy()
        ref = _reference_map(ckpt, image, tmp / f"ref{i}.npy", config_file)
        assert ours.shape == ref.shape
        diff = ours != ref
        assert not diff.any(), (f"{image.name}: {int(diff.sum())} of {diff.size} pixels differ; "
                                f"ours {np.unique(ours[diff])[:10]}, reference {np.unique(ref[diff])[:10]}")
        num_instances.append(int(len(np.unique(ours[ours >= 1000]))))
    return num_instances


def _firing(model: torch.nn.Module) -> torch.nn.Module:
    """Bias a randomly initialised model so that it detects (scores > 0.6) and masks fire."""
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.bias[0] = 8.0
        model.roi_head.bbox_head.fc_cls.bias[1] = 7.5
        model.roi_head.mask_head.conv_logits.bias[:] = 0.5
    return model


def _images(tmp: Path, synthetic_root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    paths.append(tmp / "noise_480x640.png")
    cv2.imwrite(str(paths[-1]), noise)
    # flat regions give exactly equal scores: the tie order decides which boxes survive NMS
    flat = np.full((333, 517, 3), 127, np.uint8)
    flat[100:200, 150:300] = (30, 200, 90)
    paths.append(tmp / "flat_333x517.png")
    cv2.imwrite(str(paths[-1]), flat)
    ds = CocoPanopticDataset(synthetic_root, "val")
    synthetic = cv2.resize(ds[0]["image"], (401, 301), interpolation=cv2.INTER_LINEAR)
    paths.append(tmp / "synthetic_301x401.png")
    cv2.imwrite(str(paths[-1]), synthetic)
    return paths


def test_published_r50_layout_matches_reference(tmp_path, synthetic_root):
    torch.manual_seed(0)
    config = r50_fpn_1x().model
    model = _firing(build_model(config).eval())
    counts = _compare(model, config, CategoryTable(coco_panoptic_categories()),
                      _images(tmp_path, synthetic_root), tmp_path, None)
    assert max(counts) > 10  # the instance part of the fusion was exercised


def test_small_config_matches_reference(tmp_path, synthetic_root):
    cats = CocoPanopticDataset(synthetic_root, "val").categories
    config = tiny_synthetic(cats.num_things, cats.num_stuff).model
    torch.manual_seed(1)
    model = _firing(build_model(config).eval())
    cfg_file = tmp_path / "tiny_mmdet_config.py"
    cfg_file.write_text(mmdet_config_text(config, _base_config_path()))
    ds = CocoPanopticDataset(synthetic_root, "val")
    images = [ds.image_info(i)["image_path"] for i in range(3)]
    counts = _compare(model, config, cats, images, tmp_path, cfg_file)
    assert max(counts) > 3


def test_trained_checkpoint_matches_reference(tmp_path, synthetic_root):
    """A trained checkpoint (PFPN_PARITY_CKPT, ours) on PFPN_PARITY_IMAGES (a folder, first 20)."""
    ckpt_path = os.environ.get("PFPN_PARITY_CKPT")
    folder = os.environ.get("PFPN_PARITY_IMAGES")
    if not ckpt_path or not folder:
        pytest.skip("set PFPN_PARITY_CKPT and PFPN_PARITY_IMAGES to compare a trained checkpoint")
    predictor = PanopticPredictor.from_checkpoint(ckpt_path)
    cfg_file = tmp_path / "mmdet_config.py"
    cfg_file.write_text(mmdet_config_text(predictor.config, _base_config_path()))
    images = sorted(Path(folder).glob("*.jpg"))[:20]
    counts = _compare(predictor.model, predictor.config, predictor.categories, images, tmp_path, cfg_file)
    print(f"{len(images)} images identical; instances per image: {counts}")
