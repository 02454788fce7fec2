"""Our PyTorch predictor and the torch-free runtime against the reference implementation.

The reference is mmdetection 3.3.0 itself (mmengine 0.10.7, mmcv-lite 2.1.0 with
``mmcv_ext_standin``), installed by ``reference_env.py`` into its own folder and run in its own
process by ``run_mmdet.py``. Same checkpoint, same image -> the same panoptic id map
(label + k * 1000 for instance k, stuff labels, VOID): identical, or >= 99.999% of pixels with
every differing pixel explained by a float64 rerun of our model: it shows the pixel on a float32
decision edge (two semantic logits or a mask probability and its threshold within 1e-4).

Cases: the R-50 published layout initialised by mmdetection's own ``init_weights`` (seeded,
classifier scaled so that scores spread) at the published score threshold 0.6 and at 0.4, on
scikit-image's three photographs, a flat tie-heavy image and an 800x1333 image (semantic logits
given random per-class biases); the small config
(random weights biased to fire, and briefly trained) at 0.6 and a low threshold. Set
``PFPN_PARITY_JSON`` to collect the numbers of every case in one JSON file.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfpn.export import to_onnx
from pfpn.runtime.predictor import Predictor
from tests.reference.reference_env import ensure_installed, photograph, reference_environment
from pfpn.training.checkpoint import load_model, save_mmdet_checkpoint
from pfpn.training.config import ModelConfig
from pfpn.training.data.coco_panoptic import CocoPanopticDataset
from pfpn.training.model.panoptic_fpn import rebuild_with_config
from pfpn.runtime.images import load_image
from pfpn.training.predictor import PanopticPredictor

HERE = Path(__file__).resolve().parent
RUN_MMDET = HERE / "run_mmdet.py"
MIN_IDENTICAL = 0.99999
R50_CLS_SCALE = 40.0  # fc_cls weights x40: softmax scores spread up to ~0.8 on the photographs
# (rpn_cls is left as initialised: its bias is 0, so scaling its weights would not change the
# order of the sigmoid scores, which is all that proposal selection uses)
R50_THRESHOLDS = {"published": 0.6, "low": 0.4}
INSTANCE_OFFSET = 1000

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mmdet_reference")]


# ----------------------------------------------------------------------------------------------
# the reference process

@pytest.fixture(scope="module")
def reference_site() -> Path:
    return ensure_installed()


def run_reference(site: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(RUN_MMDET), "--threads", "1", *args], capture_output=True, text=True,
                          timeout=1200, env=reference_environment(site))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def reference_maps(site: Path, ckpt: Path, images: list[Path], out: Path, *, score_thr: float | None = None,
                   config_file: Path | None = None) -> list[np.ndarray]:
    args = ["predict", "--ckpt", str(ckpt), "--out", str(out), "--images", *map(str, images)]
    if score_thr is not None:
        args += ["--score-thr", str(score_thr)]
    if config_file is not None:
        args += ["--config", str(config_file)]
    run_reference(site, *args)
    with np.load(out) as maps:
        return [maps[str(i)] for i in range(len(images))]


def mmdet_config_text(config: ModelConfig, site: Path) -> str:
    """An mmdetection config describing ``config``: the published one (in the reference ``site``)
    with what differs."""
    b, c = config.backbone, config.fpn.out_channels
    widths = [b.base_channels * 2**i * (4 if b.depth >= 50 else 1) for i in range(4)]
    inp = config.input
    return f"""
_base_ = {str(site / "mmdet" / ".mim" / "configs" / "panoptic_fpn" / "panoptic-fpn_r50_fpn_1x_coco.py")!r}
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
        rpn=dict(nms_pre={config.rpn.test_proposals.pre_nms_top_n}, max_per_img={config.rpn.test_proposals.post_nms_top_n}),
        rcnn=dict(score_thr={config.box_head.score_threshold}),
        panoptic=dict(stuff_area_limit={config.fusion.stuff_area_limit})))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({inp.max_long_side}, {inp.max_short_side}), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
