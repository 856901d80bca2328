"""Wrong corner pairs (issue 15): TIDE-style error categories of final detections.

The paper's thesis is that associative embedding often pairs the top-left corner of one object
with the bottom-right corner of a look-alike neighbour, and centripetal shift rarely does. This
module measures it: every detection of an image is put in exactly one category, tested in this
order (the first that applies wins):

1. ``tp``: COCO-style greedy matching by descending score, IoU >= 0.5, same class, each ground
   truth object matched at most once (the unmatched object with the highest IoU is taken).
2. ``mispair``: its top-left corner lies within the Gaussian radius of one same-class object's
   top-left corner and its bottom-right corner within the radius of a *different* same-class
   object's bottom-right corner, and no single object has both corners near the detection's (that
   box is a poor box of one object, not a wrong pair). Tested before the other errors because a
   wrong pair usually also overlaps one of its objects by 0.1-0.5 and would otherwise hide as
   ``localisation``.
3. ``duplicate``: IoU >= 0.5 with a same-class object that an earlier (higher-score) detection
   already matched.
4. ``localisation``: same class, 0.1 <= IoU < 0.5 with some object.
5. ``class_confusion``: IoU >= 0.5 with an object of another class.
6. ``background``: anything else.

The radius is CornerNet's ``gaussian_radius`` (min_overlap 0.3) of each object's own box size:
the tolerance within which a corner still gives a box of IoU >= 0.3, i.e. the region the corner
heatmap target treats as "this object's corner". It scales linearly with the box, so it applies
to original-image pixels as well as to output-map cells. "Within" is the square of the drawn
Gaussian (max(|dx|, |dy|) <= radius). Crowd regions are no objects here (``iscrowd`` excluded).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from cnet.evaluation.coco_eval import evaluate_coco
from cnet.targets import gaussian_radius

CATEGORIES = ("tp", "mispair", "duplicate", "localisation", "class_confusion", "background")
# Rates count only detections a reader would see: the final output keeps up to 100 boxes per
# image, most of them low-score tail that hardly moves AP; 0.3 is the usual display threshold
# (CornerNet demo, mmdet ``show_result``), so the rates describe the boxes one would look at.
SCORE_THRESHOLD = 0.3
MATCH_IOU = 0.5
LOC_MIN_IOU = 0.1
MIN_OVERLAP = 0.3
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")  # a record's COCO result fields


@dataclass(frozen=True)
class ImageErrors:
    """Per-detection outcome for one image, in the order of the detections given.

    categories: one of ``CATEGORIES`` per detection.
    tl_gt / br_gt: for a mispair, the index of the object whose top-left / bottom-right corner
    the detection took (the pair with the largest IoU product if several); -1 otherwise.
    """

    categories: list[str]
    tl_gt: list[int]
    br_gt: list[int]


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix [A, B] of xyxy boxes [A, 4] and [B, 4] (COCO's continuous area, no +1)."""
    tl = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    br = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area_a = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 0, None).prod(-1)
    area_b = np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def classify_image(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    min_overlap: float = MIN_OVERLAP,
) -> ImageErrors:
    """Categorise each detection of one image against its (non-crowd) ground truth.

    pred_boxes [D, 4] xyxy, pred_scores [D], pred_labels [D]; gt_boxes [G, 4] xyxy, gt_labels [G]:
    same pixels and same label space (contiguous labels or COCO category ids). See the module
    docstring for the categories and their order.
    """
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pred_labels = np.asarray(pred_labels).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    num_pred, num_gt = len(pred_boxes), len(gt_boxes)
    iou = box_iou(pred_boxes, gt_boxes)  # [D, G]
    same_cls = pred_labels[:, None] == gt_labels[None, :]  # [D, G]

    # 1. COCO greedy matching: stable sort by score so ties keep the given order, like COCOeval.
    order = np.argsort(-pred_scores, kind="mergesort")
    matched_gt = np.full(num_pred, -1)
    gt_taken = np.zeros(num_gt, dtype=bool)
    for d in order:
        cand = np.where(same_cls[d] & ~gt_taken & (iou[d] >= MATCH_IOU), iou[d], -1.0)
        if num_gt and cand.max() >= 0:
            g = int(cand.argmax())
            matched_gt[d], gt_taken[g] = g, True

    # Corner neighbourhoods: [D, G] "the detection's corner is near object g's corner".
    gt_size = gt_boxes[:, 2:] - gt_boxes[:, :2]  # [G, 2] (w, h)
    radius = np.array([gaussian_radius(h, w, min_overlap) for w, h in gt_size], dtype=np.float64)
    tl_near = np.abs(pred_boxes[:, None, :2] - gt_boxes[None, :, :2]).max(-1) <= radius[None, :]
    br_near = np.abs(pred_boxes[:, None, 2:] - gt_boxes[None, :, 2:]).max(-1) <= radius[None, :]
    tl_near &= same_cls
    br_near &= same_cls

    # Vectorised over detections (COCO val: ~100 per image); np.select keeps the first true test.
    # Mispair: both corner sets non-empty and disjoint, so every (tl, br) pair is two objects.
    mispair = tl_near.any(1) & br_near.any(1) & ~(tl_near & br_near).any(1)
    tests = [
        matched_gt >= 0,
        mispair,
        (same_cls & gt_taken[None, :] & (iou >= MATCH_IOU)).any(1),
        (same_cls & (iou >= LOC_MIN_IOU)).any(1),  # same-class IoU >= 0.5 matched or duplicated
        (~same_cls & (iou >= MATCH_IOU)).any(1),
    ]
    categories = [str(c) for c in np.select(tests, list(CATEGORIES[:-1]), default=CATEGORIES[-1])]
    tl_gt, br_gt = [-1] * num_pred, [-1] * num_pred
    for d in np.flatnonzero(mispair & (matched_gt < 0)):
        # the objects the box joined: the (tl, br) pair it overlaps most
        pair = np.where(tl_near[d][:, None] & br_near[d][None, :], iou[d][:, None] * iou[d][None, :], -1.0)
        tl_gt[d], br_gt[d] = (int(k) for k in np.unravel_index(int(pair.argmax()), pair.shape))
    return ImageErrors(categories=categories, tl_gt=tl_gt, br_gt=br_gt)


