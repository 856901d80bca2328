"""The image-level bootstrap: weight 1 is pycocotools, a resample is COCOeval on the drawn images,
a hand-worked case has the intervals it must have, and the two runs of a comparison are paired."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from cnet.evaluation.bootstrap import (
    AP_FIGURES,
    bootstrap,
    defined,
    difference,
    image_matches,
    percentile_interval,
    resample_weights,
    weighted_ap,
)

FIGURES = list(AP_FIGURES)  # COCOeval.stats[0:6]


def coco(dataset: dict[str, Any]) -> COCO:
    out = COCO()
    out.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


def cocoeval(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval:
    """pycocotools' own evaluate + accumulate + summarize on every image of ``gt``."""
    coco_gt = coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def random_set(seed: int, n_images: int = 12, n_cats: int = 4, crowd: bool = True) -> tuple[dict, list[dict]]:
    """Ground truth with small, medium and large objects, crowd regions, empty images and a
    category without objects; results: jittered objects (some matched, some not), detections on
    crowd regions, duplicates, random boxes, a category without objects, an image without any.
    Scores are distinct (continuous), except a few exact ties on purpose."""
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + 3 * i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(n_images)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5, 9)[:n_cats]]
    anns, ann_id = [], 1
    for img in images[: n_images - 2]:  # the last two images have no objects
        for _ in range(rng.integers(0, 6)):
            side = float(rng.choice([12.0, 20.0, 50.0, 80.0, 150.0])) * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(0, 640 - side), rng.uniform(0, 480 - side)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img["id"],
                    "category_id": int(rng.choice([c["id"] for c in cats[:-1]])),  # the last: no objects
                    "bbox": [x, y, side, side * rng.uniform(0.7, 1.3)],
                    "iscrowd": int(crowd and rng.random() < 0.12),
                }
            )
            anns[-1]["area"] = anns[-1]["bbox"][2] * anns[-1]["bbox"][3]
            ann_id += 1
    results = []
    for a in anns:
        for _ in range(rng.integers(1, 3) if a["iscrowd"] else int(rng.random() < 0.85) + int(rng.random() < 0.2)):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08 * w, 4)  # IoU spread over the 0.5..0.95 thresholds
            box = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
            results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box})
    for img in images[:-1]:  # the last image: no detections either
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(5, 200, 2)
            box = [rng.uniform(0, 600), rng.uniform(0, 440), w, h]
            cat = int(rng.choice([c["id"] for c in cats]))
            results.append({"image_id": img["id"], "category_id": cat, "bbox": box})
    scores = rng.permutation(len(results)) / len(results) + 0.01
    for r, s in zip(results, scores):
        r["score"] = float(s)
    for r in results[:4]:
        r["score"] = 0.5  # exact ties: COCOeval's stable sort keeps them in image order
    return {"images": images, "categories": cats, "annotations": anns}, results


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weight_one_is_pycocotools(seed):
    gt, results = random_set(seed, crowd=seed != 3)
    ev = cocoeval(gt, results)
    ours = weighted_ap(image_matches(ev), np.ones((1, len(gt["images"]))))
    assert any(a["iscrowd"] for a in gt["annotations"]) == (seed != 3)
    for i, name in enumerate(FIGURES):
        assert ours[name][0] == pytest.approx(ev.stats[i], abs=1e-12), name


def test_weight_one_with_maxdets_truncation_and_a_missing_area_range():
    """More than 100 detections in an image (COCOeval keeps the 100 best) and no large object
    (APL is COCOeval's -1)."""
    gt, results = random_set(5)
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] < 96**2]
    rng = np.random.default_rng(7)
    crowded = gt["annotations"][0]
    for _ in range(130):
        x, y, w, h = crowded["bbox"]
        box = [x + rng.normal(0, 2), y + rng.normal(0, 2), w, h]
        results.append({"image_id": crowded["image_id"], "category_id": crowded["category_id"], "bbox": box})
        results[-1]["score"] = float(rng.uniform(0, 1))
    ev = cocoeval(gt, results)
    ours = weighted_ap(image_matches(ev), np.ones(len(gt["images"])))
    assert ev.stats[5] == -1 and ours["APL"][0] == -1
    for i, name in enumerate(FIGURES):
        assert ours[name][0] == pytest.approx(ev.stats[i], abs=1e-12), name


