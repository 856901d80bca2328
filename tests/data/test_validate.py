"""Bad annotation data: each input gives a one-line DataError naming file + item, or counts (issue #12).

The pure checks run on dicts (:func:`validate_coco`); what needs files (JSON parsing, image files,
non-ASCII names, evaluation of the result) goes through ``CocoDetection`` on a tmp folder.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from cnet.data import CocoData, CocoDetection, TestTransform
from cnet.data.validate import AnnotationCounts, validate_coco
from cnet.errors import USER_ERRORS, DataError
from cnet.evaluation import evaluate_coco
from cnet.evaluation.mispair import classify_results, mispair_figures
from cnet.types import GroundTruth, ImageMeta

SRC = "/data/ann.json"  # the file name the messages must carry
SIZES = {"a.png": (40, 50), "b.png": (30, 30)}  # file -> (h, w)


def ann(id: int, image_id: int = 1, category_id: int = 3, bbox: Any = (5, 6, 10, 20), **extra: Any) -> dict:
    """One annotation (``extra`` overrides, e.g. ``iscrowd=1``)."""
    base = {"id": id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "area": 1.0}
    return base | {"iscrowd": 0} | extra


def coco(*anns: dict, categories: tuple[int, ...] = (3, 7)) -> dict[str, Any]:
    """Image 1 is 50 wide x 40 high, image 2 30 x 30."""
    images = [
        {"id": k, "file_name": name, "height": h, "width": w} for k, (name, (h, w)) in enumerate(SIZES.items(), 1)
    ]
    return {"images": images, "annotations": list(anns), "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def write(root: Path, data: dict[str, Any] | str, name: str = "ann.json", images: bool = True) -> Path:
    """``data`` as ``root/name`` (a str is written as is) and, with ``images``, every listed image
    under ``root/imgs``."""
    (root / "imgs").mkdir(exist_ok=True)
    for im in data["images"] if isinstance(data, dict) and images else []:
        Image.fromarray(np.full((im["height"], im["width"], 3), 80, np.uint8)).save(root / "imgs" / im["file_name"])
    (root / name).write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), "utf-8")
    return root / name


def identity(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """The raw image as float [3, H, W], the boxes untouched."""
    h, w = image.shape[:2]
    gt = GroundTruth(torch.from_numpy(boxes), torch.from_numpy(labels))
    return torch.from_numpy(image).permute(2, 0, 1).float(), gt, ImageMeta(-1, (h, w), (h, w))


def error(data: dict[str, Any], for_training: bool = False) -> str:
    """The one-line DataError message of ``validate_coco(data)``."""
    with pytest.raises(DataError) as err:
        validate_coco(data, SRC, for_training)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_box_partly_outside_is_clipped_and_counted() -> None:
    data = coco(ann(1, bbox=[-5, 30, 20, 20]), ann(2, bbox=[0, 0, 50, 40]))  # image 1: 50 x 40
    before = copy.deepcopy(data)
    out, counts = validate_coco(data, SRC)
    assert out["annotations"][0]["bbox"] == [0.0, 30.0, 15.0, 10.0]  # [-5, 15] x [30, 50] -> the image
    assert out["annotations"][1] is data["annotations"][1]  # touching the border is inside: untouched
    assert (counts.clipped, counts.kept, counts.dropped) == (1, 2, 0)
    assert data == before  # the input dict is not modified


def test_box_wholly_outside_is_dropped_and_counted() -> None:
    data = coco(ann(1, bbox=[50, 5, 10, 10]), ann(2, bbox=[-20, 0, 10, 10]), ann(3, bbox=[1, 41, 5, 5]), ann(4))
    out, counts = validate_coco(data, SRC)
    assert [a["id"] for a in out["annotations"]] == [4]
    assert (counts.outside, counts.clipped, counts.kept) == (3, 0, 1)


def test_zero_or_negative_size_is_dropped_and_under_one_pixel_is_not_a_target(tmp_path: Path) -> None:
    data = coco(ann(1, bbox=[5, 5, 0, 10]), ann(2, bbox=[5, 5, 10, -3]), ann(3, bbox=[5, 5, 0.5, 8]), ann(4))
    out, counts = validate_coco(data, SRC)
    assert [a["id"] for a in out["annotations"]] == [3, 4]  # the sub-pixel box stays for COCOeval
    assert (counts.nonpositive, counts.degenerate, counts.kept) == (2, 1, 1)
    ds = CocoDetection(tmp_path / "imgs", write(tmp_path, data), identity)
    assert ds.num_degenerate == 1 and ds.counts == counts
    assert ds[0][1].boxes.tolist() == [[5.0, 6.0, 15.0, 26.0]]  # only annotation 4 is a target


def test_annotation_of_unknown_image_is_dropped_with_one_counted_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A counted warning, not an error: COCOeval and the targets only read listed images, so such
    annotations can never count (subsets cut by image keep them); a train file whose boxes are all
    orphans still fails (nothing to train on)."""
    data = coco(ann(1, image_id=99), ann(2, image_id=99), ann(3))
    out, counts = validate_coco(data, SRC)
    assert [a["id"] for a in out["annotations"]] == [3] and (counts.orphan, counts.kept) == (2, 1)
    file = write(tmp_path, data)
    with caplog.at_level(logging.INFO, logger="cnet.data.validate"):
        CocoDetection(tmp_path / "imgs", file, identity)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"{file}: 2 images, 3 annotations: 1 boxes kept, 2 dropped: image_id not in 'images', "
            "1 images without a box",
        )
    ]
    assert "image_id not in 'images'" in error(coco(ann(1, image_id=99)), for_training=True)


