"""Engine + sidecar files (runtime/trt/engine_file.py): round trip, atomic writes, and the clear
refusals (other TensorRT version, other GPU architecture, stale or missing sidecar)."""
from __future__ import annotations

import json
import os

import pytest

from pfpn.runtime.contract import CONTRACT_VERSION, ModelMetadata
from pfpn.runtime.trt import engine_file as ef
from pfpn.runtime.trt.engine_file import EngineCompatibilityError, EngineFileError, EngineInfo, PluginInfo


def _metadata() -> ModelMetadata:
    return ModelMetadata(
        contract_version=CONTRACT_VERSION, flavor="trt", input_format=ModelMetadata.INPUT_FORMAT,
        mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), max_long_side=1333, max_short_side=800,
        size_divisor=32, categories=[{"id": 1, "name": "person", "isthing": 1}], num_thing_classes=1,
        num_stuff_classes=0, max_detections=100, score_threshold=0.6, box_nms_iou_threshold=0.5,
        rpn_nms_iou_threshold=0.7, rpn_pre_nms_top_n=1000, rpn_post_nms_top_n=1000, mask_threshold=0.5,
        mask_overlap_threshold=0.5, stuff_area_limit=4096, instance_offset=1000, source="test")


def _info(**kw) -> EngineInfo:
    base = dict(tensorrt_version="10.13.3.9", trt_api="10", precision="fp16",
                profile={"min": "1x32x32", "opt": "1x800x1344", "max": "1x1344x1344"},
                model_metadata=_metadata().to_props(), device_name="NVIDIA H100", compute_capability="9.0",
                plugins=[PluginInfo("MultiLevelRoIAlign", "pfpn", "1", "aot-ptx", {"ptx_target": "sm_90a"})])
    base.update(kw)
    return EngineInfo(**base)


def test_round_trip(tmp_path):
    path = tmp_path / "m.engine"
    ef.write_engine(path, b"\x01plan-bytes", _info())
    assert ef.sidecar_path(path).name == "m.engine.json"
    data, info = ef.read_engine(path, "10.13.3.9", "9.0")
    assert data == b"\x01plan-bytes"
    assert info.engine_bytes == 11 and info.engine_sha256 == ef.sha256_bytes(data)
    assert info.metadata() == _metadata()  # contract, categories, thresholds survive
    assert info.plugins[0].kernel == {"ptx_target": "sm_90a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]  # no temporaries
    raw = json.loads(ef.sidecar_path(path).read_text())
    assert raw["format"] == ef.SIDECAR_FORMAT and raw["tensorrt_version"] == "10.13.3.9"


def test_build_number_may_differ_but_not_the_version(tmp_path):
    path = tmp_path / "m.engine"
    ef.write_engine(path, b"plan", _info())
    ef.read_engine(path, "10.13.3.11", "9.0")  # same major.minor.patch
    with pytest.raises(EngineCompatibilityError, match=r"built with TensorRT 10\.13\.3\.9 .* this runtime has "
                                                       r"TensorRT 11\.4\.0.*rebuild"):
        ef.read_engine(path, "11.4.0", "9.0")
    with pytest.raises(EngineCompatibilityError, match="10.14.1"):
        ef.read_engine(path, "10.14.1.48", "9.0")


def test_other_gpu_architecture(tmp_path):
    path = tmp_path / "m.engine"
    ef.write_engine(path, b"plan", _info())
    with pytest.raises(EngineCompatibilityError, match=r"compute capability 9\.0 \(NVIDIA H100\).*8\.7"):
        ef.read_engine(path, "10.13.3.9", "8.7")
    ef.read_engine(path, "10.13.3.9", None)  # unknown GPU: not checked


def test_missing_stale_or_foreign_sidecar(tmp_path):
    path = tmp_path / "m.engine"
    with pytest.raises(EngineFileError, match="not found"):
        ef.read_engine_info(path)
    path.write_bytes(b"plan")
    with pytest.raises(EngineFileError, match="no sidecar"):
        ef.read_engine_info(path)
    ef.write_engine(path, b"plan", _info())
    path.write_bytes(b"another plan")
    with pytest.raises(EngineFileError, match="does not match its sidecar"):
        ef.read_engine(path, "10.13.3.9")
    ef.sidecar_path(path).write_text("{not json")
    with pytest.raises(EngineFileError, match="not valid JSON"):
        ef.read_engine_info(path)
    ef.sidecar_path(path).write_text(json.dumps({"format": "something-else/3"}))
    with pytest.raises(EngineFileError, match="format"):
        ef.read_engine_info(path)
    ef.sidecar_path(path).write_text(json.dumps({"format": ef.SIDECAR_FORMAT, "trt_api": "10"}))
    with pytest.raises(EngineFileError, match="lacks tensorrt_version"):
        ef.read_engine_info(path)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.engine"
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ef.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ef.write_engine(path, b"plan", _info())
    # the engine was renamed before the sidecar failed: no temporaries; the engine alone is refused
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(EngineFileError, match="no sidecar"):
        ef.read_engine_info(path)


def test_old_contract_is_refused(tmp_path):
    props = _metadata().to_props()
    props["contract_version"] = "0"
    path = tmp_path / "m.engine"
    ef.write_engine(path, b"plan", _info(model_metadata=props))
    _, info = ef.read_engine(path, "10.13.3.9")
    with pytest.raises(ValueError, match="re-export"):
        info.metadata()