def duplicated(gt: dict, results: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The resample as COCO files: image i copied counts[i] times (new ids, new annotation ids)."""
    images, anns, res = [], [], []
    by_image = {img["id"]: img for img in gt["images"]}
    new_id = 1
    for img, c in zip(sorted(by_image), counts):
        for _ in range(int(c)):
            images.append(by_image[img] | {"id": new_id})
            anns += [a | {"image_id": new_id} for a in gt["annotations"] if a["image_id"] == img]
            res += [r | {"image_id": new_id} for r in results if r["image_id"] == img]
            new_id += 1
    for k, a in enumerate(anns):
        anns[k] = a | {"id": k + 1}
    return {"images": images, "categories": gt["categories"], "annotations": anns}, res


def test_a_resample_is_cocoeval_on_the_drawn_images():
    """Weights = counts give COCOeval's figures on the images drawn that many times."""
    gt, results = random_set(11)
    for k, r in enumerate(results[:4]):
        r["score"] += 1e-6 * k  # no ties: the copies of a detection are adjacent in COCOeval's order too
    matches = image_matches(cocoeval(gt, results))
    weights = resample_weights(len(gt["images"]), 3, seed=4)
    weights[2, :] = [0, 3] + [1] * (len(gt["images"]) - 2)  # an image left out, one drawn three times
    ours = weighted_ap(matches, weights)
    for r, counts in enumerate(weights):
        naive = cocoeval(*duplicated(gt, results, counts)).stats
        for i, name in enumerate(FIGURES):
            assert ours[name][r] == pytest.approx(naive[i], abs=1e-12), (r, name)


def ten_objects(detected: range) -> tuple[dict, list[dict]]:
    """10 images with one 50 x 50 object each; a perfect detection on the images in ``detected``."""
    images = [{"id": i + 1, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in range(10)]
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
        for i in range(10)
    ]
    box = [10, 10, 50, 50]
    results = [{"image_id": i + 1, "category_id": 1, "bbox": box, "score": 0.9 - 0.01 * i} for i in detected]
    return {"images": images, "categories": [{"id": 1, "name": "x"}], "annotations": anns}, results


def test_hand_worked_intervals():
    """A finds images 1-5 of 10, perfectly. A resample draws k ~ Binomial(10, 1/2) of its 10 images
    among those five: precision is 1 throughout and recall k/10, so AP = (number of COCO recall
    thresholds <= k/10) / 101 = (10k + 1) / 101 for k >= 1 (but see k = 7 below; 0 for k = 0).
    P(k <= 1) = 11/1024 < 2.5% < P(k <= 2) = 56/1024, and symmetrically at the top, so the 95%
    interval is [AP(2), AP(8)] = [21/101, 81/101] (with 1000 resamples the 25th and 976th order
    statistics are k = 2 and k = 8 but with negligible chance).
    B finds all ten: AP 1 on every resample, so B - A lies in [1 - 81/101, 1 - 21/101]."""
    gt, a_results = ten_objects(range(5))
    _, b_results = ten_objects(range(10))
    a, b = image_matches(cocoeval(gt, a_results)), image_matches(cocoeval(gt, b_results))
    ap_a, ap_b = (s["AP"] for s in bootstrap([a, b], resamples=1000, seed=0))
    assert np.all(ap_b == 1.0)
    assert percentile_interval(ap_a) == pytest.approx((21 / 101, 81 / 101), abs=1e-12)
    assert percentile_interval(difference(ap_a, ap_b)) == pytest.approx((20 / 101, 80 / 101), abs=1e-12)
    # every resample's AP is one of those of k = 0..10; COCO's threshold "0.70" is 0.7000000000000001,
    # so k = 7 gives 70/101, not 71/101 (COCOeval's own arithmetic)
    thresholds = Params(iouType="bbox").recThrs
    allowed = np.array([0.0] + [np.count_nonzero(thresholds <= k / 10) / 101 for k in range(1, 11)])
    assert [round(v * 101) for v in allowed] == [0, 11, 21, 31, 41, 51, 61, 70, 81, 91, 101]
    assert np.abs(ap_a[:, None] - allowed).min(axis=1).max() < 1e-12
    # the medium-size figure is the same (every object is medium), the other sizes are absent
    assert percentile_interval(defined(weighted_ap(a, resample_weights(10, 1000, 0))["APS"])) == pytest.approx(
        (np.nan, np.nan), nan_ok=True
    )


def test_paired_resamples_cancel_what_both_runs_share():
    """The same results twice: each interval is wide, their paired difference is exactly 0; an
    unpaired difference (other resamples for the second run) would not be."""
    gt, results = random_set(21, n_images=30)
    m = image_matches(cocoeval(gt, results))
    first, second = bootstrap([m, m], resamples=200, seed=3)
    lo, hi = percentile_interval(first["AP"])
    assert hi - lo > 0.02
    assert percentile_interval(difference(first["AP"], second["AP"])) == (0.0, 0.0)
    other = weighted_ap(m, resample_weights(30, 200, seed=4))
    lo, hi = percentile_interval(difference(first["AP"], other["AP"]))
    assert lo < 0 < hi


def test_a_resample_without_objects_of_a_category_leaves_it_out():
    """Category 1's objects are in image 1 only, category 2's in image 2. Weights (0, 1): category 1
    has no counted object, so AP is category 2's alone; weights (0, 0): no object at all, -1."""
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
    ]
    gt = {"images": images, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": anns}
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.9},  # a miss: category 1 AP 0
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 40], "score": 0.8},  # a hit: category 2 AP 1
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.7},  # category 1 on image 2: fp
    ]
    ev = cocoeval(gt, results)
    figures = weighted_ap(image_matches(ev), np.array([[1, 1], [0, 1], [0, 0], [2, 1]]))
    assert figures["AP"][0] == pytest.approx(ev.stats[0]) == pytest.approx(0.5)
    assert figures["AP"][1] == pytest.approx(1.0)  # category 1 absent: only category 2's AP
    assert figures["AP"][2] == -1.0
    assert figures["AP"][3] == pytest.approx(0.5)
    interval = percentile_interval(defined(figures["AP"]))  # the resample without objects left out
    assert interval == pytest.approx(tuple(np.quantile([0.5, 1.0, 0.5], [0.025, 0.975])))


