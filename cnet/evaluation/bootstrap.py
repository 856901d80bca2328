"""Image-level (paired) bootstrap of the COCO AP figures, exact and vectorised over resamples.

A resample draws the evaluation images with replacement; it is a **count per image** (a weight
vector, [I]). COCOeval on a resample equals COCOeval on the original images with each image's
detections and ground truth counted ``weight`` times: the per-image matching (``evaluateImg``)
does not depend on the other images, so it is computed **once** (:func:`image_matches`, from an
evaluated ``COCOeval``) and every resample re-weights it (:func:`weighted_ap`), all resamples at once:

* per category, the detections of all images in COCOeval.accumulate's order (image by image, each
  cut to ``maxDets[2]`` = 100, then a stable (mergesort) sort by score);
* per (area range, IoU threshold): weighted cumulative true positives and counted detections
  (true + false positives) at the true positives, recall = TP / weighted number of counted
  ground truths, precision = TP / (TP + FP + eps) with COCOeval's right-to-left max envelope, read
  at the 101 recall thresholds as ``searchsorted(recall, thresholds, side="left")`` does;
* the figures as COCOeval.summarize: mean over the (IoU, recall, category) entries whose category
  has a counted ground truth in that area range; ``-1`` where there is none.

Only the precisions at true positives are formed: the interpolated precision at a recall threshold
is the envelope at the first detection reaching it, which is a true positive, and a false positive
never raises the envelope. The counted detections before each true positive come from one cumulative
sum over the detections inside the area range, corrected by the few matched detections whose
counting differs (matched to a crowd or out-of-range object; out-of-range but matched to a counted
one), so the work per resample is one pass over the detections per area range plus work on the
matches. With all weights 1 the figures are pycocotools' ``accumulate`` + ``summarize`` (to
rounding). A weighted detection counts as its copies in a row; COCOeval on the duplicated images
orders equal scores by image, so a resample with score ties between *other* detections and the
copies may differ from it there (not at weight 1, and not without ties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import COCOeval

# the figures of COCOeval.stats[0:6] that the bootstrap gives: name -> (area label, IoU threshold or None)
AP_FIGURES: dict[str, tuple[str, float | None]] = {
    "AP": ("all", None),
    "AP50": ("all", 0.5),
    "AP75": ("all", 0.75),
    "APS": ("small", None),
    "APM": ("medium", None),
    "APL": ("large", None),
}
EPS = np.spacing(1)  # COCOeval's guard in precision = tp / (tp + fp + eps)
CHUNK_ELEMENTS = 1 << 21  # resamples x detections of one category per pass (16 MiB of float64)


@dataclass(frozen=True)
class _Threshold:
    """One (area range, IoU threshold) of one category; positions index the category's score order.

    ``tp``: [n] positions of the true positives (matched to a counted ground truth, counted).
    ``in_before``: [n] how many detections inside the area range are at or before each of them.
    ``minus`` / ``plus``: positions of in-range detections *not* counted (matched to a crowd or an
    out-of-range object) and of out-of-range ones that *are* (matched to a counted object);
    ``minus_before`` / ``plus_before`` [n]: how many of each are at or before each true positive.
    """

    tp: np.ndarray
    in_before: np.ndarray
    minus: np.ndarray
    minus_before: np.ndarray
    plus: np.ndarray
    plus_before: np.ndarray


@dataclass(frozen=True)
class _Category:
    """One category's detections over all images, in COCOeval.accumulate's order.

    ``image``: [D] the image (column of the weights) of each detection. ``in_range``: per area range,
    the positions of the detections inside it. ``thresholds``: [A][T] per area range and IoU threshold.
    """

    image: np.ndarray
    in_range: list[np.ndarray]
    thresholds: list[list[_Threshold]]


@dataclass(frozen=True)
class ImageMatches:
    """The per-image matching of one results file (COCOeval.evaluate), ready for re-weighting.

    ``image_ids``: [I] the evaluation images (the columns of a weight matrix), COCOeval's order.
    ``gt_counts``: [K, A, I] counted (not ignored) ground truths per category, area range and image.
    ``area_labels``: COCOeval's area range labels; ``iou_thrs`` [T] and ``rec_thrs`` [101] its thresholds.
    """

    image_ids: np.ndarray
    gt_counts: np.ndarray
    categories: list[_Category]
    area_labels: tuple[str, ...]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray


def _positions(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _category(evaluator: COCOeval, k: int, max_det: int) -> tuple[_Category, np.ndarray]:
    """Category ``k``'s detections and matches from ``evaluator.evalImgs``; also its counted
    ground truths per area range and image, [A, I]."""
    p = evaluator.params
    n_img, n_area, n_iou = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    base = k * n_area * n_img  # evalImgs: category-major, then area range, then image
    present = [i for i in range(n_img) if evaluator.evalImgs[base + i] is not None]  # gt or dets of k
    gt_counts = np.zeros((n_area, n_img))
    first = [evaluator.evalImgs[base + i] for i in present]
    per_image = [len(e["dtScores"][:max_det]) for e in first]
    if not sum(per_image):
        for a in range(n_area):
            for i in present:
                gt_counts[a, i] = np.count_nonzero(evaluator.evalImgs[base + a * n_img + i]["gtIgnore"] == 0)
        empty = _Threshold(*[np.zeros(0, dtype=np.int64)] * 6)
        return _Category(np.zeros(0, dtype=np.int64), [empty.tp] * n_area, [[empty] * n_iou] * n_area), gt_counts
    scores = np.concatenate([e["dtScores"][:max_det] for e in first])
    order = np.argsort(-scores, kind="mergesort")  # COCOeval's sort (stable: ties stay in image order)
    image = np.repeat(np.asarray(present, dtype=np.int64), per_image)[order]
    dt_ids = np.concatenate([e["dtIds"][:max_det] for e in first])[order]
    areas = np.array([evaluator.cocoDt.anns[d]["area"] for d in dt_ids], dtype=np.float64)
    in_ranges, thresholds = [], []
    for a, (lo, hi) in enumerate(p.areaRng):
        entries = [evaluator.evalImgs[base + a * n_img + i] for i in present]
        gt_counts[a, present] = [np.count_nonzero(e["gtIgnore"] == 0) for e in entries]
        matched = np.concatenate([e["dtMatches"][:, :max_det] for e in entries], axis=1)[:, order] != 0  # [T, D]
        counted = ~np.concatenate([e["dtIgnore"][:, :max_det] for e in entries], axis=1)[:, order].astype(bool)
        inside = ~((areas < lo) | (areas > hi))  # evaluateImg's test for unmatched detections
        in_pos = _positions(inside)
        in_ranges.append(in_pos)
        row = []
        for t in range(n_iou):
            tp = _positions(matched[t] & counted[t])
            minus = _positions(inside & ~counted[t])  # counted = inside - minus + plus, exactly
            plus = _positions(~inside & counted[t])
            row.append(
                _Threshold(
                    tp,
                    np.searchsorted(in_pos, tp, side="right"),
                    minus,
                    np.searchsorted(minus, tp, side="right"),
                    plus,
                    np.searchsorted(plus, tp, side="right"),
                )
            )
        thresholds.append(row)
    return _Category(image, in_ranges, thresholds), gt_counts


def image_matches(evaluator: COCOeval) -> ImageMatches:
    """Regroup an evaluated ``COCOeval`` (``evaluate()`` run, default parameters: per-category,
    ``maxDets`` with 100 third as summarize reads it) for :func:`weighted_ap`."""
    p = evaluator.params
    if not evaluator.evalImgs:
        raise ValueError("image_matches needs an evaluated COCOeval: call evaluate() first")
    if not p.useCats or len(p.maxDets) < 3:
        raise ValueError("image_matches needs COCOeval's per-category evaluation with maxDets [1, 10, 100]")
    n_cat = len(p.catIds)
    cats, counts = zip(*[_category(evaluator, k, p.maxDets[2]) for k in range(n_cat)]) if n_cat else ((), ())
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    return ImageMatches(
        image_ids=np.asarray(p.imgIds),
        gt_counts=np.stack(counts) if n_cat else np.zeros((0, n_area, n_img)),
        categories=list(cats),
        area_labels=tuple(p.areaRngLbl),
        iou_thrs=np.asarray(p.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(p.recThrs, dtype=np.float64),
    )


def _prefix(w: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[r, len(pos) + 1]: 0, then the cumulative weight of the detections at ``pos``."""
    out = np.zeros((w.shape[0], len(pos) + 1))
    np.cumsum(w[:, pos], axis=1, out=out[:, 1:])
    return out


