"""The real-COCO path on coco_tiny (80 + 80 COCO 2017 images), read from ../shared/data/coco_tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnet.data import CocoData, TestTransform, TrainTransform, unpad_boxes
from tests.data.paths import find_coco_tiny

COCO_TINY = find_coco_tiny() or Path(__file__).parents[2].parent / "shared/data/coco_tiny"

pytestmark = pytest.mark.skipif(
    not COCO_TINY.is_dir(), reason=f"coco_tiny not found at {COCO_TINY} (real-COCO tests need it)"
)


@pytest.fixture(scope="module")
def data() -> CocoData:
    return CocoData(
        str(COCO_TINY), "train2017/images", "train2017/annotations.json", "val2017/images", "val2017/annotations.json"
    )


def _raw(split: str) -> dict:
    return json.loads((COCO_TINY / split / "annotations.json").read_text())


def _usable(ann: dict) -> bool:
    return not ann["iscrowd"] and ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_counts_and_category_mapping_match_the_json(data: CocoData, split: str) -> None:
    raw = _raw(split)
    ds = data.train_dataset(TestTransform()) if split == "train2017" else data.val_dataset(TestTransform())
    assert ds.num_classes == 80 and ds.cat_ids[0] == 1 and ds.cat_ids[-1] == 90  # COCO ids have gaps
    assert ds.label_to_cat_id == sorted(c["id"] for c in raw["categories"])
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in ds.cat_ids)
    assert ds.num_crowd == sum(a["iscrowd"] for a in raw["annotations"]) > 0
    degenerate = sum(not a["iscrowd"] and (a["bbox"][2] < 1 or a["bbox"][3] < 1) for a in raw["annotations"])
    assert ds.num_degenerate == degenerate
    with_boxes = {a["image_id"] for a in raw["annotations"] if _usable(a)}
    expected = with_boxes if split == "train2017" else {im["id"] for im in raw["images"]}
    assert set(ds.ids) == expected


def test_test_transform_excludes_crowd_and_round_trips_boxes(data: CocoData) -> None:
    raw = _raw("val2017")
    ds = data.val_dataset(TestTransform())
    crowd_images = {a["image_id"] for a in raw["annotations"] if a["iscrowd"]}
    for img_id in sorted(crowd_images)[:3]:
        image, gt, meta = ds[ds.ids.index(img_id)]
        info = ds.coco.imgs[img_id]
        assert meta.image_id == img_id and meta.orig_size == (info["height"], info["width"])
        assert image.shape == (3, info["height"] | 127, info["width"] | 127)
        usable = [a for a in raw["annotations"] if a["image_id"] == img_id and _usable(a)]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in usable)])
        assert len(gt) == len(usable)  # the crowd region is not a target
        assert torch.allclose(unpad_boxes(gt.boxes, meta), expected, atol=1e-4)
        assert gt.labels.tolist() == [ds.cat_id_to_label[a["category_id"]] for a in usable]


def test_train_transform_on_real_images(data: CocoData) -> None:
    ds = data.train_dataset(TrainTransform(crop_size=511))
    for index in range(3):
        image, gt, meta = ds[index]
        assert image.shape == (3, 511, 511) and image.dtype == torch.float32 and torch.isfinite(image).all()
        assert meta.input_size == (511, 511) and meta.image_id == ds.ids[index]
        assert len(gt) >= 1 and gt.boxes.min() >= 0 and gt.boxes.max() <= 511
        assert torch.all(gt.boxes[:, 2:] > gt.boxes[:, :2])
        assert gt.labels.min() >= 0 and gt.labels.max() < 80
    ds.set_epoch(1)
    first = ds[0][0]
    assert torch.equal(first, ds[0][0])  # same (seed, epoch, index) -> same augmentation
    ds.set_epoch(2)
    assert not torch.equal(first, ds[0][0])


def test_augmented_real_images_encode_to_corner_targets(data: CocoData) -> None:
    """Load -> 511 crop -> encode: every kept box has both corners on the 128 x 128 map."""
    from cnet.targets import encode_corners
    from cnet.types import Grid

    ds = data.train_dataset(TrainTransform(crop_size=511))
    grid = Grid(511, 511, 128, 128)
    for i in range(4):
        _image, gt, _ = ds[i]
        t = encode_corners([gt], grid, ds.num_classes)
        assert t.tl_heat.shape == (1, 80, 128, 128)
        # one peak per corner (distinct objects may share a corner cell: then fewer)
        assert 0 < t.tl_mask.sum() <= len(gt) and 0 < t.br_mask.sum() <= len(gt)
        assert ((t.tl_off >= 0) & (t.tl_off <= 1)).all()


def test_ground_truth_scored_as_detections_gives_ap_one(data: CocoData) -> None:
    """The real val split through the dataset and back: GT boxes as detections score AP 1.0."""
    from cnet.evaluation import detections_to_coco, evaluate_coco
    from cnet.types import Detections

    ds = data.val_dataset(TestTransform())
    ids, dets = [], []
    for i in range(len(ds)):
        _, gt, meta = ds[i]
        boxes = unpad_boxes(gt.boxes, meta)  # back to original pixels, as the post-processor does
        ids.append(meta.image_id)
        dets.append(Detections(boxes, torch.ones(len(boxes)), gt.labels))
    metrics = evaluate_coco(ds.coco, detections_to_coco(ids, dets, ds.label_to_cat_id))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
