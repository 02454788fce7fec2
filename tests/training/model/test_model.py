"""The composed model: parameter layout, frozen stages, inference outputs, and that it learns."""
import dataclasses

import numpy as np
import pytest
import torch

from pfpn.training.config import BackboneConfig, tiny_synthetic
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.data.collate import collate_train
from pfpn.training.data.transforms import TrainTransform
from pfpn.training.model.backbone import ResNet
from pfpn.training.model.panoptic_fpn import build_model


@pytest.mark.parametrize("depth,channels", [(18, [64, 128, 256, 512]), (34, [64, 128, 256, 512]),
                                            (50, [256, 512, 1024, 2048]), (101, [256, 512, 1024, 2048])])
def test_resnet_depths(depth, channels):
    net = ResNet(depth=depth).eval()
    assert net.out_channels == channels
    feats = net(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // s, 64 // s) for c, s in zip(channels, [4, 8, 16, 32])]


def test_frozen_stages_and_norm_eval():
    net = ResNet(depth=18, frozen_stages=1, norm_eval=True).train()
    assert not net.conv1.weight.requires_grad and not net.bn1.weight.requires_grad
    assert all(not p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = net.layer3[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, net.layer3[0].bn1.running_mean)  # statistics frozen


def test_unsupported_depth():
    with pytest.raises(ValueError, match="depth 42"):
        ResNet(depth=42)


def test_inference_outputs(synthetic_root):
    config = tiny_synthetic(4, 3).model
    config = dataclasses.replace(config, box_head=dataclasses.replace(config.box_head, score_threshold=0.0))
    torch.manual_seed(0)
    model = build_model(config).eval()
    out = model(torch.randn(2, 3, 96, 128), [(96, 128), (90, 100)])
    assert out.semantic_logits.shape == (2, 3 + 1, 24, 32)
    for det, (h, w) in zip(out.detections, [(96, 128), (90, 100)]):
        n = det.boxes.shape[0]
        assert 0 < n <= config.box_head.max_detections
        assert det.scores.shape == (n,) and det.labels.shape == (n,) and det.mask_probs.shape == (n, 28, 28)
        assert bool((det.scores[:-1] >= det.scores[1:]).all())
        assert det.boxes[:, 0::2].min() >= 0 and det.boxes[:, 0::2].max() <= w
        assert det.boxes[:, 1::2].min() >= 0 and det.boxes[:, 1::2].max() <= h
        assert det.labels.min() >= 0 and det.labels.max() < 4
        assert det.mask_probs.min() >= 0 and det.mask_probs.max() <= 1


def test_loss_decreases_over_a_few_steps(synthetic_root):
    torch.manual_seed(0)
    data = CocoPanopticDataset(synthetic_root, "train")
    config = tiny_synthetic(data.categories.num_things, data.categories.num_stuff)
    model = build_model(config.model).train()
    transform = TrainTransform(max_long=config.model.input.max_long_side, short_side_range=(192, 192), flip_prob=0)
    batch = collate_train([transform(data[i], np.random.default_rng(i)) for i in range(2)], config.model.input)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history = []
    for step in range(12):
        model.generator = torch.Generator().manual_seed(step)
        losses = model(*batch)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "loss_semantic"}
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-3:]) < 0.7 * history[0], history


def test_backbone_config_default_is_published_r50():
    assert BackboneConfig().depth == 50 and BackboneConfig().frozen_stages == 1 and BackboneConfig().norm_eval
