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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import COCOeval
from scipy import sparse

# the figures of COCOeval.stats[0:6] that the bootstrap gives: name -> (area label, IoU threshold or None)
AP_FIGURES: dict[str, tuple[str, float | None]] = {
    "AP": ("all", None),
    "AP50": ("all", 0.5),
    "AP75": ("all", 0.75),
    "APS": ("small", None),
    "APM": ("medium", None),
    "APL": ("large", None),
}
BOOTSTRAP_SEED = 0  # the resamples of every interval cnet reports (fixed: reruns give the same interval)
LEVEL = 0.95
EPS = np.spacing(1)  # COCOeval's guard in precision = tp / (tp + fp + eps)
CHUNK_ELEMENTS = 1 << 22  # points x resamples per array (32 MiB of float64): resamples are chunked to fit


@dataclass(frozen=True)
class _Prefix:
    """The cumulative weight of an ordered list of detections, read after given numbers of them.

    ``segments`` [m, I] (sparse): per stretch of the list between two consecutive read-outs, how
    many of its detections each image has; ``rows`` [q]: per read-out, the stretch it ends (0: none).
    """

    segments: sparse.csr_matrix | None
    rows: np.ndarray

    @classmethod
    def of(cls, images: np.ndarray, counts: np.ndarray, n_img: int) -> _Prefix:
        """Read-outs after ``counts`` [q] of the detections whose images are ``images`` (in order)."""
        ends = np.unique(counts[counts > 0])
        rows = np.where(counts > 0, np.searchsorted(ends, counts) + 1, 0)
        if not len(ends):
            return cls(None, rows)
        stretch = np.searchsorted(ends, np.arange(ends[-1]), side="right")  # [ends[-1]] per detection
        ones = np.ones(len(stretch))
        return cls(sparse.csr_matrix((ones, (stretch, images[: ends[-1]])), shape=(len(ends), n_img)), rows)

    def table(self, by_image: np.ndarray) -> np.ndarray:
        """[m + 1, r]: 0, then the cumulative weight at the end of each stretch, for the image
        weights ``by_image`` [I, r]."""
        out = np.zeros((1 + (0 if self.segments is None else self.segments.shape[0]), by_image.shape[1]))
        if self.segments is not None:
            out[1:] = self.segments @ by_image
            _running(np.add, out)
        return out

    def at(self, by_image: np.ndarray) -> np.ndarray:
        """[q, r]: the read-outs for the image weights ``by_image`` [I, r]."""
        return self.table(by_image)[self.rows]


def _running(op: np.ufunc, x: np.ndarray, reverse: bool = False) -> None:
    """``op``-accumulate ``x`` [n, r] down axis 0 in place (bottom-up with ``reverse``). Row by row:
    each step is one vector operation over the resamples (numpy's accumulate along axis 0 is
    several times slower)."""
    steps = range(len(x) - 2, -1, -1) if reverse else range(1, len(x))
    prev = 1 if reverse else -1
    for i in steps:
        op(x[i], x[i + prev], out=x[i])


@dataclass(frozen=True)
class _Threshold:
    """One (category, area range, IoU threshold).

    ``tp_images`` [n]: the image of each true positive (matched to a counted ground truth,
    counted), in score order. ``minus`` / ``plus``: at each true positive, the in-range
    detections so far that are *not* counted (matched to a crowd or an out-of-range object) and
    the out-of-range ones that *are* (matched to a counted object); with ``in_rows`` (which
    read-out of the area's in-range prefix each true positive takes) they give the counted
    detections so far: in-range - minus + plus.
    """

    tp_images: np.ndarray
    in_rows: np.ndarray
    minus: _Prefix
    plus: _Prefix


@dataclass(frozen=True)
class _Area:
    """One (category, area range): the prefix of its in-range detections at every read-out any of
    its IoU thresholds needs, and the thresholds."""

    inside: _Prefix
    thresholds: list[_Threshold]


@dataclass(frozen=True)
class ImageMatches:
    """The per-image matching of one results file (COCOeval.evaluate), ready for re-weighting.

    ``image_ids``: [I] the evaluation images (the columns of a weight matrix), COCOeval's order.
    ``gt_counts``: [K, A, I] counted (not ignored) ground truths per category, area range and image.
    ``areas``: [K][A] each category's area ranges. ``area_labels``: COCOeval's labels of the area
    ranges; ``iou_thrs`` [T] and ``rec_thrs`` [101] its thresholds.
    """

    image_ids: np.ndarray
    gt_counts: np.ndarray
    areas: list[list[_Area]]
    area_labels: tuple[str, ...]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray

    def max_points(self) -> int:
        """The most rows one array of :func:`weighted_ap` has: true positives of one (category, area
        range, IoU threshold), or read-outs of one area range's in-range prefix."""
        sizes = [len(th.tp_images) for areas in self.areas for a in areas for th in a.thresholds]
        sizes += [a.inside.segments.shape[0] for areas in self.areas for a in areas if a.inside.segments is not None]
        return max(sizes, default=0) + 1