"""


# ----------------------------------------------------------------------------------------------
# comparing maps

@dataclass
class MapParity:
    case: str
    image: str
    size: tuple[int, int]
    pixels: int
    identical_pixels: int
    explained_pixels: int  # differing pixels on a float32 decision edge (near_tie_pixels)
    reference_segments: int
    matched_segments: int  # same label, IoU > 0.5
    reference_instances: int

    @property
    def identical_fraction(self) -> float:
        return self.identical_pixels / self.pixels

    @property
    def ok(self) -> bool:
        differing = self.pixels - self.identical_pixels
        return differing == 0 or (self.identical_fraction >= MIN_IDENTICAL and self.explained_pixels == differing)


def segment_label(segment_id: int) -> int:
    return segment_id % INSTANCE_OFFSET if segment_id >= INSTANCE_OFFSET else segment_id


def matched_segments(ours: np.ndarray, ref: np.ndarray, void: int) -> tuple[int, int]:
    """(reference segments, those with one segment of ours of the same label at IoU > 0.5)."""
    ref_ids = [int(i) for i in np.unique(ref) if i != void]
    matched = 0
    for rid in ref_ids:
        rmask = ref == rid
        cand, counts = np.unique(ours[rmask], return_counts=True)
        for oid, inter in zip(cand, counts):
            if oid == void or segment_label(int(oid)) != segment_label(rid):
                continue
            union = int(rmask.sum()) + int((ours == oid).sum()) - int(inter)
            if inter / union > 0.5:
                matched += 1
                break
    return len(ref_ids), matched


@torch.no_grad()
def near_tie_pixels(predictor: PanopticPredictor, image: Path, pixels: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Which of ``pixels`` ((N, 2) rows, cols) sit on a float32 decision edge, shown by a float64
    run of our model: the two largest semantic logits (upsampled to the image, as the fusion
    sees them) within ``eps`` of each other relative to the largest magnitude, or a pasted mask
    probability within ``eps`` of the mask threshold. There float32 rounding (ONNX Runtime's
    kernels round differently from PyTorch's) legitimately decides either way."""
    from pfpn.training.model.panoptic_fusion import paste_masks, upsample_semantic_logits

    config = predictor.config
    batch = predictor.prepare([load_image(image)])
    model = copy.deepcopy(predictor.model).double()
    raw = model(batch.images.double(), batch.image_sizes)
    ys, xs = torch.from_numpy(pixels[:, 0]), torch.from_numpy(pixels[:, 1])
    logits = upsample_semantic_logits(raw.semantic_logits[0], padded_size=tuple(batch.images.shape[-2:]),
                                      resized_size=batch.image_sizes[0], original_size=batch.original_sizes[0])
    at = logits[:, ys, xs]
    top2 = at.topk(2, dim=0).values
    semantic_tie = (top2[0] - top2[1]) <= eps * at.abs().amax(0)
    det = raw.detections[0]
    sx, sy = batch.scale_factors[0]
    boxes = det.boxes / det.boxes.new_tensor([sx, sy, sx, sy])
    t = config.mask_head.mask_threshold
    probs, boxes = det.mask_probs.float(), boxes.float()  # the pasting kernel is float32-only
    lo = paste_masks(probs, boxes, batch.original_sizes[0], t - eps)
    hi = paste_masks(probs, boxes, batch.original_sizes[0], t + eps)
    mask_tie = (lo != hi)[:, ys, xs].any(0) if len(det.scores) else torch.zeros_like(semantic_tie)
    return (semantic_tie | mask_tie).numpy()


def compare_maps(case: str, image: Path, ours: np.ndarray, ref: np.ndarray, predictor: PanopticPredictor
                 ) -> MapParity:
    """Pixels of ``ours`` against the reference's; differing ones are checked by :func:`near_tie_pixels`."""
    assert ours.shape == ref.shape, (image, ours.shape, ref.shape)
    differ = ours != ref
    explained = 0
    if 0 < differ.sum() <= (1 - MIN_IDENTICAL) * differ.size:
        explained = int(near_tie_pixels(predictor, image, np.argwhere(differ)).sum())
    n_ref, n_matched = matched_segments(ours, ref, predictor.config.void_label)
    return MapParity(case=case, image=image.name, size=tuple(ref.shape), pixels=int(ref.size),
                     identical_pixels=int((~differ).sum()), explained_pixels=explained, reference_segments=n_ref,
                     matched_segments=n_matched, reference_instances=len(np.unique(ref[ref >= INSTANCE_OFFSET])))


