"""Train/test transforms: CornerNet border rule, crop/resize/flip geometry, test padding, unpadding."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from cnet.data.transforms import (
    MEAN_RGB,
    STD_RGB,
    TestTransform,
    TrainTransform,
    corner_border,
    photometric_distort,
)
from cnet.types import ImageMeta, unpad_boxes
from tests.data.legacy_transforms import hsv_to_rgb, rgb_to_hsv  # the reference formulas

MEAN = torch.tensor(MEAN_RGB)[:, None, None]
STD = torch.tensor(STD_RGB)[:, None, None]


def _denormalize(image: torch.Tensor) -> torch.Tensor:
    return image * STD + MEAN


def _scene(h: int, w: int, boxes: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Black image with a white filled rectangle per integer xyxy box."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 255
    return image, np.array(boxes, dtype=np.float32), np.arange(len(boxes), dtype=np.int64)


@pytest.mark.parametrize("size, expected", [(100, 32), (200, 64), (256, 64), (257, 128), (640, 128)])
def test_corner_border_rule(size: int, expected: int) -> None:
    assert corner_border(128, size) == expected


def test_hsv_round_trip_matches_colorsys() -> None:
    rgb = np.random.default_rng(0).uniform(0, 255, (200, 3)).astype(np.float64)
    hsv = rgb_to_hsv(rgb)
    for (r, g, b), (h, s, v) in zip(rgb, hsv):
        ref_h, ref_s, ref_v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert (h, s, v) == pytest.approx((ref_h * 360, ref_s, ref_v * 255), abs=1e-6)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, atol=1e-6)


def test_photometric_distortion_keeps_shape_and_range_and_is_seeded() -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    outs = [photometric_distort(image, np.random.default_rng(k)) for k in range(8)]
    assert all(o.shape == (40, 50, 3) and o.dtype == np.float32 for o in outs)
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    assert sum(not np.allclose(o, image) for o in outs) >= 6  # each of 5 steps fires with p = 0.5
    np.testing.assert_array_equal(outs[3], photometric_distort(image, np.random.default_rng(3)))


@pytest.mark.parametrize("flip", [False, True])
def test_train_boxes_follow_the_painted_pixels(flip: bool) -> None:
    # a white rectangle must land exactly where its transformed GT box says, flipped or not
    image, boxes, labels = _scene(300, 400, [[150, 100, 250, 180]])
    transform = TrainTransform(crop_size=255, ratios=(0.8, 1.2), flip_prob=float(flip), photometric=False)
    for seed in range(6):
        out, gt, meta = transform(image, boxes, labels, np.random.default_rng(seed))
        assert out.shape == (3, 255, 255) and meta.input_size == (255, 255) and meta.orig_size == (300, 400)
        assert len(gt) == 1 and gt.labels.tolist() == [0]
        bright = _denormalize(out).mean(0) > 127.5
        ys, xs = torch.nonzero(bright, as_tuple=True)
        painted = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(gt.boxes[0], painted, atol=1.0)
        if not flip:  # the meta maps input pixels back to the image (exact up to resize rounding)
            back = (gt.boxes[0] - torch.tensor(meta.border[::-1] * 2)) / meta.scale
            assert torch.allclose(back, torch.from_numpy(boxes[0]), atol=1e-3)


def test_flip_maps_known_box() -> None:
    image, boxes, labels = _scene(255, 255, [[20, 30, 100, 90], [120, 140, 200, 250]])
    kwargs = dict(crop_size=255, ratios=(1.0,), photometric=False)
    plain = TrainTransform(flip_prob=0.0, **kwargs)(image, boxes, labels, np.random.default_rng(7))
    flipped = TrainTransform(flip_prob=1.0, **kwargs)(image, boxes, labels, np.random.default_rng(7))
    x0, y0, x1, y1 = plain[1].boxes.unbind(1)
    assert torch.allclose(flipped[1].boxes, torch.stack([255 - x1, y0, 255 - x0, y1], 1))
    assert torch.equal(flipped[0], plain[0].flip(-1))


def test_train_output_boxes_inside_canvas_for_many_shapes() -> None:
    rng = np.random.default_rng(0)
    transform = TrainTransform(crop_size=127)
    for h, w in [(120, 120), (427, 640), (640, 300), (60, 90)]:
        x0, y0 = rng.uniform(0, w - 10, 12), rng.uniform(0, h - 10, 12)
        x1, y1 = np.minimum(x0 + rng.uniform(2, 80, 12), w), np.minimum(y0 + rng.uniform(2, 80, 12), h)
        boxes = np.stack([x0, y0, x1, y1], 1)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for seed in range(5):
            out, gt, _meta = transform(image, boxes.astype(np.float32), np.arange(12), np.random.default_rng(seed))
            assert out.shape == (3, 127, 127) and out.dtype == torch.float32
            assert 1 <= len(gt) <= 12 and gt.boxes.dtype == torch.float32 and gt.labels.dtype == torch.int64
            assert gt.boxes.min() >= 0 and gt.boxes.max() <= 127
            assert torch.all(gt.boxes[:, 2] > gt.boxes[:, 0]) and torch.all(gt.boxes[:, 3] > gt.boxes[:, 1])
        again = transform(image, boxes.astype(np.float32), np.arange(12), np.random.default_rng(4))
        assert torch.equal(again[0], out) and torch.equal(again[1].boxes, gt.boxes)  # seeded by rng only


def test_train_without_gt_and_mean_fill() -> None:
    image = np.full((50, 60, 3), 200, dtype=np.uint8)
    transform = TrainTransform(crop_size=127, ratios=(1.0,), photometric=False)
    out, gt, _ = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.random.default_rng(0))
    assert out.shape == (3, 127, 127) and len(gt) == 0 and gt.boxes.shape == (0, 4)
    # a 127 canvas around a 50 x 60 image: the rest is the mean pixel, i.e. exactly 0 once normalized
    assert (out.abs().sum(0) == 0).sum() >= 127 * 127 - 50 * 60
    assert torch.allclose(_denormalize(out).amax((1, 2)), torch.full((3,), 200.0), atol=1e-3)


def test_crop_keeps_only_boxes_whose_centre_is_inside() -> None:
    # centres 300 px apart: a 127 crop never holds both, and the border band (128) reaches each
    image, boxes, labels = _scene(120, 700, [[180, 40, 220, 80], [480, 40, 520, 80]])
    transform = TrainTransform(crop_size=127, ratios=(1.0,), photometric=False, flip_prob=0.0)
    seen = set()
    for seed in range(30):
        _, gt, _ = transform(image, boxes, labels, np.random.default_rng(seed))
        assert len(gt) == 1
        seen.add(int(gt.labels[0]))
    assert seen == {0, 1}


@pytest.mark.parametrize("h, w, in_h, in_w", [(120, 120, 127, 127), (427, 640, 511, 767), (480, 512, 511, 639)])
def test_test_transform_pads_with_logical_or(h: int, w: int, in_h: int, in_w: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, w, h], [10.5, 20.25, 30, 40]], dtype=np.float32)
    out, gt, meta = TestTransform()(image, boxes, np.array([3, 1]), None)
    assert out.shape == (3, in_h, in_w) and meta.input_size == (in_h, in_w) and meta.scale == 1.0
    top, left = meta.border
    assert top == in_h // 2 - h // 2 and left == in_w // 2 - w // 2  # image centre at input centre
    inner = out[:, int(top) : int(top) + h, int(left) : int(left) + w]
    assert torch.allclose(_denormalize(inner), torch.from_numpy(image).permute(2, 0, 1).float(), atol=1e-3)
    assert out.abs().sum() == pytest.approx(inner.abs().sum().item(), rel=1e-6)  # padding is exactly 0
    assert torch.equal(gt.boxes[0], torch.tensor([left, top, left + w, top + h]))
    assert torch.allclose(unpad_boxes(gt.boxes, meta), torch.from_numpy(boxes))
    assert gt.labels.tolist() == [3, 1]


def test_unpad_boxes_inverts_scale_and_border_and_clips() -> None:
    meta = ImageMeta(image_id=1, orig_size=(50, 80), input_size=(127, 255), border=(10.0, 20.0), scale=2.0)
    boxes = torch.tensor([[20.0, 10.0, 60.0, 30.0], [0.0, 0.0, 255.0, 127.0]])
    expected = torch.tensor([[0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 80.0, 50.0]])
    assert torch.equal(unpad_boxes(boxes, meta), expected)
