import copy
import json

import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cnet.evaluation import METRIC_NAMES, detections_to_coco, evaluate_coco, format_table, write_results
from cnet.types import Detections

# (image_id, category_id, [x, y, w, h]); areas: small < 32^2 <= medium < 96^2 <= large.
GT_BOXES = [
    (1, 3, [10, 10, 20, 20]),  # small
    (1, 7, [100, 100, 60, 50]),  # medium
    (2, 3, [50, 60, 200, 150]),  # large
    (2, 3, [300, 200, 25, 20]),  # small
    (5, 7, [400, 300, 120, 100]),  # large
    (5, 7, [20, 300, 40, 40]),  # medium
]


def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_gt(tmp_path, keep=lambda box: True) -> COCO:
    """Hand-made COCO GT: 3 images, 2 categories with non-contiguous ids 3 and 7."""
    anns = [
        {
            "id": i + 1,
            "image_id": img,
            "category_id": cat,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
            "segmentation": _polygon(*box),
        }
        for i, (img, cat, box) in enumerate(GT_BOXES)
        if keep(box)
    ]
    data = {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2, 5)],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": anns,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return COCO(str(path))


def gt_as_results(coco_gt: COCO) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in coco_gt.dataset["annotations"]
    ]


def test_perfect_results_score_one(tmp_path):
    coco_gt = make_gt(tmp_path)
    metrics = evaluate_coco(coco_gt, gt_as_results(coco_gt))
    assert list(metrics) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        if name != "AR1":
            assert metrics[name] == pytest.approx(1.0), name
    # One detection per image finds 1 of 1 and 1 of 2 objects for each category.
    assert metrics["AR1"] == pytest.approx(2 / 3)


def test_shifted_boxes_lose_strict_thresholds(tmp_path):
    coco_gt = make_gt(tmp_path)
    results = gt_as_results(coco_gt)
    for r in results:
        r["bbox"][0] += 0.1 * r["bbox"][2]  # IoU = 0.9 / 1.1 = 0.818 for every box
    metrics = evaluate_coco(coco_gt, results)
    # Matched at IoU thresholds 0.50..0.80 (7 of 10) with precision 1, missed at 0.85..0.95.
    assert metrics["AP"] == pytest.approx(0.7)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(0.7)


def test_empty_results_give_zero_or_minus_one(tmp_path):
    metrics = evaluate_coco(make_gt(tmp_path), [])
    assert all(metrics[n] == 0.0 for n in METRIC_NAMES)
    # Without small GT objects COCOeval reports -1 for the small-object figures.
    no_small = make_gt(tmp_path, keep=lambda box: box[2] * box[3] >= 32**2)
    metrics = evaluate_coco(no_small, [])
    assert metrics["APS"] == -1.0 and metrics["ARS"] == -1.0
    assert metrics["AP"] == 0.0 and metrics["APL"] == 0.0


def test_evaluate_does_not_mutate_and_verbose_goes_to_stderr(tmp_path, capsys):
    coco_gt = make_gt(tmp_path)
    capsys.readouterr()
    results = gt_as_results(coco_gt)
    before = copy.deepcopy(results)
    evaluate_coco(coco_gt, results)
    assert results == before
    assert capsys.readouterr().out == ""
    evaluate_coco(coco_gt, results, verbose=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "Average Precision" in captured.err


def test_bad_results_raise_clear_errors(tmp_path):
    coco_gt = make_gt(tmp_path)
    results = gt_as_results(coco_gt)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(coco_gt, results + [dict(results[0], image_id=99)])
    with pytest.raises(ValueError, match="category"):
        evaluate_coco(coco_gt, [dict(results[0], category_id=1)])
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(coco_gt, results, iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(coco_gt, results, iou_type="keypoints")


def test_detections_to_coco_maps_labels_and_boxes():
    det = Detections(
        boxes=torch.tensor([[10.0, 20.0, 30.0, 60.0], [1.234, 2.346, 5.678, 9.999]]),
        scores=torch.tensor([0.123456, 0.9]),
        labels=torch.tensor([1, 0]),
    )
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    out = detections_to_coco([42, 43], [det, empty], label_to_cat_id=[3, 7])
    assert out == [
        {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.1235},
        {"image_id": 42, "category_id": 3, "bbox": [1.23, 2.35, 4.44, 7.65], "score": 0.9},
    ]
    json.dumps(out)  # plain python types only
    with pytest.raises(ValueError, match="label_to_cat_id"):
        detections_to_coco([42], [det], label_to_cat_id=[3])
    with pytest.raises(ValueError, match="one id per image"):
        detections_to_coco([42], [det, empty], label_to_cat_id=[3, 7])


def test_detections_round_trip_through_coco_eval(tmp_path):
    coco_gt = make_gt(tmp_path)
    cat_ids = [3, 7]
    dets, img_ids = [], []
    for img_id in coco_gt.getImgIds():
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id]))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([cat_ids.index(a["category_id"]) for a in anns])
        dets.append(Detections(boxes, torch.ones(len(anns)), labels))
        img_ids.append(img_id)
    metrics = evaluate_coco(coco_gt, detections_to_coco(img_ids, dets, cat_ids))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_segm_polygons_and_rle_as_results(tmp_path):
    coco_gt = make_gt(tmp_path)
    polys = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in coco_gt.dataset["annotations"]
    ]
    assert evaluate_coco(coco_gt, polys, iou_type="segm")["AP"] == pytest.approx(1.0)
    rles = []
    for r in polys:
        rle = mask_utils.merge(mask_utils.frPyObjects(r["segmentation"], 480, 640))
        rle["counts"] = rle["counts"].decode("ascii")  # as read back from a JSON file
        rles.append(dict(r, segmentation=rle))
    assert evaluate_coco(coco_gt, rles, iou_type="segm")["AP"] == pytest.approx(1.0)
    # A polygon covering only the left third of every object has mask IoU ~1/3 < 0.5: no match.
    thirds = [
        dict(r, segmentation=_polygon(a["bbox"][0], a["bbox"][1], a["bbox"][2] / 3, a["bbox"][3]))
        for r, a in zip(polys, coco_gt.dataset["annotations"])
    ]
    assert evaluate_coco(coco_gt, thirds, iou_type="segm")["AP50"] == 0.0


def test_write_results_is_atomic_json(tmp_path):
    results = [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    path = write_results(tmp_path / "sub" / "res.json", results)
    assert json.loads(path.read_text()) == results
    write_results(path, [])  # overwrite in place
    assert json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["res.json"]  # no temp file left behind


def test_format_table_aligns_all_figures():
    metrics = {name: i / 100 for i, name in enumerate(METRIC_NAMES)}
    metrics["APS"] = -1.0
    header, values = format_table(metrics).splitlines()
    assert header.split() == list(METRIC_NAMES)
    assert values.split()[METRIC_NAMES.index("APS")] == "-1.000"
    assert values.split()[METRIC_NAMES.index("AR1")] == "0.060"
    assert len(header) == len(values)
