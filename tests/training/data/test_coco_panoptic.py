"""Tests of the COCO panoptic reader (training/data/coco_panoptic.py) on a hand-made dataset."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpn.runtime.panoptic_io import write_panoptic_png
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.data.synthetic import generate_synthetic_panoptic

# JSON order interleaves things and stuff; ids are non-contiguous.
# Contiguous labels: dog(7) 0, cat(9) 1, sky(3) 2, road(20) 3.
CATS = [
    {"id": 7, "name": "dog", "supercategory": "animal", "isthing": 1, "color": [1, 2, 3]},
    {"id": 3, "name": "sky", "supercategory": "bg", "isthing": 0, "color": [4, 5, 6]},
    {"id": 9, "name": "cat", "supercategory": "animal", "isthing": 1, "color": [7, 8, 9]},
    {"id": 20, "name": "road", "supercategory": "bg", "isthing": 0, "color": [1, 1, 1]},
]
H, W = 10, 12


def _ids_image0():
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:5, :] = 300           # sky
    ids[5:, :] = 70000         # road (uses the G and B channels)
    ids[1:4, 2:6] = 11         # dog instance
    ids[6:9, 7:11] = 12        # cat instance
    ids[0, 9:12] = 13          # cat crowd
    ids[9, 0:2] = 0            # void
    ids[8, 0] = 999            # id not listed in the JSON -> void
    return ids


def _write_ds(root: Path, *, extra_segment=None):
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    ids0 = _ids_image0()
    write_panoptic_png(root / "annotations" / "panoptic_val2017" / "a.png", ids0)
    ids1 = np.full((H, W), 300, dtype=np.int64)  # only sky, no things
    write_panoptic_png(root / "annotations" / "panoptic_val2017" / "b.png", ids1)
    img0 = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "val2017" / "a.png"), img0)  # lossless so the test can compare
    cv2.imwrite(str(root / "val2017" / "b.png"), img0[:, ::-1])
    segs0 = [
        {"id": 300, "category_id": 3, "area": 0, "bbox": [0, 0, 12, 5], "iscrowd": 0},
        {"id": 70000, "category_id": 20, "area": 0, "bbox": [0, 5, 12, 5], "iscrowd": 0},
        {"id": 11, "category_id": 7, "area": 12, "bbox": [2, 1, 4, 3], "iscrowd": 0},
        {"id": 12, "category_id": 9, "area": 12, "bbox": [7, 6, 4, 3], "iscrowd": 0},
        {"id": 13, "category_id": 9, "area": 3, "bbox": [9, 0, 3, 1], "iscrowd": 1},
        {"id": 55, "category_id": 7, "area": 5, "bbox": [0, 0, 1, 5], "iscrowd": 0},  # not in PNG
    ]
    if extra_segment:
        segs0.append(extra_segment)
    data = {
        "info": {}, "licenses": [],
        "images": [{"id": 42, "file_name": "a.png", "height": H, "width": W},
                   {"id": 43, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [{"image_id": 43, "file_name": "b.png",
                         "segments_info": [{"id": 300, "category_id": 3, "area": 120,
                                            "bbox": [0, 0, 12, 10], "iscrowd": 0}]},
                        {"image_id": 42, "file_name": "a.png", "segments_info": segs0}],
        "categories": CATS,
    }
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    return img0, ids0


def test_reader_hand_made(tmp_path):
    img0, ids0 = _write_ds(tmp_path)
    ds = CocoPanopticDataset(tmp_path, "val")
    assert len(ds) == 2
    assert [c.name for c in ds.categories.by_label] == ["dog", "cat", "sky", "road"]
    s = ds[0]
    assert s["image_id"] == 42 and s["file_name"] == "a.png"
    assert s["ori_shape"] == (H, W) == s["img_shape"]
    assert s["scale_factor"] == (1.0, 1.0) and s["flip"] is False
    assert s["image"].dtype == np.uint8 and np.array_equal(s["image"], img0)
    # non-crowd things present in the PNG, in JSON order: dog (11), cat (12)
    assert s["gt_boxes"].dtype == np.float32
    np.testing.assert_array_equal(s["gt_boxes"], np.array([[2, 1, 6, 4], [7, 6, 11, 9]], np.float32))
    assert s["gt_labels"].dtype == np.int64
    np.testing.assert_array_equal(s["gt_labels"], [0, 1])
    assert s["gt_masks"].dtype == np.uint8 and s["gt_masks"].shape == (2, H, W)
    np.testing.assert_array_equal(s["gt_masks"][0], (ids0 == 11).astype(np.uint8))
    np.testing.assert_array_equal(s["gt_masks"][1], (ids0 == 12).astype(np.uint8))
    expected = np.full((H, W), 255, np.uint8)
    expected[ids0 == 300] = 2
    expected[ids0 == 70000] = 3
    expected[ids0 == 11] = 0
    expected[ids0 == 12] = 1
    expected[ids0 == 13] = 1  # crowd cat: in the semantic map
    assert s["gt_semantic_seg"].dtype == np.uint8
    np.testing.assert_array_equal(s["gt_semantic_seg"], expected)
    assert s["gt_semantic_seg"][8, 0] == 255 and s["gt_semantic_seg"][9, 0] == 255

    s1 = ds[1]
    assert s1["image_id"] == 43
    assert s1["gt_boxes"].shape == (0, 4) and s1["gt_labels"].shape == (0,)
    assert s1["gt_masks"].shape == (0, H, W)
    assert (s1["gt_semantic_seg"] == 2).all()
    assert ds[-1]["image_id"] == 43
    with pytest.raises(IndexError):
        ds[2]


def test_transform_is_applied(tmp_path):
    _write_ds(tmp_path)
    ds = CocoPanopticDataset(tmp_path, "val", transform=lambda s: {**s, "tagged": True})
    assert ds[0]["tagged"] is True


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        CocoPanopticDataset(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
        CocoPanopticDataset(tmp_path, "val")

    _write_ds(tmp_path)
    (tmp_path / "annotations" / "panoptic_val2017" / "b.png").unlink()
    ds = CocoPanopticDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="b.png"):
        ds[1]
    (tmp_path / "val2017" / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="a.png"):
        ds[0]
    (tmp_path / "val2017" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="a.png"):
        ds[0]


def test_unknown_category_is_an_error(tmp_path):
    _write_ds(tmp_path, extra_segment={"id": 77, "category_id": 4, "area": 1, "bbox": [0, 0, 1, 1],
                                       "iscrowd": 0})
    with pytest.raises(ValueError, match=r"panoptic_val2017\.json.*category_id 4"):
        CocoPanopticDataset(tmp_path, "val")


def test_png_size_mismatch(tmp_path):
    _write_ds(tmp_path)
    write_panoptic_png(tmp_path / "annotations" / "panoptic_val2017" / "a.png", np.zeros((H, W + 1), np.int64))
    with pytest.raises(ValueError, match="a.png"):
        CocoPanopticDataset(tmp_path, "val")[0]


def test_reader_on_synthetic(tmp_path):
    generate_synthetic_panoptic(tmp_path, num_train=0, num_val=6, seed=5, progress=False)
    ds = CocoPanopticDataset(tmp_path, "val")
    assert len(ds) == 6 and ds.categories.num_things == 4 and ds.categories.num_stuff == 3
    data = json.loads((tmp_path / "annotations" / "panoptic_val2017.json").read_text())
    total = 0
    for i in range(len(ds)):
        s = ds[i]
        segs = data["annotations"][i]["segments_info"]
        inst = [g for g in segs if g["category_id"] in (1, 2, 3, 5) and not g["iscrowd"]]
        assert len(s["gt_labels"]) == len(inst)
        total += len(inst)
        sem = s["gt_semantic_seg"]
        assert set(np.unique(sem)) <= set(range(7)) | {255}
        for box, label, mask in zip(s["gt_boxes"], s["gt_labels"], s["gt_masks"]):
            assert 0 <= label < 4
            ys, xs = np.nonzero(mask)
            # synthetic bboxes are tight: the mask's pixel extent is exactly the xyxy box
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (sem[mask.astype(bool)] == label).all()
    assert total > 0