def record(rows: list[MapParity]) -> None:
    """Append the rows to $PFPN_PARITY_JSON (when set) for the README's table."""
    path = os.environ.get("PFPN_PARITY_JSON")
    if not path:
        return
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    data["rows"] = [r for r in data["rows"] if (r["case"], r["image"]) not in {(x.case, x.image) for x in rows}]
    data["rows"] += [{**asdict(r), "identical_fraction": r.identical_fraction, "ok": r.ok} for r in rows]
    data["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "command": (
                               "PFPN_PARITY_JSON=benchmarks/results/mmdet_parity.json python -m pytest "
                               "tests/reference/test_mmdet_parity.py -p no:xdist")}
    path.write_text(json.dumps(data, indent=2))


def assert_parity(rows: list[MapParity]) -> None:
    record(rows)
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(f"{r.image}: {r.pixels - r.identical_pixels} of {r.pixels} pixels differ, "
                              f"{r.explained_pixels} explained by float64" for r in bad)


def pytorch_rows(case: str, predictor: PanopticPredictor, images: list[Path], refs: list[np.ndarray]
                 ) -> list[MapParity]:
    torch.set_num_threads(1)
    return [compare_maps(case, image, predictor.predict_maps([image])[0].label_map, ref, predictor)
            for image, ref in zip(images, refs)]


def runtime_rows(case: str, onnx_path: Path, predictor: PanopticPredictor, images: list[Path],
                 refs: list[np.ndarray]) -> list[MapParity]:
    """The torch-free runtime's maps; ``predictor`` (same checkpoint and settings) explains differences."""
    runtime = Predictor(onnx_path, threads=1)
    return [compare_maps(case, image, runtime.predict_maps([image])[0].label_map, ref, predictor)
            for image, ref in zip(images, refs)]


def export_ort(ckpt: Path, out: Path, score_threshold: float) -> Path:
    if not out.exists():
        assert to_onnx.main(["--ckpt", str(ckpt), "--out", str(out), "--threads", "1",
                             "--score-threshold", str(score_threshold)]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# R-50, published layout, initialised by mmdetection

@pytest.fixture(scope="module")
def r50(tmp_path_factory, reference_site):
    """(checkpoint written by mmdetection, our predictor of it, the images, a cache of reference maps)."""
    tmp = tmp_path_factory.mktemp("r50_reference")
    ckpt = tmp / "r50_mmdet_init.pth"
    run_reference(reference_site, "init", "--out", str(ckpt), "--seed", "0", "--cls-scale", str(R50_CLS_SCALE),
                  "--semantic-bias-std", "1")
    images = [photograph(n, reference_site) for n in ("astronaut", "coffee", "chelsea")]
    # flat regions give exactly equal RPN scores (the tie order decides which proposals survive
    # NMS); the photograph pasted in the middle makes detections that depend on those proposals
    flat = np.full((333, 517, 3), 127, np.uint8)
    flat[60:260, 150:350] = cv2.resize(cv2.imread(str(images[0])), (200, 200), interpolation=cv2.INTER_LINEAR)
    images.append(tmp / "flat_333x517.png")
    cv2.imwrite(str(images[-1]), flat)
    # 800x1333: the published input size itself (no resize)
    big = cv2.resize(cv2.imread(str(photograph("coffee", reference_site))), (1333, 800),
                     interpolation=cv2.INTER_LINEAR)
    images.append(tmp / "coffee_800x1333.png")
    cv2.imwrite(str(images[-1]), big)
    return {"ckpt": ckpt, "tmp": tmp, "images": images, "maps": {}, "site": reference_site}


def r50_reference(r50, level: str) -> list[np.ndarray]:
    if level not in r50["maps"]:
        r50["maps"][level] = reference_maps(r50["site"], r50["ckpt"], r50["images"], r50["tmp"] / f"ref_{level}.npz",
                                            score_thr=R50_THRESHOLDS[level])
    return r50["maps"][level]


def r50_predictor(r50, level: str) -> PanopticPredictor:
    model, ckpt = load_model(r50["ckpt"])
    config = replace(ckpt.config.model, box_head=replace(ckpt.config.model.box_head,
                                                         score_threshold=R50_THRESHOLDS[level]))
    return PanopticPredictor(rebuild_with_config(model, config), config, ckpt.categories)


@pytest.mark.parametrize("level", list(R50_THRESHOLDS))
def test_r50_pytorch_matches_mmdetection(r50, level):
    refs = r50_reference(r50, level)
    rows = pytorch_rows(f"R-50 mmdet init, score > {R50_THRESHOLDS[level]}, PyTorch", r50_predictor(r50, level),
                        r50["images"], refs)
    assert_parity(rows)
    instances = [r.reference_instances for r in rows]
    assert max(instances) >= (10 if level == "published" else 30), instances  # the fusion was exercised


R50_IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "flat_333x517.png", "coffee_800x1333.png")
TIE_ORDER_GAP = ("known gap: the ort flavor's TopK / NonMaxSuppression (standard ONNX, run by ONNX Runtime) put "
                 "exactly equal RPN scores in index order, the reference's unstable sort does not; at the low "
                 "threshold that changes which proposals survive on this image "
                 "(test_r50_runtime_tie_order_is_the_stable_one shows it is the whole difference)")
