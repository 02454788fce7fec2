"""Tests of the synthetic COCO-panoptic generator (training/data/synthetic.py)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.panoptic_io import read_panoptic_png
from pfpn.training.data.synthetic import (MIN_SEGMENT_AREA, SYNTHETIC_CATEGORIES, generate_synthetic_panoptic,
                                     make_synthetic_sample)

CAT = {c["id"]: c for c in SYNTHETIC_CATEGORIES}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    ds = generate_synthetic_panoptic(root, num_train=8, num_val=4, seed=3, progress=False)
    return root, ds


def test_layout_and_return_value(small_ds):
    root, ds = small_ds
    assert set(ds.splits) == {"train", "val"}
    for split, n in (("train", 8), ("val", 4)):
        s = ds.splits[split]
        assert s.json_path == root / "annotations" / f"panoptic_{split}2017.json"
        assert s.png_dir == root / "annotations" / f"panoptic_{split}2017"
        assert s.image_dir == root / f"{split}2017"
        assert s.num_images == n
        assert len(list(s.png_dir.glob("*.png"))) == n
        assert len(list(s.image_dir.glob("*.jpg"))) == n
        data = json.loads(s.json_path.read_text())
        assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
        assert data["licenses"] == []
        assert len(data["images"]) == len(data["annotations"]) == n
        assert s.num_segments == sum(len(a["segments_info"]) for a in data["annotations"])
    # image ids unique across splits
    ids = [im["id"] for sp in ("train", "val")
           for im in json.loads(ds.splits[sp].json_path.read_text())["images"]]
    assert len(ids) == len(set(ids))


def test_categories_noncontiguous_and_interleaved():
    ids = [c["id"] for c in SYNTHETIC_CATEGORIES]
    assert ids != list(range(1, len(ids) + 1))
    flags = [c["isthing"] for c in SYNTHETIC_CATEGORIES]
    # a stuff category appears before a thing category in the JSON order
    assert any(flags[i] == 0 and 1 in flags[i + 1:] for i in range(len(flags)))
    table = CategoryTable(SYNTHETIC_CATEGORIES)
    names = [c.name for c in table.by_label]
    assert names == ["circle", "rectangle", "triangle", "ellipse", "sky", "grass", "wall"]
    for c in SYNTHETIC_CATEGORIES:
        assert set(c) == {"id", "name", "supercategory", "isthing", "color"}
        assert len(c["color"]) == 3


def test_annotations_match_pngs(small_ds):
    root, ds = small_ds
    for split in ("train", "val"):
        s = ds.splits[split]
        data = json.loads(s.json_path.read_text())
        for im, ann in zip(data["images"], data["annotations"]):
            assert ann["image_id"] == im["id"]
            assert ann["file_name"] == Path(im["file_name"]).stem + ".png"
            ids = read_panoptic_png(s.png_dir / ann["file_name"])
            img = cv2.imread(str(s.image_dir / im["file_name"]))
            assert img.shape == (im["height"], im["width"], 3) == (192, 256, 3)
            assert ids.shape == img.shape[:2]
            seg_ids = [si["id"] for si in ann["segments_info"]]
            assert len(seg_ids) == len(set(seg_ids)) and 0 not in seg_ids
            assert set(np.unique(ids)) - {0} == set(seg_ids)
            for si in ann["segments_info"]:
                assert si["category_id"] in CAT
                m = ids == si["id"]
                ys, xs = np.nonzero(m)
                assert si["area"] == ys.size >= MIN_SEGMENT_AREA
                assert si["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert all(isinstance(v, int) for v in si["bbox"])
                assert si["iscrowd"] in (0, 1)
                if si["iscrowd"]:
                    assert CAT[si["category_id"]]["isthing"] == 1


def test_deterministic_byte_identical(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for r in (a, b):
        generate_synthetic_panoptic(r, num_train=3, num_val=2, seed=7, progress=False)
    generate_synthetic_panoptic(c, num_train=3, num_val=2, seed=8, progress=False)
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(ta) == 2 * (3 + 2) + 2
    assert ta == tb
    assert ta["annotations/panoptic_train2017.json"] != tc["annotations/panoptic_train2017.json"]
    assert ta["annotations/panoptic_val2017/000001000001.png"] != tc["annotations/panoptic_val2017/000001000001.png"]


def test_val_split_independent_of_num_train(tmp_path):
    generate_synthetic_panoptic(tmp_path / "a", num_train=1, num_val=2, seed=1, progress=False)
    generate_synthetic_panoptic(tmp_path / "b", num_train=4, num_val=2, seed=1, progress=False)
    assert _tree_bytes(tmp_path / "a" / "val2017") == _tree_bytes(tmp_path / "b" / "val2017")


def test_odd_size(tmp_path):
    ds = generate_synthetic_panoptic(tmp_path, num_train=3, num_val=1, height=97, width=131,
                                     seed=0, progress=False)
    data = json.loads(ds.splits["train"].json_path.read_text())
    for im, ann in zip(data["images"], data["annotations"]):
        assert (im["height"], im["width"]) == (97, 131)
        assert cv2.imread(str(ds.splits["train"].image_dir / im["file_name"])).shape == (97, 131, 3)
        ids = read_panoptic_png(ds.splits["train"].png_dir / ann["file_name"])
        assert ids.shape == (97, 131)
        assert sum(si["area"] for si in ann["segments_info"]) == int((ids != 0).sum())


def _hue_stats(image, ids, seg):
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.float64)
    m = (ids == seg["id"]).reshape(-1)
    h = hsv[m, 0] * (2 * np.pi / 180.0)
    mean_hue = (np.degrees(np.arctan2(np.sin(h).mean(), np.cos(h).mean())) / 2.0) % 180.0
    return mean_hue, hsv[m, 1].mean()


def test_content_statistics_and_colour_families():
    """Over many images: instance counts, crowds, void, stuff regions; each thing class keeps
    its own hue family (measured on the rendered pixels, independently of the generator)."""
    fam = {"circle": [(0, 10), (170, 180)], "rectangle": [(100, 130)], "triangle": [(12, 35)],
           "ellipse": [(132, 168)]}
    n_img, crowd_imgs, void_imgs = 90, 0, 0
    hits = {k: [0, 0] for k in fam}
    for i in range(n_img):
        image, ids, segs = make_synthetic_sample(np.random.default_rng([11, i]), 192, 256)
        assert image.dtype == np.uint8 and image.shape == (192, 256, 3)
        inst = [s for s in segs if CAT[s["category_id"]]["isthing"] and not s["iscrowd"]]
        stuff = [s for s in segs if not CAT[s["category_id"]]["isthing"]]
        assert 0 <= len(inst) <= 6
        assert 1 <= len(stuff) <= 3
        assert len({s["category_id"] for s in stuff}) == len(stuff)  # one segment per stuff class
        crowd_imgs += any(s["iscrowd"] for s in segs)
        void_imgs += bool((ids == 0).any())
        for s in inst:
            w, h = s["bbox"][2], s["bbox"][3]
            assert max(w, h) <= 100  # shapes are at most ~90 px
            hue, sat = _hue_stats(image, ids, s)
            name = CAT[s["category_id"]]["name"]
            hits[name][1] += 1
            hits[name][0] += any(lo <= hue <= hi for lo, hi in fam[name]) and sat > 120
    assert 5 <= crowd_imgs <= 30  # about 1 in 6
    assert 15 <= void_imgs <= 70  # band in ~1/3, blob in ~1/4
    for name, (ok, total) in hits.items():
        assert total >= 20, name
        assert ok == total, (name, ok, total)


def test_sample_sizes_scale_with_image():
    image, ids, segs = make_synthetic_sample(np.random.default_rng(0), 97, 131)
    assert image.shape == (97, 131, 3) and ids.shape == (97, 131)
    with pytest.raises(ValueError):
        make_synthetic_sample(np.random.default_rng(0), 4, 100)