def test_a_difference_of_minus_one_is_a_difference_not_an_absent_figure():
    """A finds all ten objects (AP 1), B none (AP 0): B - A is -1 on every resample."""
    gt, all_found = ten_objects(range(10))
    a = image_matches(cocoeval(gt, all_found))
    b = image_matches(cocoeval(gt, [dict(all_found[0], bbox=[70, 70, 5, 5])]))  # one miss
    ap_a, ap_b = (s["AP"] for s in bootstrap([a, b], resamples=100, seed=1))
    assert np.all(ap_a == 1.0) and np.all(ap_b == 0.0)
    assert percentile_interval(difference(ap_a, ap_b)) == (-1.0, -1.0)


def test_resample_weights_draw_each_image_count_times():
    w = resample_weights(7, 500, seed=1)
    assert w.shape == (500, 7) and np.all(w.sum(axis=1) == 7)
    assert np.array_equal(w, resample_weights(7, 500, seed=1))
    assert not np.array_equal(w, resample_weights(7, 500, seed=2))
    assert abs(w.mean() - 1) < 0.05  # each image drawn once per resample on average


def test_matches_need_an_evaluated_cocoeval_and_the_same_images():
    gt, results = random_set(0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco(gt)
        unevaluated = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
    with pytest.raises(ValueError, match="evaluate"):
        image_matches(unevaluated)
    gt_small = gt | {"images": gt["images"][:-1]}
    a = image_matches(cocoeval(gt, results))
    b = image_matches(cocoeval(gt_small, [r for r in results if r["image_id"] != gt["images"][-1]["id"]]))
    with pytest.raises(ValueError, match="same ground truth"):
        bootstrap([a, b], resamples=5)
    with pytest.raises(ValueError, match="columns"):
        weighted_ap(a, np.ones((1, 3)))


def test_resamples_in_chunks_give_the_same_figures(monkeypatch):
    """A small memory budget splits the resamples into chunks of a few; the figures do not change."""
    from cnet.evaluation import bootstrap as module

    gt, results = random_set(8, n_images=20)
    matches = image_matches(cocoeval(gt, results))
    weights = resample_weights(20, 30, seed=2)
    whole = weighted_ap(matches, weights)
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 4 * matches.max_points())  # 4 resamples a chunk
    chunked = weighted_ap(matches, weights)
    for name in FIGURES:
        assert np.array_equal(whole[name], chunked[name]), name