def _area(image: np.ndarray, matched: np.ndarray, counted: np.ndarray, inside: np.ndarray, n_img: int) -> _Area:
    """One area range of a category from its detections in score order: ``image`` [D], and
    ``matched`` / ``counted`` [T, D] and ``inside`` [D] (the detection's area is in the range)."""
    in_pos = np.flatnonzero(inside)
    rows, parts = [], []
    for t in range(len(matched)):
        tp = np.flatnonzero(matched[t] & counted[t])
        minus = np.flatnonzero(inside & ~counted[t])  # counted = inside - minus + plus, exactly
        plus = np.flatnonzero(~inside & counted[t])
        rows.append(np.searchsorted(in_pos, tp, side="right"))  # in-range detections up to each tp
        parts.append(
            (
                image[tp],
                _Prefix.of(image[minus], np.searchsorted(minus, tp, side="right"), n_img),
                _Prefix.of(image[plus], np.searchsorted(plus, tp, side="right"), n_img),
            )
        )
    # one in-range prefix for all thresholds: read after the counts any of them needs
    inside_prefix = _Prefix.of(image[in_pos], np.concatenate(rows) if rows else np.zeros(0, np.int64), n_img)
    splits = np.cumsum([len(r) for r in rows])[:-1]
    in_rows = np.split(inside_prefix.rows, splits) if rows else []
    thresholds = [_Threshold(tp, r, minus, plus) for (tp, minus, plus), r in zip(parts, in_rows)]
    return _Area(dataclasses.replace(inside_prefix, rows=np.zeros(0, np.int64)), thresholds)


def _category(evaluator: COCOeval, k: int, max_det: int) -> tuple[list[_Area], np.ndarray]:
    """Category ``k``'s area ranges from ``evaluator.evalImgs``, and its counted ground truths per
    area range and image, [A, I]."""
    p = evaluator.params
    n_img, n_area, n_iou = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    base = k * n_area * n_img  # evalImgs: category-major, then area range, then image
    present = [i for i in range(n_img) if evaluator.evalImgs[base + i] is not None]  # gt or dets of k
    gt_counts = np.zeros((n_area, n_img))
    first = [evaluator.evalImgs[base + i] for i in present]
    per_image = [len(e["dtScores"][:max_det]) for e in first]
    scores = np.concatenate([np.asarray(e["dtScores"][:max_det], dtype=np.float64) for e in first] or [np.zeros(0)])
    order = np.argsort(-scores, kind="mergesort")  # COCOeval's sort (stable: ties stay in image order)
    image = np.repeat(np.asarray(present, dtype=np.int64), per_image)[order]
    dt_ids = np.concatenate(
        [np.asarray(e["dtIds"][:max_det], dtype=np.int64) for e in first] or [np.zeros(0, np.int64)]
    )
    areas = np.array([evaluator.cocoDt.anns[d]["area"] for d in dt_ids[order]], dtype=np.float64)
    out = []
    for a, (lo, hi) in enumerate(p.areaRng):
        entries = [evaluator.evalImgs[base + a * n_img + i] for i in present]
        gt_counts[a, present] = [np.count_nonzero(e["gtIgnore"] == 0) for e in entries]
        empty = [np.zeros((n_iou, 0))]
        matched = np.concatenate([e["dtMatches"][:, :max_det] for e in entries] or empty, axis=1)[:, order] != 0
        ignored = np.concatenate([e["dtIgnore"][:, :max_det] for e in entries] or empty, axis=1)[:, order]
        inside = ~((areas < lo) | (areas > hi))  # evaluateImg's test for unmatched detections
        out.append(_area(image, matched, ~ignored.astype(bool), inside, n_img))
    return out, gt_counts