def _first_reaching(bins: np.ndarray, n_thr: int) -> np.ndarray:
    """[r, n_thr]: per row, the index of the first point whose recall reaches each threshold.

    ``bins`` [r, n]: per point (recall non-decreasing along a row) the number of thresholds <= its
    recall; the first point reaching threshold j is the number of points with bins <= j.
    """
    r = bins.shape[0]
    counts = np.bincount((bins + (n_thr + 1) * np.arange(r)[:, None]).ravel(), minlength=r * (n_thr + 1))
    return np.cumsum(counts.reshape(r, n_thr + 1), axis=1)[:, :n_thr]


def _precision_sums(cat: _Category, w: np.ndarray, npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """[r, A, T]: the interpolated precision summed over the recall thresholds, per resample.

    ``w`` [r, D]: each detection's weight (its image's); ``npig`` [r, A]: weighted counted ground truths.
    """
    r, n_thr = w.shape[0], len(rec_thrs)
    out = np.zeros((r, len(cat.thresholds), len(cat.thresholds[0]) if cat.thresholds else 0))
    for a, (in_pos, row) in enumerate(zip(cat.in_range, cat.thresholds)):
        cum_in = _prefix(w, in_pos) if any(len(th.tp) for th in row) else None
        for t, th in enumerate(row):
            n = len(th.tp)
            if n == 0 or cum_in is None:
                continue  # no true positive: precision 0 at every recall threshold
            tp = np.cumsum(w[:, th.tp], axis=1)  # [r, n] weighted true positives so far
            # counted detections so far (= tp + fp): exact integers for count weights, as in COCOeval
            kept = cum_in[:, th.in_before] - _prefix(w, th.minus)[:, th.minus_before]
            kept += _prefix(w, th.plus)[:, th.plus_before]
            precision = tp / (kept + EPS)
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            with np.errstate(divide="ignore", invalid="ignore"):  # npig 0: the entry is absent anyway
                recall = tp / npig[:, a, None]
            first = _first_reaching(np.searchsorted(rec_thrs, recall, side="right"), n_thr)  # [r, 101]
            q = np.take_along_axis(envelope, np.minimum(first, n - 1), axis=1)
            out[:, a, t] = np.where(first < n, q, 0.0).sum(axis=1)  # past the last recall: 0
    return out


def weighted_ap(matches: ImageMatches, weights: np.ndarray) -> dict[str, np.ndarray]:
    """COCO AP, AP50, AP75, APS, APM, APL of every row of ``weights`` [R, I] (a count, or any
    non-negative weight, per image of ``matches.image_ids``); each figure [R], -1 where absent."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_res, n_img = weights.shape
    if n_img != len(matches.image_ids):
        raise ValueError(f"weights have {n_img} columns but the matches {len(matches.image_ids)} images")
    n_cat, n_area, _ = matches.gt_counts.shape
    n_iou, n_rec = len(matches.iou_thrs), len(matches.rec_thrs)
    npig = (weights @ matches.gt_counts.reshape(n_cat * n_area, n_img).T).reshape(n_res, n_cat, n_area)
    sums = np.zeros((n_res, n_cat, n_area, n_iou))
    for k, cat in enumerate(matches.categories):
        step = max(1, CHUNK_ELEMENTS // max(1, len(cat.image)))
        for lo in range(0, n_res, step):
            w = weights[lo : lo + step][:, cat.image]  # [r, D]
            sums[lo : lo + step, k] = _precision_sums(cat, w, npig[lo : lo + step, k], matches.rec_thrs)
    valid = npig > 0  # summarize's "precision > -1": the category has a counted object there
    figures = {}
    for name, (area, iou) in AP_FIGURES.items():
        a = matches.area_labels.index(area)
        ts = np.arange(n_iou) if iou is None else np.where(iou == matches.iou_thrs)[0]
        total = (sums[:, :, a][:, :, ts].sum(axis=2) * valid[:, :, a]).sum(axis=1)
        count = valid[:, :, a].sum(axis=1) * len(ts) * n_rec
        figures[name] = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return figures


def resample_weights(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, num_images] counts: each row draws ``num_images`` images with replacement."""
    if num_images < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {resamples}")
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    flat = (draws + num_images * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * num_images).reshape(resamples, num_images).astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of the defined samples (NaN and -1 left out:
    resamples without an object of that kind); ``(nan, nan)`` when none is defined."""
    samples = np.asarray(samples, dtype=np.float64)
    kept = samples[np.isfinite(samples) & (samples != -1)]
    if not len(kept):
        return math.nan, math.nan
    lo, hi = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def check_paired(runs: Sequence[ImageMatches]) -> None:
    """Raise ValueError unless every run was evaluated on the same images (in the same order)."""
    for i, m in enumerate(runs[1:], start=1):
        if not np.array_equal(m.image_ids, runs[0].image_ids):
            raise ValueError(
                f"run {i} was evaluated on other images than run 0 ({len(m.image_ids)} vs "
                f"{len(runs[0].image_ids)}); a paired bootstrap needs the same ground truth for both"
            )


def bootstrap(runs: Sequence[ImageMatches], resamples: int = 1000, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Each run's figures (:func:`weighted_ap`) on the **same** ``resamples`` resamples of the
    images (paired); one dict of [resamples] arrays per run."""
    check_paired(runs)
    weights = resample_weights(len(runs[0].image_ids), resamples, seed)
    return [weighted_ap(m, weights) for m in runs]


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b - a`` per resample; NaN where either is absent (-1)."""
    out = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    out[(np.asarray(a) == -1) | (np.asarray(b) == -1)] = np.nan
    return out
