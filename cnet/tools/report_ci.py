"""``cnet.tools.report TABLE --ci``: which of a table's differences are real.

Every run a table uses (:mod:`cnet.tools.report_tables`) is re-scored from its own results file
(``results_bbox.json``, from its folder or artifacts) on the ground truth its config names, once
(COCOeval), then on the same image resamples as every other run of the table (the paired image
bootstrap of :mod:`cnet.evaluation.bootstrap`). Per row: the 95 % interval of our AP (several seeds:
the mean over the seeds on each resample; their spread is the table's ± beside it) and of its
difference to the base row (the table's first); per pair of rows, whether the paper's ordering of
their AP holds at 95 %, is reversed, or cannot be told apart. Figures in percent, as the tables.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnet.evaluation.bootstrap import BOOTSTRAP_SEED, LEVEL, ImageMatches, image_matches, resample_weights, weighted_ap
from cnet.evaluation.coco_eval import run_cocoeval
from cnet.tools.report_tables import RowInterval, Table, TableIntervals
from cnet.tools.run_files import ground_truth_key, run_file, split_ground_truth

RESULTS = "results_bbox.json"  # the plain evaluation's results (masks too, for a segm table)


@dataclass(frozen=True)
class _Scored:
    """One run re-scored from its results file: its ground truth (a key), matches and AP (percent)."""

    truth: Any
    matches: ImageMatches
    ap: float


def _score(run: Mapping[str, Any], iou_type: str, tmp: Path, truths: dict[Any, Any]) -> _Scored | str:
    """One run's :class:`_Scored`, or why it has none. ``truths``: the ground truths seen, by key."""
    results_file = run_file(run, RESULTS, tmp / str(run["run_id"]))
    config_file = run_file(run, "config.yaml", tmp / str(run["run_id"]))
    if results_file is None or config_file is None:
        return f"run {str(run['run_id'])[:8]} has no {RESULTS if results_file is None else 'config.yaml'}"
    coco = split_ground_truth(config_file, "bbox")
    key = ground_truth_key(coco)
    truths.setdefault(key, coco)
    try:
        evaluator, _ = run_cocoeval(truths[key], json.loads(results_file.read_text()), iou_type)
    except (ValueError, OSError) as err:  # not JSON, or detections the ground truth does not have
        first = (str(err).strip().splitlines() or [""])[0]
        return f"run {str(run['run_id'])[:8]}: {RESULTS} cannot be scored ({first})"
    if evaluator.stats[0] == -1:
        return f"run {str(run['run_id'])[:8]}: its ground truth has no object"
    return _Scored(key, image_matches(evaluator), 100.0 * float(evaluator.stats[0]))


def _interval(samples: np.ndarray) -> tuple[float, float] | None:
    kept = samples[np.isfinite(samples)]
    if not len(kept):
        return None
    low, high = np.quantile(kept, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def table_intervals(
    table: Table, runs: Mapping[str, Mapping[str, Any]], resamples: int = 1000, seed: int = BOOTSTRAP_SEED
) -> TableIntervals:
    """The intervals of this module's docstring for ``table``; ``runs``: run id -> its record
    (``run_id``, ``tracking_uri``, ``tags.output_dir``)."""
    iou_type = table.spec.metric  # bbox, or segm (Table 3: mask AP)
    truths: dict[Any, Any] = {}
    scored: list[list[_Scored]] = []
    notes: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in table.cells:
            got = [_score(runs[ref.run_id], iou_type, Path(tmp), truths) for ref in cell.used]
            scored.append([g for g in got if isinstance(g, _Scored)])
            notes.append([g for g in got if isinstance(g, str)])
    # the ground truth every run is paired on: the base row's, else the first a run has
    firsts = [row[0].truth for row in scored if row]
    reference = firsts[0] if firsts else None
    images = 0 if reference is None else len(truths[reference].getImgIds())
    weights = resample_weights(images, resamples, seed) if images else None
    samples: list[np.ndarray | None] = []  # per row: its AP (mean over its seeds) on every resample
    points: list[float | None] = []
    for row, why in zip(scored, notes):
        paired = [s for s in row if s.truth == reference]
        if len(paired) < len(row):
            why.append(f"{len(row) - len(paired)} run(s) scored on other ground truth than the others: left out")
        if not paired or weights is None:
            samples.append(None)
            points.append(None)
            continue
        aps = np.stack([100.0 * weighted_ap(s.matches, weights)["AP"] for s in paired])  # [seeds, R]
        aps[aps == -100.0] = np.nan  # a resample without any object: AP absent (-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all seeds absent: NaN, left out
            samples.append(np.nanmean(aps, axis=0))
        points.append(float(np.mean([s.ap for s in paired])))
    rows = []
    base, base_point = samples[0] if samples else None, points[0] if points else None
    for s, p, why in zip(samples, points, notes):
        if s is None or p is None or base is None or base_point is None:
            ap = None if s is None else _interval(s)
            rows.append(RowInterval(ap=ap, diff=None, diff_ci=None, note="; ".join(why)))
        else:
            rows.append(RowInterval(_interval(s), p - base_point, _interval(s - base), "; ".join(why)))
    return TableIntervals(resamples, images, seed, rows, orderings(table, samples))


def orderings(table: Table, samples: list[np.ndarray | None]) -> str:
    """The sentence: per pair of rows with intervals, the paper's AP ordering reproduced at 95 %,
    reversed, or not told apart by ours."""
    names = [row.name + (f" ({table.spec.epoch_label(row)} ep)" if row.epochs else "") for row in table.spec.rows]
    held, reversed_, unclear, ties = [], [], [], []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            si, sj = samples[i], samples[j]
            if si is None or sj is None:
                continue
            pi, pj = table.spec.rows[i].paper["AP"], table.spec.rows[j].paper["AP"]
            hi, lo = (i, j) if pi >= pj else (j, i)  # the paper's higher row first
            interval = _interval((si - sj) if hi == i else (sj - si))
            pair = f"{names[hi]} > {names[lo]}"
            if pi == pj:
                ties.append(f"{names[i]} = {names[j]}")
            elif interval is None or interval[0] <= 0 <= interval[1]:
                unclear.append(pair)
            elif interval[0] > 0:
                held.append(pair)
            else:
                reversed_.append(pair)
    if not any((held, reversed_, unclear, ties)):
        return "No two rows have runs with results files: no ordering can be checked."
    parts = [
        f"reproduced: {', '.join(held)}" if held else "",
        f"reversed (ours the other way at {LEVEL:.0%}): {', '.join(reversed_)}" if reversed_ else "",
        f"cannot tell apart: {', '.join(unclear)}" if unclear else "",
        f"tied in the paper: {', '.join(ties)}" if ties else "",
    ]
    said = "; ".join(p for p in parts if p)
    # a row name may end in "." (RoI conv.): one full stop at the end
    return f"Of the paper's AP orderings, at {LEVEL:.0%} (paired image bootstrap), {said.removesuffix('.')}."
