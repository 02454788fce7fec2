"""Model configs round-trip through their dict form, and dicts in the layout of checkpoints saved
before the RPN / box-head settings were grouped still load (training/config.py)."""
import pytest

from pfpn.training.config import (ProposalConfig, SamplingConfig, model_config_from_dict, r50_fpn_1x, tiny_synthetic,
                                  to_dict)


def test_round_trip():
    for config in (r50_fpn_1x().model, tiny_synthetic(4, 3).model):
        assert model_config_from_dict(to_dict(config)) == config


def test_flat_keys_of_older_checkpoints_load_into_their_groups():
    data = to_dict(r50_fpn_1x().model)
    rpn = {k: v for k, v in data["rpn"].items() if k not in ("targets", "test_proposals", "train_proposals")}
    # what a checkpoint of the earlier layout holds (values changed from the defaults on purpose)
    rpn.update(pre_nms_top_n_test=500, post_nms_top_n_test=300, pre_nms_top_n_train=1000, post_nms_top_n_train=500,
               pos_iou_threshold=0.7, neg_iou_threshold=0.3, min_pos_iou=0.3, num_samples=128, positive_fraction=0.5,
               loss_cls_weight=1.0, loss_box_weight=2.0)
    box = {k: v for k, v in data["box_head"].items() if k != "targets"}
    box.update(num_samples=64)  # an old checkpoint with only some of the keys: the rest are defaults
    config = model_config_from_dict({**data, "rpn": rpn, "box_head": box})
    assert config.rpn.test_proposals == ProposalConfig(pre_nms_top_n=500, post_nms_top_n=300)
    assert config.rpn.train_proposals == ProposalConfig(pre_nms_top_n=1000, post_nms_top_n=500)
    assert config.rpn.targets == SamplingConfig(pos_iou_threshold=0.7, neg_iou_threshold=0.3, min_pos_iou=0.3,
                                                num_samples=128, positive_fraction=0.5, loss_box_weight=2.0)
    assert config.box_head.targets == SamplingConfig(pos_iou_threshold=0.5, neg_iou_threshold=0.5, min_pos_iou=0.5,
                                                     num_samples=64, positive_fraction=0.25)
    with pytest.raises(ValueError, match="unknown RPNConfig fields"):
        model_config_from_dict({**data, "rpn": {**rpn, "not_a_field": 1}})