def _xywh_to_xyxy(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def classify_results(coco_gt: COCO, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Categorise every COCO bbox result against ``coco_gt`` (non-crowd annotations).

    results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), not
    modified. Returns one record per result, same order: the result's fields plus ``error`` (a
    category) and, for a mispair, ``tl_gt_id``/``br_gt_id`` (the annotation ids of the objects
    whose corners it joined; None otherwise).
    """
    by_image: dict[int, list[int]] = defaultdict(list)
    for k, res in enumerate(results):
        by_image[int(res["image_id"])].append(k)
    records: list[dict[str, Any]] = [{} for _ in results]
    for image_id, idx in by_image.items():
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        gt_boxes = _xywh_to_xyxy([a["bbox"] for a in anns])
        gt_labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        errors = classify_image(
            _xywh_to_xyxy([results[k]["bbox"] for k in idx]),
            np.array([results[k]["score"] for k in idx], dtype=np.float64),
            np.array([results[k]["category_id"] for k in idx], dtype=np.int64),
            gt_boxes,
            gt_labels,
        )
        for n, k in enumerate(idx):
            tl, br = errors.tl_gt[n], errors.br_gt[n]
            records[k] = {
                **{key: results[k][key] for key in RESULT_KEYS},
                "error": errors.categories[n],
                "tl_gt_id": anns[tl]["id"] if tl >= 0 else None,
                "br_gt_id": anns[br]["id"] if br >= 0 else None,
            }
    return records


def mispair_figures(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    score_threshold: float = SCORE_THRESHOLD,
    ap_before: float | None = None,
) -> dict[str, float]:
    """Split-level figures from ``records`` (``classify_results(coco_gt, results)``).

    mispair_rate: share of detections with score >= ``score_threshold`` that are mispairs.
    mispair_fp_rate: share of false positives (not ``tp``) above the threshold that are mispairs.
    dAP_mispair: COCO AP with every mispaired detection removed (any score) minus AP with all
    (TIDE's "fix this error and recompute"); ``ap_before`` saves one COCOeval if already known.
    A rate with nothing to count is 0.0; with no mispairs dAP_mispair is exactly 0.0.
    """
    if len(records) != len(results):
        raise ValueError(f"mispair_figures: {len(records)} records for {len(results)} results")
    shown = [r for r in records if r["score"] >= score_threshold]
    shown_fp = [r for r in shown if r["error"] != "tp"]
    n_mis = sum(r["error"] == "mispair" for r in shown)
    keep = [res for res, rec in zip(results, records) if rec["error"] != "mispair"]
    if len(keep) == len(results):
        d_ap = 0.0  # nothing to fix: skip two COCOeval runs
    else:
        before = ap_before if ap_before is not None else evaluate_coco(coco_gt, results)["AP"]
        d_ap = evaluate_coco(coco_gt, keep)["AP"] - before
    return {
        "mispair_rate": n_mis / len(shown) if shown else 0.0,
        "mispair_fp_rate": n_mis / len(shown_fp) if shown_fp else 0.0,
        "dAP_mispair": float(d_ap),
    }


def category_summary(
    coco_gt: COCO, records: Sequence[dict[str, Any]], ap: float, score_threshold: float = SCORE_THRESHOLD
) -> list[dict[str, Any]]:
    """One row per category of ``CATEGORIES``: ``category``, ``shown`` (detections scoring >=
    ``score_threshold``), ``all`` (any score) and ``dAP``: COCO AP with that category's detections
    removed minus ``ap`` (the split's AP with all; TIDE's "fix this error"), None for ``tp`` (removing
    true positives fixes nothing) and exactly 0.0 for a category without detections.

    ``records``: :func:`classify_results`'s (each carries its result's fields, so COCOeval reads them).
    """
    rows = []
    for category in CATEGORIES:
        ours = [r for r in records if r["error"] == category]
        d_ap: float | None = 0.0
        if category == "tp":
            d_ap = None
        elif ours:
            kept = [{k: r[k] for k in RESULT_KEYS} for r in records if r["error"] != category]
            d_ap = evaluate_coco(coco_gt, kept)["AP"] - ap
        shown = sum(r["score"] >= score_threshold for r in ours)
        rows.append({"category": category, "shown": shown, "all": len(ours), "dAP": d_ap})
    return rows
