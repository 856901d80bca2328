"""Hand-built cases with known answers for cnet.evaluation.mispair (issue 15)."""

import contextlib
import io
import json
import types

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from cnet.evaluation import evaluate_coco
from cnet.evaluation.mispair import CATEGORIES, category_summary, classify_image, classify_results, mispair_figures
from cnet.evaluator import evaluate
from cnet.targets import gaussian_radius
from cnet.types import Detections

# Two look-alike 40x40 objects of class 1, diagonal neighbours (xyxy). Radius ~9 px each.
GT_A = [10.0, 10.0, 50.0, 50.0]
GT_B = [30.0, 30.0, 70.0, 70.0]
# Corners swapped by construction: A's top-left with B's bottom-right, and B's with A's.
PRED_AB = [10.0, 10.0, 70.0, 70.0]
PRED_BA = [30.0, 30.0, 50.0, 50.0]


def classify(preds, gts):
    """preds: [(box, score, label)], gts: [(box, label)] -> categories."""
    return classify_image(
        np.array([p[0] for p in preds]).reshape(-1, 4),
        np.array([p[1] for p in preds]),
        np.array([p[2] for p in preds]),
        np.array([g[0] for g in gts]).reshape(-1, 4),
        np.array([g[1] for g in gts]),
    )


def test_radius_is_smaller_than_the_neighbours_corner_offset():
    assert gaussian_radius(40, 40, 0.3) < 20  # so each corner is near exactly one object


def test_swapped_corners_of_look_alikes_are_both_mispairs():
    errors = classify([(PRED_AB, 0.9, 1), (PRED_BA, 0.8, 1)], [(GT_A, 1), (GT_B, 1)])
    assert errors.categories == ["mispair", "mispair"]
    assert (errors.tl_gt, errors.br_gt) == ([0, 1], [1, 0])


def test_perfect_prediction_has_no_mispairs():
    errors = classify([(GT_A, 0.9, 1), (GT_B, 0.8, 1)], [(GT_A, 1), (GT_B, 1)])
    assert errors.categories == ["tp", "tp"]
    assert errors.tl_gt == errors.br_gt == [-1, -1]


def test_a_wrong_pair_of_another_class_is_no_mispair():
    # the objects are class 2: the box's corners are near no object of its own class
    errors = classify([(PRED_AB, 0.9, 1)], [(GT_A, 2), (GT_B, 2)])
    assert errors.categories == ["background"]


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        ((GT_A, 0.9, 1), "tp"),
        ((PRED_AB, 0.9, 1), "mispair"),
        ((GT_A, 0.5, 1), "duplicate"),  # a higher-score box already took A
        (([10.0, 10.0, 50.0, 25.0], 0.5, 1), "localisation"),  # IoU 0.375 with A, br far from A's
        (([10.0, 10.0, 50.0, 50.0], 0.5, 2), "class_confusion"),
        (([200.0, 200.0, 240.0, 240.0], 0.5, 1), "background"),
    ],
)
def test_each_category(pred, expected):
    if expected in ("tp", "mispair"):
        errors = classify([pred], [(GT_A, 1), (GT_B, 1)])
        assert errors.categories == [expected]
    else:  # behind an exact, higher-score box on A (a TP), as a duplicate needs
        errors = classify([(GT_A, 0.95, 1), pred], [(GT_A, 1), (GT_B, 1)])
        assert errors.categories == ["tp", expected]
    assert expected in CATEGORIES


def test_tp_matching_is_greedy_by_score():
    # two boxes on A: the higher score is the TP whatever the order given
    errors = classify([(GT_A, 0.4, 1), ([10.0, 10.0, 50.0, 48.0], 0.9, 1)], [(GT_A, 1)])
    assert errors.categories == ["duplicate", "tp"]


def test_no_ground_truth_means_background():
    errors = classify([(GT_A, 0.9, 1)], [])
    assert errors.categories == ["background"]
    assert classify([], [(GT_A, 1)]).categories == []


# ------------------------------------------------------------------ COCO level


def xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def make_gt() -> COCO:
    """Image 1: look-alikes A (id 1) and B (id 2), category 3, and a crowd region (id 3)."""
    anns = [
        (1, GT_A, 0),
        (2, GT_B, 0),
        (3, [200.0, 200.0, 300.0, 300.0], 1),
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 320, "height": 320}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {
                "id": i,
                "image_id": 1,
                "category_id": 3,
                "bbox": xywh(b),
                "area": (b[2] - b[0]) * (b[3] - b[1]),
                "iscrowd": c,
            }
            for i, b, c in anns
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def result(box, score):
    return {"image_id": 1, "category_id": 3, "bbox": xywh(box), "score": score}


def test_classify_results_names_the_objects_and_ignores_crowd():
    coco = make_gt()
    results = [result(PRED_AB, 0.95), result(GT_A, 0.9), result([210.0, 210.0, 290.0, 290.0], 0.6)]
    records = classify_results(coco, results)
    assert [r["error"] for r in records] == ["mispair", "tp", "background"]  # crowd is no object
    assert (records[0]["tl_gt_id"], records[0]["br_gt_id"]) == (1, 2)
    assert records[1]["tl_gt_id"] is None and records[1]["bbox"] == results[1]["bbox"]


