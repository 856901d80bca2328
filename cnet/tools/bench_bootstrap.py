"""The bootstrap benchmark (a section of ``python -m cnet.tools.bench``, ``make bench``).

A synthetic COCO set of COCO val2017's size: 5,000 images with Poisson(7.3) objects each (80
categories; small, medium and large; 1 % crowd regions) and a results file of exactly 100
detections per image (each object found with probability 0.8 at a jittered box, the rest random
boxes of random categories; scores rounded to 4 decimals as cnet writes them). Timed, in one process:

* ``matches``: what the fast bootstrap needs once: pycocotools' ``COCOeval.evaluate`` (the plain
  evaluation runs it anyway) and :func:`cnet.evaluation.bootstrap.image_matches`;
* ``resamples``: :func:`cnet.evaluation.bootstrap.weighted_ap` on ``--bootstrap-resamples`` (1,000)
  resamples at once;
* ``naive``: COCOeval (evaluate + accumulate + summarize) on the drawn images, per resample; a few
  resamples are timed and the figure for all of them is extrapolated (it says so).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnet.evaluation.bootstrap import image_matches, resample_weights, weighted_ap


def synthetic_coco(
    num_images: int = 5000, dets_per_image: int = 100, num_classes: int = 80, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ground truth as a COCO instances dict, results list) of the sizes above."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 640, "height": 480, "file_name": f"{i + 1:012d}.jpg"} for i in range(num_images)]
    anns: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for img in images:
        n = min(int(rng.poisson(7.3)), dets_per_image)
        side = np.exp(rng.uniform(np.log(8), np.log(300), n))  # small, medium and large objects
        wh = np.stack([side * rng.uniform(0.7, 1.4, n), side * rng.uniform(0.7, 1.4, n)], axis=1)
        xy = rng.uniform(0, 1, (n, 2)) * np.maximum(1.0, np.array([640.0, 480.0]) - wh)
        cats = rng.integers(1, num_classes + 1, n)
        crowd = rng.random(n) < 0.01
        for box_xy, box_wh, cat, iscrowd in zip(xy, wh, cats, crowd):
            box = [float(v) for v in (*box_xy, *box_wh)]
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(cat), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int(iscrowd)})  # fmt: skip
        found = rng.random(n) < 0.8
        jitter = rng.normal(0, 0.1, (n, 4)) * np.concatenate([wh, wh], axis=1)
        boxes = [np.concatenate([xy[j], wh[j]]) + jitter[j] for j in np.flatnonzero(found)]
        det_cats = [int(cats[j]) for j in np.flatnonzero(found)]
        scores = list(rng.uniform(0.3, 1.0, len(boxes)))
        rest = dets_per_image - len(boxes)
        rwh = rng.uniform(4, 250, (rest, 2))
        boxes += list(np.concatenate([rng.uniform(0, 1, (rest, 2)) * (np.array([640.0, 480.0]) - rwh), rwh], axis=1))
        det_cats += [int(c) for c in rng.integers(1, num_classes + 1, rest)]
        scores += list(rng.uniform(0.0, 0.6, rest))
        for box, cat, score in zip(boxes, det_cats, scores):
            x, y, w, h = (round(float(v), 2) for v in box)
            results.append({"image_id": img["id"], "category_id": cat, "bbox": [x, y, max(w, 1.0), max(h, 1.0)],
                            "score": round(float(score), 4)})  # fmt: skip
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def _cocoeval(gt: dict[str, Any], results: list[dict[str, Any]], steps: tuple[str, ...]) -> COCOeval:
    """COCOeval of ``results`` on every image of ``gt``, running ``steps`` (its printing silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        for step in steps:
            getattr(ev, step)()
    return ev


def resampled(
    gt: dict[str, Any], results: list[dict[str, Any]], counts: np.ndarray
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO files of one resample: image i copied ``counts[i]`` times under new ids."""
    anns_of: dict[int, list[dict[str, Any]]] = {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    dets_of: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        dets_of.setdefault(r["image_id"], []).append(r)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for img, count in zip(sorted(gt["images"], key=lambda im: im["id"]), counts):
        for _ in range(int(count)):
            new = len(images) + 1
            images.append(img | {"id": new})
            anns += [a | {"id": len(anns) + 1 + k, "image_id": new} for k, a in enumerate(anns_of.get(img["id"], []))]
            dets += [r | {"image_id": new} for r in dets_of.get(img["id"], [])]
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, dets


def bench_bootstrap(
    num_images: int = 5000, dets_per_image: int = 100, resamples: int = 1000, naive_resamples: int = 2
) -> dict[str, Any]:
    """The timings of this module's docstring, in seconds, with the setting."""
    load = os.getloadavg()[0]  # a shared machine's figures are slower: say how busy it was
    gt, results = synthetic_coco(num_images, dets_per_image)
    t0 = time.perf_counter()
    ev = _cocoeval(gt, results, ("evaluate",))
    t1 = time.perf_counter()
    matches = image_matches(ev)
    t2 = time.perf_counter()
    weights = resample_weights(num_images, resamples, seed=0)
    figures = weighted_ap(matches, weights)
    t3 = time.perf_counter()
    naive_s, gaps = [], []
    for r, counts in enumerate(weights[:naive_resamples]):
        start = time.perf_counter()
        naive = _cocoeval(*resampled(gt, results, counts), ("evaluate", "accumulate", "summarize"))
        naive_s.append(time.perf_counter() - start)
        # not bit-equal: rounded scores tie, and COCOeval orders a tie by image, the weights by copies
        gaps.append(abs(float(naive.stats[0]) - float(figures["AP"][r])))
    if max(gaps, default=0.0) > 1e-3:
        raise RuntimeError(f"a resample's AP differs from COCOeval's on the drawn images by {max(gaps):.2e}")
    per_naive = float(np.mean(naive_s))
    return {
        "load_average_start": load,
        "images": num_images,
        "detections": len(results),
        "objects": len(gt["annotations"]),
        "classes": len(gt["categories"]),
        "resamples": resamples,
        "evaluate_s": t1 - t0,
        "matches_s": t2 - t1,
        "resamples_s": t3 - t2,
        "naive_timed": naive_resamples,
        "naive_per_resample_s": per_naive,
        "naive_s": per_naive * resamples,
        "ratio": per_naive * resamples / (t3 - t2),
        "naive_max_abs_diff": max(gaps, default=0.0),
        "ap": float(figures["AP"].mean()),
    }


def to_markdown(row: dict[str, Any]) -> list[str]:
    """The section's lines for ``reports/bench.md``."""
    once = row["evaluate_s"] + row["matches_s"]
    return [
        "",
        f"## Bootstrap of COCO AP ({row['resamples']} resamples; {row['images']} images x "
        f"{row['detections'] // row['images']} detections, {row['classes']} classes, {row['objects']} objects)",
        "",
        "One process, `python -m cnet.tools.bench --only bootstrap`"
        + (f"; 1-min load average {row['load_average_start']:.1f} at start" if "load_average_start" in row else "")
        + ".",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| COCOeval.evaluate once (the per-image matches; the plain evaluation runs it anyway) | "
        f"{row['evaluate_s']:.1f} |",
        f"| regroup the matches (`image_matches`) | {row['matches_s']:.1f} |",
        f"| {row['resamples']} resamples at once (`weighted_ap`) | {row['resamples_s']:.1f} |",
        f"| naive: COCOeval per resample, {row['resamples']} resamples (extrapolated from {row['naive_timed']} "
        f"timed, {row['naive_per_resample_s']:.1f} s each) | {row['naive_s']:.0f} |",
        "",
        f"Naive / fast resampling: {row['ratio']:.0f}x "
        f"(counting the one-off matching too: {row['naive_s'] / (once + row['resamples_s']):.0f}x). "
        f"The timed naive resamples' AP equals the fast one's to {row['naive_max_abs_diff']:.1e} (scores are "
        "rounded to 4 decimals: COCOeval orders tied scores by image, the weights count an image's copies in a row).",
    ]
