"""Checkpoint loading: the published (mmdetection) layout, our format, and clear errors."""
from pathlib import Path

import pytest
import torch

from pfpn.training.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from pfpn.training.config import tiny_synthetic
from pfpn.training.model.panoptic_fpn import build_model
from pfpn.runtime.categories import Category, CategoryTable

# The published checkpoint's tensor listing (name, shape, dtype), copied from
# ../shared/reference/ so that a clone without the shared folder runs these tests too.
REFERENCE_LISTING = Path(__file__).resolve().parents[1] / "fixtures" / "mmdet_panoptic_fpn_r50_state_dict.txt"
SHARED_LISTING = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / REFERENCE_LISTING.name
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def test_vendored_listing_is_the_shared_one():
    if not SHARED_LISTING.is_file():
        pytest.skip(f"no shared reference folder next to this checkout ({SHARED_LISTING})")
    assert REFERENCE_LISTING.read_text() == SHARED_LISTING.read_text()


def _reference_state_dict() -> dict[str, torch.Tensor]:
    """A random state dict with exactly the published checkpoint's tensor names, shapes and dtypes."""
    if not REFERENCE_LISTING.is_file():
        pytest.skip(f"reference listing not found at {REFERENCE_LISTING}")
    g = torch.Generator().manual_seed(0)
    sd = {}
    for line in REFERENCE_LISTING.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        if DTYPES[dtype] == torch.int64:
            sd[name] = torch.randint(0, 1000, shape, generator=g)
        else:
            sd[name] = torch.randn(shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def mmdet_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    sd = _reference_state_dict()
    path = tmp_path_factory.mktemp("mmdet") / "panoptic_fpn_r50.pth"
    torch.save({"state_dict": sd, "meta": {"CLASSES": tuple(f"c{i}" for i in range(133)), "epoch": 12}}, path)
    return path, sd


def test_listing_has_383_tensors():
    assert len(_reference_state_dict()) == 383


def test_mmdet_checkpoint_loads_every_tensor(mmdet_ckpt):
    path, sd = mmdet_ckpt
    model, ckpt = load_model(path)
    assert ckpt.source == "mmdet"
    assert ckpt.config.model.backbone.depth == 50
    assert (ckpt.config.model.num_thing_classes, ckpt.config.model.num_stuff_classes) == (80, 53)
    assert ckpt.categories.by_label[0].name == "person" and ckpt.categories.by_label[80].id == 92
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k


def _expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_missing_and_unexpected_keys_are_named(mmdet_ckpt, tmp_path):
    _, sd = mmdet_ckpt
    sd = dict(sd)
    del sd["neck.fpn_convs.2.conv.bias"]
    sd["roi_head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad_keys.pth"
    torch.save({"state_dict": sd, "meta": {}}, path)
    _expect_error(path, "missing", "neck.fpn_convs.2.conv.bias", "unexpected", "roi_head.extra.weight")


def test_misshaped_keys_are_named(mmdet_ckpt, tmp_path):
    _, sd = mmdet_ckpt
    sd = dict(sd)
    sd["rpn_head.rpn_reg.weight"] = torch.zeros(8, 256, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save({"state_dict": sd, "meta": {}}, path)
    _expect_error(path, "mis-shaped", "rpn_head.rpn_reg.weight", "(8, 256, 1, 1)", "(12, 256, 1, 1)")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    _expect_error(junk, "not a readable PyTorch checkpoint")
    truncated = tmp_path / "trunc.pth"
    torch.save({"state_dict": {"a": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    _expect_error(truncated, "not a readable PyTorch checkpoint")
    _expect_error(tmp_path / "absent.pth", "not found")
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, other)
    _expect_error(other, "not a Panoptic FPN checkpoint", "weights")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": {}, "meta": {"obj": Path("x")}}, path)  # a non-tensor object
    _expect_error(path, "not a readable PyTorch checkpoint")


def test_native_roundtrip(tmp_path):
    config = tiny_synthetic(2, 1)
    cats = CategoryTable([Category(1, "a", True), Category(7, "b", True), Category(3, "s", False)])
    model = build_model(config.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=model, config=config, categories=cats, optimizer=opt, schedule={"iteration": 7})
    ckpt = load_checkpoint(path)
    assert ckpt.source == "native" and ckpt.config == config and ckpt.schedule == {"iteration": 7}
    assert [c.id for c in ckpt.categories.by_label] == [1, 7, 3]
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_native_checkpoint_that_does_not_fit_its_config(tmp_path):
    config = tiny_synthetic(2, 1)
    cats = CategoryTable([Category(1, "a", True), Category(7, "b", True), Category(3, "s", False)])
    model = build_model(tiny_synthetic(3, 1).model)  # 3 thing classes, config says 2
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=model, config=config, categories=cats)
    _expect_error(path, "mis-shaped", "roi_head.bbox_head.fc_cls.weight")