def image_matches(evaluator: COCOeval) -> ImageMatches:
    """Regroup an evaluated ``COCOeval`` (``evaluate()`` run, default parameters: per-category,
    ``maxDets`` with 100 third as summarize reads it) for :func:`weighted_ap`."""
    p = evaluator.params
    if not evaluator.evalImgs:
        raise ValueError("image_matches needs an evaluated COCOeval: call evaluate() first")
    if not p.useCats or len(p.maxDets) < 3:
        raise ValueError("image_matches needs COCOeval's per-category evaluation with maxDets [1, 10, 100]")
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    cats = [_category(evaluator, k, p.maxDets[2]) for k in range(len(p.catIds))]
    return ImageMatches(
        image_ids=np.asarray(p.imgIds),
        gt_counts=np.stack([c for _, c in cats]) if cats else np.zeros((0, n_area, n_img)),
        areas=[a for a, _ in cats],
        area_labels=tuple(p.areaRngLbl),
        iou_thrs=np.asarray(p.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(p.recThrs, dtype=np.float64),
    )


def _thresholds_at_or_below(rec_thrs: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``searchsorted(rec_thrs, recall, side="right")`` for ``recall`` in [0, 1].

    COCO's thresholds are ``j * 0.01`` exactly (``np.linspace``'s arithmetic): then a guess from the
    spacing, corrected by one step each way against ``j * 0.01`` computed the same way, is exact
    (and checked); several times faster than the binary search, which other thresholds get.
    """
    n = len(rec_thrs)
    step = 1.0 / (n - 1) if n > 1 else 0.0
    if n < 2 or not np.array_equal(np.arange(n) * step, rec_thrs):
        return np.searchsorted(rec_thrs, recall, side="right")
    guess = (recall * (n - 1)).astype(np.int64)  # floor (recall >= 0); then count threshold 0 too
    guess += 1
    guess -= (guess - 1) * step > recall  # rec_thrs[guess - 1] > recall: one too many
    guess += guess * step <= recall  # rec_thrs[guess] <= recall: one too few (guess = n: never)
    if np.all((guess - 1) * step <= recall) and np.all(guess * step > recall):
        return guess
    return np.searchsorted(rec_thrs, recall, side="right")


def _precision_sums(area: _Area, by_image: np.ndarray, npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """[T, r]: the interpolated precision summed over the recall thresholds, per resample.

    ``by_image`` [I, r]: each image's weight in each resample; ``npig`` [r]: the weighted number of
    counted ground truths (inf where there is none: that entry is absent, its recall reads 0).
    Points (true positives) run down axis 0 and resamples along axis 1, contiguous: a category has
    few true positives per threshold, so each step works on whole rows.
    """
    out = np.zeros((len(area.thresholds), by_image.shape[1]))
    if not any(len(th.tp_images) for th in area.thresholds):
        return out  # no true positive at any IoU: precision 0 at every recall threshold
    inside = area.inside.table(by_image)  # [m + 1, r] in-range detections up to each read-out
    for t, th in enumerate(area.thresholds):
        n = len(th.tp_images)
        if n == 0:
            continue
        tp = by_image[th.tp_images]  # [n, r]
        _running(np.add, tp)  # weighted true positives so far
        # counted detections so far (= tp + fp): exact integers for count weights, as in COCOeval
        kept = inside[th.in_rows]
        if th.minus.segments is not None:
            kept -= th.minus.at(by_image)
        if th.plus.segments is not None:
            kept += th.plus.at(by_image)
        kept += EPS
        envelope = np.divide(tp, kept, out=kept)  # precision, then its envelope: the max from here down
        _running(np.maximum, envelope, reverse=True)
        recall = np.divide(tp, npig, out=tp)
        # recall threshold j reads the envelope at the first point reaching it: point p is read by
        # the thresholds in (recall of p - 1, recall of p], as many as the step in thresholds <= recall
        reached = np.diff(_thresholds_at_or_below(rec_thrs, recall), axis=0, prepend=0)  # [n, r]
        out[t] = (envelope * reached).sum(axis=0)
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
    npig = (matches.gt_counts.reshape(n_cat * n_area, n_img) @ weights.T).reshape(n_cat, n_area, n_res)
    sums = np.zeros((n_cat, n_area, n_iou, n_res))
    step = max(1, CHUNK_ELEMENTS // max(1, matches.max_points()))
    for lo in range(0, n_res, step):
        by_image = np.ascontiguousarray(weights[lo : lo + step].T)  # [I, r]: an image's weights are one row
        for k, areas in enumerate(matches.areas):
            for a, area in enumerate(areas):
                counted = np.where(npig[k, a, lo : lo + step] > 0, npig[k, a, lo : lo + step], np.inf)
                sums[k, a, :, lo : lo + step] = _precision_sums(area, by_image, counted, matches.rec_thrs)
    valid = npig > 0  # summarize's "precision > -1": the category has a counted object there
    figures = {}
    for name, (area_label, iou) in AP_FIGURES.items():
        a = matches.area_labels.index(area_label)
        ts = np.arange(n_iou) if iou is None else np.where(iou == matches.iou_thrs)[0]
        total = (sums[:, a][:, ts].sum(axis=1) * valid[:, a]).sum(axis=0)  # [R]
        count = valid[:, a].sum(axis=0) * len(ts) * n_rec
        figures[name] = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return figures


def resample_weights(num_images: int, resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, num_images] counts: each row draws ``num_images`` images with replacement."""
    if num_images < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {resamples}")
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    flat = (draws + num_images * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * num_images).reshape(resamples, num_images).astype(np.float64)


def defined(samples: np.ndarray) -> np.ndarray:
    """A figure's resampled values with COCO's -1 (no object of that kind drawn) as NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    return np.where(samples == -1, np.nan, samples)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite samples (NaN: the resample has no
    such figure, see :func:`defined` and :func:`difference`); ``(nan, nan)`` when none is finite."""
    samples = np.asarray(samples, dtype=np.float64)
    kept = samples[np.isfinite(samples)]
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


def bootstrap(
    runs: Sequence[ImageMatches], resamples: int = 1000, seed: int = BOOTSTRAP_SEED
) -> list[dict[str, np.ndarray]]:
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