def test_duplicate_image_id_is_one_line_error() -> None:
    data = coco(ann(1))
    data["images"][1]["id"] = 1
    assert error(data) == (
        f"{SRC}: image id 1 appears twice in 'images' (entries 0 and 1); give each image a unique id"
    )


def test_duplicate_annotation_and_category_ids_are_one_line_errors() -> None:
    assert error(coco(ann(1), ann(5), ann(5, image_id=2))) == (
        f"{SRC}: annotation id 5 appears twice in 'annotations' (entries 1 and 2); give each annotation a unique id"
    )
    assert "category id 3 appears twice in 'categories'" in error(coco(ann(1), categories=(3, 7, 3)))


def test_category_id_zero_works_with_contiguous_labels(tmp_path: Path) -> None:
    data = coco(ann(1, category_id=0), ann(2, category_id=5, bbox=[1, 1, 20, 20]), categories=(5, 0, 2))
    ds = CocoDetection(tmp_path / "imgs", write(tmp_path, data), identity)
    assert ds.cat_ids == [0, 2, 5] and ds.cat_id_to_label == {0: 0, 2: 1, 5: 2}
    gt = ds[0][1]
    assert gt.labels.tolist() == [0, 2]  # category 0 is label 0, not "no category"
    results = [
        {"image_id": 1, "category_id": ds.label_to_cat_id[int(lab)], "bbox": a["bbox"], "score": 0.9}
        for lab, a in zip(gt.labels, ds.coco.imgToAnns[1])
    ]
    assert evaluate_coco(ds.coco, results)["AP"] == pytest.approx(1.0)


def test_unknown_category_is_one_line_error() -> None:
    assert error(coco(ann(1), ann(2, category_id=99), ann(3, category_id=99))) == (
        f"{SRC}: annotation id 2 has category_id 99, which is not in 'categories' (2 annotation(s) in all); "
        "add the category or remove the annotations"
    )


def test_train_split_without_annotations_is_one_line_error(tmp_path: Path) -> None:
    assert error(coco(), for_training=True) == (
        f"{SRC}: no annotations, so nothing to train on; use an annotation file with boxes"
    )
    info = {k: v for k, v in coco().items() if k != "annotations"}
    assert error(info, for_training=True) == (
        f"{SRC}: no 'annotations' list, so nothing to train on; use a COCO instances file"
    )
    crowd_only = coco(ann(1, iscrowd=1), ann(2, bbox=[5, 5, 0, 0]))
    assert error(crowd_only, for_training=True) == (
        f"{SRC}: no usable box (2 images, 2 annotations: 0 boxes kept, 1 crowd regions (not targets), "
        "1 dropped: zero or negative width/height, 2 images without a box), so nothing to train on; "
        "use an annotation file with boxes"
    )
    write(tmp_path, coco())
    data = CocoData(str(tmp_path), "imgs", "ann.json", "imgs", "ann.json")
    with pytest.raises(DataError, match=r"ann\.json: no annotations, so nothing to train on"):
        data.train_dataset(identity)
    assert isinstance(DataError("x"), USER_ERRORS) and isinstance(DataError("x"), ValueError)  # train.py: one line


