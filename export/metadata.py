"""Describe an exported file in its ONNX metadata (``runtime/contract.py``'s ModelMetadata)."""
from __future__ import annotations

import dataclasses

import onnx

from pfpn.runtime.contract import CONTRACT_VERSION, ModelMetadata
from pfpn.runtime.categories import CategoryTable
from pfpn.training.config import ModelConfig


def build_metadata(config: ModelConfig, categories: CategoryTable, *, flavor: str, source: str) -> ModelMetadata:
    return ModelMetadata(
        contract_version=CONTRACT_VERSION, flavor=flavor, input_format=ModelMetadata.INPUT_FORMAT,
        mean=tuple(config.input.mean), std=tuple(config.input.std), max_long_side=config.input.max_long_side,
        max_short_side=config.input.max_short_side, size_divisor=config.input.size_divisor,
        categories=categories.to_json(), num_thing_classes=config.num_thing_classes,
        num_stuff_classes=config.num_stuff_classes, max_detections=config.box_head.max_detections,
        score_threshold=config.box_head.score_threshold, box_nms_iou_threshold=config.box_head.nms_iou_threshold,
        rpn_nms_iou_threshold=config.rpn.nms_iou_threshold, rpn_pre_nms_top_n=config.rpn.test_proposals.pre_nms_top_n,
        rpn_post_nms_top_n=config.rpn.test_proposals.post_nms_top_n, mask_threshold=config.mask_head.mask_threshold,
        # the FusionConfig's fields are the file's keys (ModelMetadata.fusion reads them back)
        **dataclasses.asdict(config.fusion), source=source)


def write_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
