"""The fast TrainTransform (#14) against the pre-#14 one (tests/data/legacy_transforms.py).

For one rng seed both must consume the same draws and give the same crop, boxes, labels, masks,
meta and flip; pixels may differ only by resampling/rounding:

- photometric HSV steps (OpenCV float32 vs the numpy formula): <= 1e-3 grey levels;
- resize (cv2.resize vs F.interpolate, same half-pixel bilinear rule): F.interpolate computes the
  source coordinate in float32 (ulp ~6e-5 px at 664 px), so a bilinear weight moves by ~1e-4 and
  a pixel by at most ~1e-4 x 255 ~ 0.03 grey levels next to a 0 -> 255 edge.

Tolerance: 0.05 grey levels (0..255 units; about 9e-4 after normalisation), twice that bound and
far below anything a changed decision causes (a different crop, flip, jitter or channel order moves
pixels by tens of grey levels). Measured on coco_tiny (all 160 images x epochs 0, 1 at crop 511):
max 0.0136 grey levels (2.3e-4 normalised).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cnet.data import CocoData, TrainTransform
from cnet.data.transforms import STD_RGB
from tests.data.legacy_transforms import LegacyTrainTransform
from tests.data.paths import find_coco_tiny

TOL_GREY = 0.05
STD = torch.tensor(STD_RGB)[:, None, None]
COCO_TINY = find_coco_tiny()


def _compare(new: TrainTransform, old: LegacyTrainTransform, image, boxes, labels, seed, masks=None) -> float:
    """Run both on the same seed; assert everything but the pixels is identical; return the max
    pixel difference in grey levels."""
    rng_new, rng_old = np.random.default_rng(seed), np.random.default_rng(seed)
    kwargs = {} if masks is None else {"masks": masks}
    a, gt_a, meta_a = new(image, boxes.copy(), labels.copy(), rng_new, **kwargs)
    b, gt_b, meta_b = old(image, boxes.copy(), labels.copy(), rng_old, **kwargs)
    assert rng_new.random() == rng_old.random(), "a different number of rng draws"
    assert meta_a == meta_b
    assert torch.equal(gt_a.boxes, gt_b.boxes) and torch.equal(gt_a.labels, gt_b.labels)
    assert (gt_a.masks is None) == (gt_b.masks is None)
    if gt_a.masks is not None:
        assert torch.equal(gt_a.masks, gt_b.masks)
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32 and a.is_contiguous()
    return ((a - b).abs() * STD).max().item()


def _random_scene(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, ...]:
    """Smooth gradients plus noise (sharp edges) and n random boxes with matching rectangle masks."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    image = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    x0, y0 = rng.uniform(0, w - 4, n), rng.uniform(0, h - 4, n)
    x1, y1 = np.minimum(x0 + rng.uniform(2, w / 2, n), w), np.minimum(y0 + rng.uniform(2, h / 2, n), h)
    boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    masks = np.zeros((n, h, w), dtype=bool)
    for k, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[k, b:d, a:c] = True
    return image, boxes, np.arange(n, dtype=np.int64) % 7, masks


@pytest.mark.parametrize("crop_size", [127, 511])
@pytest.mark.parametrize("photometric", [True, False])
def test_same_decisions_and_pixels_on_random_scenes(crop_size: int, photometric: bool) -> None:
    new = TrainTransform(crop_size=crop_size, photometric=photometric)
    old = LegacyTrainTransform(crop_size=crop_size, photometric=photometric)
    rng = np.random.default_rng(crop_size)
    worst = 0.0
    for k, (h, w) in enumerate([(480, 640), (640, 427), (120, 90), (300, 300), (50, 700)]):
        image, boxes, labels, masks = _random_scene(rng, h, w, 6)
        for seed in range(4):
            worst = max(worst, _compare(new, old, image, boxes, labels, [k, seed], masks if seed % 2 else None))
    assert worst <= TOL_GREY


def test_bit_identical_without_jitter_and_resize() -> None:
    # no photometric step, canvas side == crop size: crop, fill, flip, normalise are exact copies
    new = TrainTransform(crop_size=255, ratios=(1.0,), photometric=False)
    old = LegacyTrainTransform(crop_size=255, ratios=(1.0,), photometric=False)
    image, boxes, labels, _ = _random_scene(np.random.default_rng(3), 300, 400, 5)
    for seed in range(8):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert torch.equal(new(image, boxes, labels, rng_a)[0], old(image, boxes, labels, rng_b)[0])


@pytest.mark.skipif(COCO_TINY is None, reason="coco_tiny not found (../shared/data/coco_tiny or CNET_COCO_TINY)")
@pytest.mark.parametrize(
    "per_split, epochs",
    [pytest.param(8, (0, 1), id="fast"), pytest.param(None, (0, 1), id="all", marks=pytest.mark.slow)],
)
def test_same_decisions_and_pixels_on_coco_tiny(per_split: int | None, epochs: tuple[int, ...]) -> None:
    data = CocoData(
        str(COCO_TINY), "train2017/images", "train2017/annotations.json", "val2017/images", "val2017/annotations.json"
    )
    new, old = TrainTransform(crop_size=511), LegacyTrainTransform(crop_size=511)
    worst = 0.0
    for ds in (data.train_dataset(new), data.val_dataset(new)):
        for i in range(len(ds) if per_split is None else per_split):
            image = ds.load_image(i)
            boxes, labels = ds._targets[ds.ids[i]]
            masks = ds.load_masks(ds.ids[i], image.shape[:2]) if i % 4 == 0 else None
            for epoch in epochs:
                worst = max(worst, _compare(new, old, image, boxes, labels, [ds.seed, epoch, i], masks))
    assert worst <= TOL_GREY


def test_outputs_never_alias_the_work_buffers_and_threads_get_their_own() -> None:
    tf = TrainTransform(crop_size=127)
    rng = np.random.default_rng(5)
    scenes = [_random_scene(rng, h, w, 4) for h, w in [(200, 150), (90, 300), (160, 160), (240, 100)] * 2]

    def run(k: int) -> torch.Tensor:
        image, boxes, labels, _ = scenes[k]
        return tf(image, boxes, labels, np.random.default_rng(k))[0]

    sequential, kept = [], []
    for k in range(len(scenes)):
        sequential.append(run(k))
        kept.append(sequential[-1].clone())  # a copy taken before the next call
    assert all(torch.equal(a, b) for a, b in zip(sequential, kept))  # later calls did not overwrite
    with ThreadPoolExecutor(max_workers=2) as pool:  # OpenCV releases the GIL: the threads overlap
        threaded = list(pool.map(run, range(len(scenes))))
    assert all(torch.equal(a, b) for a, b in zip(threaded, kept))


def test_survives_the_dataloader_pickling_to_spawned_workers() -> None:
    # torch's ForkingPickler moves tensor storage to shared memory (as for a spawned DataLoader
    # worker): numpy views of the mean/std tensors would dangle in both copies
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing

    image, boxes, labels, _ = _random_scene(np.random.default_rng(6), 150, 200, 3)
    expected = TrainTransform(crop_size=63)(image, boxes, labels, np.random.default_rng(1))[0]
    tf = TrainTransform(crop_size=63)
    clone = pickle.loads(ForkingPickler.dumps(tf))
    for t in (tf, clone):
        assert torch.equal(t(image, boxes, labels, np.random.default_rng(1))[0], expected)
