"""CocoDetection / CocoData / SyntheticData on hand-written COCO files, plus collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnet.data import CocoData, CocoDetection, SyntheticData, collate
from cnet.types import GroundTruth, ImageMeta

CATEGORIES = [{"id": 3, "name": "c"}, {"id": 11, "name": "k"}, {"id": 7, "name": "g"}]


def identity(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Raw image as float [3, H, W], boxes untouched; records one rng draw in the meta scale."""
    h, w = image.shape[:2]
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    meta = ImageMeta(-1, (h, w), (h, w), scale=rng.random())
    return tensor, GroundTruth(torch.from_numpy(boxes), torch.from_numpy(labels)), meta


def _write_dataset(root: Path) -> None:
    """3 images: #1 with a normal box, a crowd region and a degenerate box; #2 crowd-only; #5 two boxes."""
    (root / "imgs").mkdir(parents=True)
    for name, (h, w) in {"a.png": (40, 50), "b.png": (30, 30), "c.png": (60, 40)}.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "imgs" / name)
    crowd_rle = {"counts": [203, 6, 34, 6, 1751], "size": [40, 50]}  # column-major runs, sum = 40 * 50
    anns = [
        {"id": 1, "image_id": 1, "category_id": 11, "bbox": [5.5, 6, 10, 20], "area": 200, "iscrowd": 0},
        {
            "id": 2,
            "image_id": 1,
            "category_id": 3,
            "bbox": [5, 3, 2, 6],
            "area": 12,
            "iscrowd": 1,
            "segmentation": crowd_rle,
        },
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [20, 20, 0.5, 8], "area": 4, "iscrowd": 0},
        {
            "id": 4,
            "image_id": 2,
            "category_id": 3,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 1,
            "segmentation": {"counts": [0, 10, 20] * 10 + [600], "size": [30, 30]},
        },
        {"id": 5, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
        {"id": 6, "image_id": 5, "category_id": 3, "bbox": [10, 20, 30, 35], "area": 1050, "iscrowd": 0},
    ]
    images = [
        {"id": 1, "file_name": "a.png", "height": 40, "width": 50},
        {"id": 2, "file_name": "b.png", "height": 30, "width": 30},
        {"id": 5, "file_name": "c.png", "height": 60, "width": 40},
    ]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    _write_dataset(tmp_path)
    return tmp_path


def test_category_mapping_is_sorted_and_round_trips(root: Path) -> None:
    ds = CocoDetection(root / "imgs", root / "ann.json", identity)
    assert ds.cat_ids == [3, 7, 11] and ds.num_classes == 3
    assert ds.cat_id_to_label == {3: 0, 7: 1, 11: 2}
    assert [ds.label_to_cat_id[ds.cat_id_to_label[c]] for c in (3, 7, 11)] == [3, 7, 11]
    assert ds.ann_file == root / "ann.json" and len(ds.coco.getImgIds()) == 3


def test_the_first_images_are_a_split_of_their_own(root: Path) -> None:
    ds = CocoDetection(root / "imgs", root / "ann.json", identity)
    sub = ds.first(2)
    assert sub.ids == ds.ids[:2] and len(sub) == 2 and ds.first(0) is ds and ds.first(9) is ds
    assert sorted(sub.coco.getImgIds()) == sorted(ds.ids[:2])  # COCOeval scores these only
    assert {a["image_id"] for a in sub.coco.dataset["annotations"]} <= set(ds.ids[:2])
    assert len(sub.coco.getAnnIds()) == sum(len(ds.coco.getAnnIds(imgIds=[i])) for i in ds.ids[:2])
    assert len(ds.coco.getImgIds()) == 3 and len(ds) == 3  # the split itself is unchanged
    assert [sub[k][1].boxes.tolist() for k in range(2)] == [ds[k][1].boxes.tolist() for k in range(2)]


def test_targets_drop_crowd_and_degenerate_and_convert_to_xyxy(root: Path) -> None:
    ds = CocoDetection(root / "imgs", root / "ann.json", identity)
    assert ds.num_crowd == 2 and ds.num_degenerate == 1
    assert ds.ids == [1, 2, 5]
    image, gt, meta = ds[0]
    assert image.shape == (3, 40, 50) and meta.image_id == 1 and meta.orig_size == (40, 50)
    assert gt.boxes.dtype == torch.float32 and gt.labels.dtype == torch.int64
    assert gt.boxes.tolist() == [[5.5, 6.0, 15.5, 26.0]] and gt.labels.tolist() == [2]  # cat 11 -> label 2
    _, gt, meta = ds[1]
    assert meta.image_id == 2 and len(gt) == 0 and gt.boxes.shape == (0, 4)
    _, gt, meta = ds[2]
    assert meta.image_id == 5 and gt.labels.tolist() == [1, 0]
    assert gt.boxes.tolist() == [[1.0, 2.0, 4.0, 6.0], [10.0, 20.0, 40.0, 55.0]]


