"""COCO-style evaluation with pycocotools: result conversion, COCOeval wrapper, result files.

COCO results are dicts ``{image_id, category_id, bbox: [x, y, w, h], score}`` (plus
``segmentation`` for ``iou_type="segm"``), boxes in original-image pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnet.evaluation.bootstrap import defined, image_matches, percentile_interval, resample_weights, weighted_ap
from cnet.files import write_text_atomic

if TYPE_CHECKING:  # keeps `python -m cnet.tools.evaluate` free of the torch import
    from cnet.types import Detections

# Order of COCOeval.stats for iou_type bbox/segm with maxDets (1, 10, 100).
METRIC_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM", "ARL")
IOU_TYPES = ("bbox", "segm")


def detections_to_coco(
    image_ids: Sequence[int],
    detections: Sequence[Detections],
    label_to_cat_id: Sequence[int],
) -> list[dict[str, Any]]:
    """Convert per-image detections to COCO result dicts.

    image_ids: one COCO image id per entry of ``detections``.
    detections: boxes [D, 4] xyxy in original-image pixels, scores [D], labels [D] contiguous
    class index used to look up ``label_to_cat_id`` (contiguous index -> COCO category id).
    Returns dicts with bbox ``[x, y, w, h]`` rounded to 2 decimals and score rounded to 4, plus
    ``segmentation`` (the detection's RLE) when the detections carry ``segmentations``.
    """
    if len(image_ids) != len(detections):
        raise ValueError(
            f"detections_to_coco: got {len(image_ids)} image ids but {len(detections)} detections; "
            "pass one id per image"
        )
    results: list[dict[str, Any]] = []
    for image_id, det in zip(image_ids, detections):
        boxes = det.boxes.detach().cpu().double().tolist()
        scores = det.scores.detach().cpu().double().tolist()
        labels = det.labels.detach().cpu().tolist()
        segms = det.segmentations
        for k, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes, scores, labels)):
            if not 0 <= label < len(label_to_cat_id):
                raise ValueError(
                    f"detections_to_coco: label {label} of image {image_id} is outside label_to_cat_id "
                    f"(length {len(label_to_cat_id)}); check num_classes against the dataset's categories"
                )
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_cat_id[label]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 4),
                }
            )
            if segms is not None:
                results[-1]["segmentation"] = segms[k]
    return results


def check_results(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str = "bbox") -> None:
    """Raise ValueError (one line) if ``results`` cannot be evaluated against ``coco_gt``.

    Checks the iou_type, the required keys of every result, and that every image id and
    category id exists in the ground truth.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    for key in ("images", "categories"):
        if key not in coco_gt.dataset:
            raise ValueError(f"ground truth has no '{key}' list; is it a COCO instances file?")
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    required = ("image_id", "category_id", "score", geometry)
    for i, res in enumerate(results):
        if not isinstance(res, dict):
            raise ValueError(f"result #{i} is a {type(res).__name__}, expected a dict with keys {required}")
        missing = [k for k in required if k not in res]
        if missing:
            hint = ""
            if iou_type == "segm" and geometry in missing:
                hint = " (iou_type segm needs an RLE or polygon 'segmentation' per result)"
            raise ValueError(f"result #{i} lacks key(s) {missing}{hint}")
    gt_imgs = set(coco_gt.getImgIds())
    bad_imgs = sorted({r["image_id"] for r in results} - gt_imgs)
    if bad_imgs:
        raise ValueError(
            f"{len(bad_imgs)} result image id(s) are not in the ground truth, e.g. {bad_imgs[:5]}; "
            "evaluate against the annotation file the detections were made on"
        )
    bad_cats = sorted({r["category_id"] for r in results} - set(coco_gt.getCatIds()))
    if bad_cats:
        raise ValueError(
            f"result category id(s) {bad_cats[:5]} are not in the ground truth's categories; "
            "check the label -> category id mapping"
        )


def _segm_to_rle(coco_gt: COCO, result: dict[str, Any]) -> dict[str, Any]:
    """Copy of a segm result with its segmentation (polygon, uncompressed or compressed RLE)
    turned into compressed RLE and no ``bbox``, so loadRes derives mask area and box itself."""
    img = coco_gt.imgs[result["image_id"]]
    segm = result["segmentation"]
    if isinstance(segm, list):  # polygons: list of [x0, y0, x1, y1, ...]
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, img["height"], img["width"]))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, *segm["size"])
    else:
        rle = segm
    out = {k: v for k, v in result.items() if k != "bbox"}
    out["segmentation"] = rle
    return out


def _empty_results(coco_gt: COCO) -> COCO:
    """A detection COCO object with no annotations; pycocotools' loadRes rejects an empty list."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def run_cocoeval(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str = "bbox") -> tuple[COCOeval, str]:
    """COCOeval (evaluate, accumulate, summarize) of ``results`` on every image of ``coco_gt``, with
    the text it printed. ``results`` are checked first (:func:`check_results`) and not modified."""
    check_results(coco_gt, results, iou_type)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        if not results:
            coco_dt = _empty_results(coco_gt)
        elif iou_type == "segm":
            coco_dt = coco_gt.loadRes([_segm_to_rle(coco_gt, r) for r in results])
        else:
            # loadRes adds keys (area, id, ...) to the dicts it gets: hand it copies.
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator, captured.getvalue()


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_type: str = "bbox",
    verbose: bool = False,
    bootstrap: int = 0,
) -> dict[str, float]:
    """Run COCOeval (evaluate, accumulate, summarize) on every image of ``coco_gt``.

    results: COCO result dicts (see ``detections_to_coco``); not modified.
    Returns the 12 COCOeval.stats figures keyed by ``METRIC_NAMES``. As in COCOeval, a figure is
    -1.0 when the ground truth has no object of that size; empty results give 0.0 elsewhere.
    ``bootstrap`` > 0 adds ``AP_ci_low`` / ``AP_ci_high``: the 95 % interval of AP over that many
    resamples of the images (:mod:`cnet.evaluation.bootstrap`, its fixed seed; -1 where AP is -1).
    COCOeval's printed summary is captured; ``verbose=True`` writes it to stderr.
    """
    evaluator, printed = run_cocoeval(coco_gt, results, iou_type)
    if verbose:
        sys.stderr.write(printed)
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    figures = {name: float(v) for name, v in zip(METRIC_NAMES, stats)}
    if bootstrap > 0:
        samples = weighted_ap(image_matches(evaluator), resample_weights(len(evaluator.params.imgIds), bootstrap))
        low, high = percentile_interval(defined(samples["AP"]))
        has_interval = figures["AP"] != -1 and math.isfinite(low)
        figures |= {"AP_ci_low": low if has_interval else -1.0, "AP_ci_high": high if has_interval else -1.0}
    return figures


def write_results(path: str | os.PathLike[str], results: Sequence[dict[str, Any]]) -> Path:
    """Write COCO results as JSON atomically (:func:`cnet.files.write_text_atomic`); returns the path."""
    return write_text_atomic(path, json.dumps(list(results)))


def format_table(metrics: dict[str, float]) -> str:
    """Aligned two-row text table (names over values, 3 decimals) of the 12 COCO figures;
    a figure missing from ``metrics`` shows as ``-``."""
    cells = [(name, f"{metrics[name]:.3f}" if name in metrics else "-") for name in METRIC_NAMES]
    widths = [max(len(n), len(v)) for n, v in cells]
    header = "  ".join(n.rjust(w) for (n, _), w in zip(cells, widths))
    values = "  ".join(v.rjust(w) for (_, v), w in zip(cells, widths))
    return f"{header}\n{values}"