KNOWN_GAPS = {("low", "flat_333x517.png"), ("low", "astronaut.png")}
RUNTIME_CASES = [pytest.param(level, image, marks=[pytest.mark.xfail(strict=True, reason=TIE_ORDER_GAP)]
                              if (level, image) in KNOWN_GAPS else [])
                 for level in R50_THRESHOLDS for image in R50_IMAGES]


def r50_runtime(r50, level: str) -> Predictor:
    key = f"runtime_{level}"
    if key not in r50:
        onnx_path = export_ort(r50["ckpt"], r50["tmp"] / f"r50_{level}.onnx", R50_THRESHOLDS[level])
        r50[key] = Predictor(onnx_path, threads=1)
    return r50[key]


@pytest.mark.parametrize("level,image", RUNTIME_CASES)
def test_r50_runtime_matches_mmdetection(r50, level, image):
    k = R50_IMAGES.index(image)
    path, ref = r50["images"][k], r50_reference(r50, level)[k]
    assert path.name == image
    ours = r50_runtime(r50, level).predict_maps([path])[0].label_map
    case = f"R-50 mmdet init, score > {R50_THRESHOLDS[level]}, runtime (ONNX Runtime)"
    assert_parity([compare_maps(case, path, ours, ref, r50_predictor(r50, level))])


@pytest.mark.parametrize("level,image", sorted(KNOWN_GAPS))
def test_r50_runtime_tie_order_is_the_stable_one(r50, monkeypatch, level, image):
    """Where the runtime departs from the reference, it is exactly our model run with a stable
    tie order (what ONNX Runtime's TopK and NonMaxSuppression do with equal scores), up to
    float32 decision edges explained as in the parity tests: exact RPN
    score ties (flat regions, and translated copies of the same pattern, e.g. astronaut's black
    background) ordered by index instead of by the reference's unstable sort."""
    path = r50["images"][R50_IMAGES.index(image)]
    runtime_map = r50_runtime(r50, level).predict_maps([path])[0].label_map
    assert (runtime_map != r50_reference(r50, level)[R50_IMAGES.index(image)]).any()  # the gap is there
    use_stable_tie_order(monkeypatch)
    predictor = r50_predictor(r50, level)
    stable_map = predictor.predict_maps([path])[0].label_map
    # identical up to float32 decision edges (the flat image has one, also at the published threshold)
    row = compare_maps("stable-order PyTorch vs runtime", path, runtime_map, stable_map, predictor)
    assert row.ok, row