def test_val_split_without_annotations_warns_and_scores_minus_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = write(tmp_path, coco())
    with caplog.at_level(logging.WARNING, logger="cnet.data.validate"):
        ds = CocoData(str(tmp_path), "imgs", "ann.json", "imgs", "ann.json").val_dataset(identity)
    assert [r.getMessage() for r in caplog.records] == [
        f"{file}: 2 images, no annotations: every COCO figure of this split will be -1 (absent)"
    ]
    assert len(ds) == 2 and ds.counts.annotations == 0
    # what cnet.evaluator.evaluate runs on a split: COCOeval, then the mispair figures
    results = [{"image_id": 1, "category_id": 3, "bbox": [1.0, 1.0, 9.0, 9.0], "score": 0.9}]
    figures = evaluate_coco(ds.coco, results)
    assert set(figures.values()) == {-1.0}
    records = classify_results(ds.coco, results)
    assert records[0]["error"] == "background"
    assert mispair_figures(ds.coco, results, records, ap_before=figures["AP"])["dAP_mispair"] == 0.0
    # an image-info file (COCO test-dev: no 'annotations' key) is an evaluation split too
    info = write(tmp_path, {k: v for k, v in coco().items() if k != "annotations"}, "info.json")
    ds = CocoDetection(tmp_path / "imgs", info, identity)
    assert not ds.counts.has_annotations and "annotations" not in ds.coco.dataset and len(ds) == 2