def test_filter_empty_drops_images_without_usable_boxes(root: Path) -> None:
    ds = CocoDetection(root / "imgs", root / "ann.json", identity, filter_empty=True)
    assert ds.ids == [1, 5] and len(ds) == 2 and ds[1][2].image_id == 5


def test_rng_depends_on_seed_epoch_and_index_only(root: Path) -> None:
    ds = CocoDetection(root / "imgs", root / "ann.json", identity, seed=4)
    draw = lambda i: ds[i][2].scale  # noqa: E731 -- the identity transform's one rng draw
    assert draw(0) == draw(0) == np.random.default_rng([4, 0, 0]).random()
    ds.set_epoch(3)
    assert draw(2) == np.random.default_rng([4, 3, 2]).random() != draw(1)


def test_missing_annotation_file_and_image_folder_name_the_path(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*data\.root="):
        CocoDetection(root / "imgs", root / "nope.json", identity)
    with pytest.raises(FileNotFoundError, match=r"missing_imgs.*data\.root="):
        CocoDetection(root / "missing_imgs", root / "ann.json", identity)


def test_corrupt_or_missing_image_names_the_file(root: Path) -> None:
    (root / "imgs" / "a.png").write_bytes(b"this is not a png")
    ds = CocoDetection(root / "imgs", root / "ann.json", identity)
    with pytest.raises(OSError, match=r"a\.png"):
        ds[0]
    (root / "imgs" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.png"):
        ds[2]


def test_unknown_category_is_a_clear_error(root: Path) -> None:
    data = json.loads((root / "ann.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (root / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json.*99"):
        CocoDetection(root / "imgs", root / "bad.json", identity)


def test_coco_data_resolves_paths_and_checks_root(root: Path, tmp_path: Path) -> None:
    data = CocoData(str(root), "imgs", "ann.json", str(root / "imgs"), str(root / "ann.json"))
    assert len(data.train_dataset(identity)) == 2  # filter_empty_train by default
    assert len(data.val_dataset(identity)) == 3
    with pytest.raises(FileNotFoundError, match=r"data\.root=/no/such/dir does not exist"):
        CocoData("/no/such/dir", "imgs", "ann.json", "imgs", "ann.json")
    with pytest.raises(FileNotFoundError, match=r"val\.json.*data\.root=.*expects imgs/, ann\.json"):
        CocoData(str(root), "imgs", "ann.json", "imgs", "val.json")


def test_synthetic_data_splits(tmp_path: Path) -> None:
    kwargs = dict(cache_dir=str(tmp_path), seed=2, num_train=4, num_val=3, num_val_crowd=2, image_size=64)
    val = SyntheticData(**kwargs).val_dataset(identity)
    crowd = SyntheticData(**kwargs, val_split="val_crowd").val_dataset(identity)
    assert len(val) == 3 and len(crowd) == 2 and val.cat_ids == [2, 5, 9, 17]
    assert {im["scene"] for im in crowd.coco.imgs.values()} == {"lookalike_crowd"}
    image, gt, meta = crowd[0]
    assert image.shape == (3, 64, 64) and len(gt) >= 6 and meta.image_id in crowd.coco.imgs
    with pytest.raises(ValueError, match=r"val_split.*'val', 'val_crowd'"):
        SyntheticData(**kwargs, val_split="test")


def test_collate_pads_bottom_right_with_zeros() -> None:
    a = torch.ones(3, 4, 6)
    b = torch.full((3, 5, 2), 2.0)
    metas = [ImageMeta(1, (4, 6), (4, 6)), ImageMeta(2, (5, 2), (5, 2))]
    gts = [GroundTruth.empty(), GroundTruth(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1]))]
    images, targets, out_metas = collate(list(zip([a, b], gts, metas)))
    assert images.shape == (2, 3, 5, 6)
    assert torch.equal(images[0, :, :4, :], a) and images[0, :, 4:].abs().sum() == 0
    assert torch.equal(images[1, :, :, :2], b) and images[1, :, :, 2:].abs().sum() == 0
    assert targets == gts and out_metas == metas
