"""Model-level panoptic map -> COCO ids and segments_info, on a hand-built map."""
import numpy as np

from pfpn.runtime.categories import Category, CategoryTable
from pfpn.runtime.contract import FusionConfig, ModelMetadata
from pfpn.runtime.result import PanopticMap, panoptic_result_from_label_map, segment_bboxes, to_panoptic_result

CATS = CategoryTable([Category(1, "a", True), Category(20, "s", False), Category(5, "b", True)])
# contiguous: a=0, b=1 (things), s=2 (stuff); VOID = 3


def test_label_map_to_coco():
    m = np.array([[2, 2, 1001, 1001],
                  [3, 2, 2000, 1001],
                  [3, 3, 2000, 2000]])
    res = panoptic_result_from_label_map(m, CATS, instance_scores=[0.9, 0.8])
    assert res.id_map.tolist() == [[2, 2, 1001, 1001], [0, 2, 2000, 1001], [0, 0, 2000, 2000]]
    segs = {s["id"]: s for s in res.segments_info}
    assert set(segs) == {2, 1001, 2000}
    assert segs[2] == {"id": 2, "category_id": 20, "isthing": False, "area": 3, "bbox": [0, 0, 2, 2], "score": None}
    assert segs[1001] == {"id": 1001, "category_id": 5, "isthing": True, "area": 3, "bbox": [2, 0, 2, 2],
                          "score": 0.9}
    assert segs[2000]["category_id"] == 1 and segs[2000]["score"] == 0.8 and segs[2000]["bbox"] == [2, 1, 2, 2]
    ann = res.to_coco_annotation(7, "x.png")
    assert ann["image_id"] == 7 and {s["id"] for s in ann["segments_info"]} == {2, 1001, 2000}
    assert all(s["iscrowd"] == 0 for s in ann["segments_info"])


def test_segment_bboxes_brute_force():
    rng = np.random.default_rng(0)
    inv = rng.integers(0, 5, (13, 17))
    inv[inv == 3] = 4  # segment 3 absent... keep it present somewhere
    inv[0, 0] = 3
    boxes = segment_bboxes(inv, 5)
    for k in range(5):
        ys, xs = np.nonzero(inv == k)
        assert boxes[k].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_panoptic_map_without_segment_table_to_coco():
    """Instance k's score is that of detection kept[k - 1], not of row k - 1."""
    m = np.array([[2, 1001, 1001], [3, 2000, 2000]])
    panoptic = PanopticMap(label_map=m, kept=[2, 0], boxes=np.zeros((3, 4), np.float32),
                           scores=np.array([0.7, 0.5, 0.9], np.float32), labels=np.array([1, 0, 1]),
                           instance_offset=1000)
    assert panoptic.kept_scores.tolist() == [np.float32(0.9), np.float32(0.7)]
    assert panoptic.kept_labels.tolist() == [1, 1]
    segs = {s["id"]: s for s in to_panoptic_result(panoptic, CATS).segments_info}
    assert segs[1001]["score"] == float(np.float32(0.9)) and segs[2000]["score"] == float(np.float32(0.7))
    assert segs[1001]["area"] == 2 and segs[2]["category_id"] == 20 and set(segs) == {2, 1001, 2000}


def test_fusion_config_defaults_and_metadata_keys():
    assert FusionConfig() == FusionConfig(mask_overlap_threshold=0.5, stuff_area_limit=4096, instance_offset=1000)
    props = {name: "0" for name in ModelMetadata.__dataclass_fields__}
    props.update(contract_version="1", flavor="ort", input_format="x", mean="[0, 0, 0]", std="[1, 1, 1]",
                 categories="[]", source="s", mask_overlap_threshold="0.8", stuff_area_limit="50",
                 instance_offset="1000")
    meta = ModelMetadata.from_props(props)  # the keys of files exported before FusionConfig
    assert meta.fusion == FusionConfig(mask_overlap_threshold=0.8, stuff_area_limit=50, instance_offset=1000)
    assert {k: meta.to_props()[k] for k in ("mask_overlap_threshold", "stuff_area_limit")} == {
        "mask_overlap_threshold": "0.8", "stuff_area_limit": "50"}