def test_figures_without_mispairs_are_zero():
    coco = make_gt()
    results = [result(GT_A, 0.9), result(GT_B, 0.8)]
    figures = mispair_figures(coco, results, classify_results(coco, results))
    assert figures == {"mispair_rate": 0.0, "mispair_fp_rate": 0.0, "dAP_mispair": 0.0}


def test_figures_count_above_the_threshold_and_dap_is_the_recomputed_difference():
    coco = make_gt()
    results = [
        result(PRED_AB, 0.95),  # mispair, shown
        result(GT_A, 0.9),  # tp
        result([100.0, 100.0, 140.0, 140.0], 0.5),  # background, shown
        result(GT_B, 0.4),  # tp
        result(PRED_BA, 0.2),  # mispair below the 0.3 threshold
    ]
    records = classify_results(coco, results)
    assert [r["error"] for r in records] == ["mispair", "tp", "background", "tp", "mispair"]
    figures = mispair_figures(coco, results, records)
    assert figures["mispair_rate"] == pytest.approx(1 / 4)  # 4 boxes >= 0.3, one mispair
    assert figures["mispair_fp_rate"] == pytest.approx(1 / 2)  # 2 false positives >= 0.3
    fixed = [results[1], results[2], results[3]]
    expected = evaluate_coco(coco, fixed)["AP"] - evaluate_coco(coco, results)["AP"]
    assert expected > 0  # the top-score mispair cost precision
    assert figures["dAP_mispair"] == pytest.approx(expected)
    # a known AP before gives the same figure
    before = evaluate_coco(coco, results)["AP"]
    assert mispair_figures(coco, results, records, ap_before=before) == figures
    assert mispair_figures(coco, results, records, score_threshold=0.0)["mispair_rate"] == pytest.approx(2 / 5)


def test_figures_reject_mismatched_records():
    coco = make_gt()
    with pytest.raises(ValueError, match="records"):
        mispair_figures(coco, [result(GT_A, 0.9)], [])


# ------------------------------------------------------------------ evaluate() wiring


class _StubPredictor:
    """Predictor stand-in: fixed detections (contiguous label 0 = category 3) for image 1."""

    bootstrap = 0  # no AP interval

    def __init__(self, variants):
        self._dets = variants

    def variants(self):
        return list(self._dets)

    def predict(self, loader, device):
        return [1], {v: [d] for v, d in self._dets.items()}


def test_evaluate_adds_mispair_figures_and_file_and_keeps_coco_figures(tmp_path):
    def dets(boxes, scores):
        return Detections(torch.tensor(boxes), torch.tensor(scores), torch.zeros(len(boxes), dtype=torch.long))

    coco = make_gt()
    loader = types.SimpleNamespace(dataset=types.SimpleNamespace(coco=coco, label_to_cat_id=[3]))
    predictor = _StubPredictor(
        {"": dets([PRED_AB, GT_A, GT_B], [0.95, 0.9, 0.4]), "oracle_": dets([GT_A, GT_B], [0.9, 0.8])}
    )
    metrics = evaluate(predictor, {"bbox": loader}, torch.device("cpu"), out_dir=tmp_path)
    results = [result(PRED_AB, 0.95), result(GT_A, 0.9), result(GT_B, 0.4)]
    for k, v in evaluate_coco(coco, results).items():  # COCO figures as before
        assert metrics[f"bbox_{k}"] == pytest.approx(v)
    assert metrics["bbox_mispair_rate"] == pytest.approx(1 / 3)
    assert metrics["bbox_mispair_fp_rate"] == pytest.approx(1.0)
    assert metrics["bbox_dAP_mispair"] > 0
    assert metrics["oracle_bbox_mispair_rate"] == metrics["oracle_bbox_dAP_mispair"] == 0.0
    records = json.loads((tmp_path / "mispairs_bbox.json").read_text())
    assert [r["error"] for r in records] == ["mispair", "tp", "tp"]
    assert (tmp_path / "mispairs_oracle_bbox.json").exists()


def test_category_summary_counts_each_category_and_its_dap_is_the_ap_it_costs():
    coco = make_gt()
    results = [
        result([100.0, 100.0, 140.0, 140.0], 0.95),  # background, above both true positives
        result(GT_A, 0.9),
        result(GT_B, 0.8),
        result(PRED_BA, 0.2),  # a mispair under the display threshold
    ]
    records = classify_results(coco, results)
    # with all: precision 1/2 at recall 1/2, 2/3 at recall 1 -> every recall point reads 2/3
    ap = evaluate_coco(coco, results[:3])["AP"]
    assert ap == pytest.approx(2 / 3, abs=1e-3)
    rows = {r["category"]: r for r in category_summary(coco, records[:3], ap)}
    assert list(rows) == list(CATEGORIES)
    assert rows["background"] == {"category": "background", "shown": 1, "all": 1, "dAP": pytest.approx(1 / 3, abs=1e-3)}
    assert rows["tp"]["dAP"] is None and rows["tp"]["all"] == 2
    assert rows["duplicate"] == {"category": "duplicate", "shown": 0, "all": 0, "dAP": 0.0}
    rows = {r["category"]: r for r in category_summary(coco, records, evaluate_coco(coco, results)["AP"])}
    assert (rows["mispair"]["shown"], rows["mispair"]["all"]) == (0, 1)  # counted, not shown