def use_stable_tie_order(monkeypatch) -> None:
    """Our model with a stable descending sort (ties in index order) instead of the reference's
    unstable one, in the RPN top-k and every NMS."""
    import pfpn.training.model.box_ops as box_ops
    import pfpn.training.model.rpn as rpn

    def stable_descending_order(scores):
        return scores.sort(descending=True, stable=True)[1]

    monkeypatch.setattr(box_ops, "descending_order", stable_descending_order)
    monkeypatch.setattr(rpn, "descending_order", stable_descending_order)


def test_r50_stable_sort_breaks_parity(r50, monkeypatch):
    """The tie-breaking matters: with a stable sort instead of the reference's unstable one, the
    flat image (at score threshold 0.3) no longer matches, so the parity above can fail."""
    flat = r50["tmp"] / "flat_333x517.png"
    ref = reference_maps(r50["site"], r50["ckpt"], [flat], r50["tmp"] / "ref_flat_0.3.npz", score_thr=0.3)[0]
    model, ckpt = load_model(r50["ckpt"])
    config = replace(ckpt.config.model, box_head=replace(ckpt.config.model.box_head, score_threshold=0.3))
    predictor = PanopticPredictor(rebuild_with_config(model, config), config, ckpt.categories)
    assert np.array_equal(predictor.predict_maps([flat])[0].label_map, ref)
    use_stable_tie_order(monkeypatch)
    ours = predictor.predict_maps([flat])[0].label_map
    differing = int((ours != ref).sum())
    assert differing > (1 - MIN_IDENTICAL) * 100 * ours.size, differing  # far outside what parity allows


# ----------------------------------------------------------------------------------------------
# the small config

@pytest.fixture(scope="module")
def small_trained(synthetic_root, tmp_path_factory) -> Path:
    """The small config after 24 iterations of training (its scores are low: the low threshold)."""
    from pfpn.training import train

    work = tmp_path_factory.mktemp("small_trained")
    assert train.main(["--config", "tiny_synthetic", "--data-root", str(synthetic_root), "--work-dir", str(work),
                       "--batch-size", "2", "--epochs", "3", "--max-iters", "24", "--no-progress",
                       "--log-every", "100", "--threads", "1"]) == 0
    return work / "latest.pt"


@pytest.mark.parametrize("which", ["firing_0.6", "trained_0.05"])
def test_small_config_matches_mmdetection(which, tiny_checkpoint, small_trained, synthetic_root, tmp_path,
                                          reference_site):
    source, threshold = (tiny_checkpoint, 0.6) if which == "firing_0.6" else (small_trained, 0.05)
    model, ckpt = load_model(source)
    config = replace(ckpt.config.model, box_head=replace(ckpt.config.model.box_head, score_threshold=threshold))
    mmdet_ckpt = tmp_path / "small.pth"
    save_mmdet_checkpoint(mmdet_ckpt, model, ckpt.categories)
    cfg_file = tmp_path / "small_mmdet_config.py"
    cfg_file.write_text(mmdet_config_text(config, reference_site))
    ds = CocoPanopticDataset(synthetic_root, "val")
    images = [Path(ds.image_info(i)["image_path"]) for i in range(len(ds))]
    refs = reference_maps(reference_site, mmdet_ckpt, images, tmp_path / "ref.npz", config_file=cfg_file)
    predictor = PanopticPredictor(rebuild_with_config(model, config), config, ckpt.categories)
    rows = pytorch_rows(f"small config {which}, PyTorch", predictor, images, refs)
    onnx_path = export_ort(source, tmp_path / "small.onnx", threshold)
    rows += runtime_rows(f"small config {which}, runtime (ONNX Runtime)", onnx_path, predictor, images, refs)
    assert_parity(rows)
    assert max(r.reference_instances for r in rows) >= 3, [r.reference_instances for r in rows]