def test_val_image_without_objects_is_kept_and_its_detections_are_false_positives(tmp_path: Path) -> None:
    ds = CocoDetection(tmp_path / "imgs", write(tmp_path, coco(ann(1))), identity)  # image 2: no object
    assert ds.ids == [1, 2] and len(ds[1][1]) == 0 and ds.counts.empty_images == 1
    hit = {"image_id": 1, "category_id": 3, "bbox": [5, 6, 10, 20], "score": 0.5}
    assert evaluate_coco(ds.coco, [hit])["AP"] == pytest.approx(1.0)
    false_positive = {"image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10], "score": 0.9}
    assert evaluate_coco(ds.coco, [hit, false_positive])["AP"] < 0.6  # ranked first, it halves precision


def test_non_ascii_file_names_load(tmp_path: Path) -> None:
    data = coco(ann(1), ann(2, image_id=2, bbox=[1, 1, 5, 5]))
    data["images"][0]["file_name"] = "café_ß.png"
    data["images"][1]["file_name"] = "猫の写真.png"
    ds = CocoDetection(tmp_path / "imgs", write(tmp_path, data), identity)
    assert (tmp_path / "imgs" / "猫の写真.png").is_file()
    assert ds[0][0].shape == (3, 40, 50) and ds[1][0].shape == (3, 30, 30)
    assert ds.coco.imgs[2]["file_name"] == "猫の写真.png"


def test_missing_image_file_is_one_line_error_naming_file_and_id(tmp_path: Path) -> None:
    file = write(tmp_path, coco(ann(1), ann(2, image_id=2)))
    (tmp_path / "imgs" / "b.png").unlink()
    with pytest.raises(DataError) as err:
        CocoDetection(tmp_path / "imgs", file, identity)
    assert str(err.value) == (
        f"{tmp_path}/imgs/b.png: image id 2 listed in {file} is missing; put the images in {tmp_path}/imgs "
        "or fix data.root"
    )
    (tmp_path / "imgs" / "a.png").unlink()
    with pytest.raises(DataError, match=r"imgs/a\.png: image id 1 .* \(2 of 2 images are missing\)"):
        CocoDetection(tmp_path / "imgs", file, identity)
    assert len(CocoDetection(tmp_path / "imgs", file, identity, check_images=False)) == 2  # e.g. predict --ann


def _set(where: str, k: int, key: str, value: Any) -> dict[str, Any]:
    data = coco(ann(1), ann(2))
    data[where][k][key] = value
    return data


def _drop(key: str, where: str = "") -> dict[str, Any]:
    data = coco(ann(1), ann(2))
    if where:
        del data[where][1][key]
    else:
        del data[key]
    return data


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [', "ann.json: not valid JSON (Expecting value at line 1, column 13); re-export or re-download"),
        ("[1, 2]", "ann.json: the top level is a JSON list, not an object with 'images', 'annotations' and"),
        (_drop("images"), "ann.json: no 'images' key; a COCO instances file has 'images', 'annotations' and"),
        (_drop("categories"), "ann.json: no 'categories' key; a COCO instances file has"),
        (_drop("bbox", "annotations"), "ann.json: 'annotations'[1] (id 2) has no 'bbox'; add the box as [x, y,"),
        (_drop("category_id", "annotations"), "ann.json: 'annotations'[1] (id 2) has no 'category_id'"),
        (_drop("file_name", "images"), "ann.json: 'images'[1] (id 2) has no 'file_name'; add the image's file"),
        (_drop("width", "images"), "ann.json: 'images'[1] (id 2) has no 'width'; give the image size in pixels"),
        (coco(ann(1), ann(2, bbox=[1, 2, 3])), "ann.json: 'annotations'[1] (id 2) has bbox [1, 2, 3]; a bbox is"),
        (coco(ann(1, bbox=[1, "2", 3, 4])), "ann.json: 'annotations'[0] (id 1) has bbox [1, '2', 3, 4]; a bbox"),
        ({**coco(), "annotations": {}}, "ann.json: 'annotations' is a JSON dict, not a list; fix the file"),
        (_set("images", 0, "height", 0), "ann.json: 'images'[0] (id 1) has height 0; give the image size in"),
        (_set("annotations", 1, "id", None), "ann.json: 'annotations'[1] has id None; annotation ids are numbers"),
    ],
)
def test_malformed_json_or_missing_key_is_one_line_error_naming_file_and_key(
    tmp_path: Path, content: Any, message: str
) -> None:
    write(tmp_path, coco())  # the images
    file = write(tmp_path, content, images=False)
    with pytest.raises(DataError) as err:
        CocoDetection(tmp_path / "imgs", file, identity, for_training=True)
    assert str(err.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(err.value)


def test_missing_iscrowd_and_area_are_filled_so_cocoeval_runs() -> None:
    data = coco(ann(1), ann(2, bbox=[-4, 0, 10, 10]))
    del data["annotations"][0]["iscrowd"], data["annotations"][1]["area"]
    out, counts = validate_coco(data, SRC)
    assert counts.filled == 2 and counts.clipped == 1
    assert out["annotations"][0]["iscrowd"] == 0 and out["annotations"][1]["area"] == 60.0  # clipped 6 x 10
    gt = COCO()  # without the defaults COCOeval raises KeyError('iscrowd')
    gt.dataset = out
    gt.createIndex()
    hits = [{"image_id": 1, "category_id": 3, "bbox": box, "score": 1} for box in ([5, 6, 10, 20], [0, 0, 6, 10])]
    assert evaluate_coco(gt, hits)["AP"] == pytest.approx(1.0)  # the ground truth is the clipped box


def test_every_annotation_lands_in_exactly_one_bucket() -> None:
    anns = [
        ann(1),
        ann(2, iscrowd=1),
        ann(3, bbox=[1, 1, 0.2, 5]),
        ann(4, bbox=[1, 1, -1, 5]),
        ann(5, bbox=[99, 1, 5, 5]),
        ann(6, image_id=42),
        ann(7, bbox=[45, 35, 10, 10]),
    ]
    _, c = validate_coco(coco(*anns), SRC)
    assert c == AnnotationCounts(
        images=2, annotations=7, kept=2, crowd=1, degenerate=1, nonpositive=1, outside=1, orphan=1, clipped=1,
        empty_images=1,
    )  # fmt: skip
    assert c.kept + c.crowd + c.degenerate + c.nonpositive + c.outside + c.orphan == c.annotations


def test_real_transform_accepts_clipped_boxes(tmp_path: Path) -> None:
    data = coco(ann(1, bbox=[-10, -10, 30, 30]))
    ds = CocoDetection(tmp_path / "imgs", write(tmp_path, data), TestTransform())
    _, gt, meta = ds[0]
    assert gt.boxes.min() >= 0 and meta.orig_size == (40, 50)
