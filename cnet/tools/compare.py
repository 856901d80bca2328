"""Is B better than A? The paired image bootstrap of two runs' COCO figures.

    python -m cnet.tools.compare A B [--gt GT.json] [--split bbox] [--iou-type bbox|segm]
        [--resamples 1000] [--seed 0] [--tracking-uri URI] [--format text|json]

A and B are run folders (their ``results_<split>.json`` and ``.hydra/config.yaml``), MLflow run ids
(the same files from the run's folder or artifacts) or COCO results files (then ``--gt GT.json``).
The ground truth is ``--gt``, else the one each run's config scores ``--split`` on; both must list the
same images. Both results files are scored once with COCOeval; then both are re-scored on the
**same** ``--resamples`` resamples of the images (cnet.evaluation.bootstrap), which gives each run's
95 % interval and that of B - A. Prints AP, AP50, AP75, APS, APM, APL (COCO units, as logged):
each run's value and interval, B - A with its interval and whether the two can be told apart;
``--format json``: the same as one JSON object. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from cnet.evaluation.bootstrap import (
    AP_FIGURES,
    BOOTSTRAP_SEED,
    LEVEL,
    bootstrap,
    defined,
    difference,
    image_matches,
    percentile_interval,
)
from cnet.evaluation.coco_eval import IOU_TYPES, METRIC_NAMES, run_cocoeval
from cnet.tools.evaluate import InputError, load_gt, load_results
from cnet.tools.run_files import ground_truth_key, run_file, run_record, split_ground_truth

PROG = "python -m cnet.tools.compare"


@dataclass
class Source:
    """One side of the comparison: what it was given as, its results and the ground truth it names."""

    label: str
    results: list[dict[str, Any]]
    gt: COCO | None


def _from_files(label: str, results_file: Path | None, config_file: Path | None, split: str, gt: bool) -> Source:
    """A run's results (and, unless ``--gt`` is given, its ground truth from its config)."""
    if results_file is None:
        raise InputError(f"{label} has no results_{split}.json (is --split right? the run must have evaluated)")
    coco = None
    if not gt:
        if config_file is None:
            raise InputError(f"{label} has no config.yaml to rebuild its ground truth from: give it with --gt GT.json")
        try:
            coco = split_ground_truth(config_file, split)
        except (ValueError, OSError) as err:
            raise InputError(f"{label}: {err}") from err
    return Source(label, load_results(results_file), coco)


def resolve(source: str, split: str, have_gt: bool, tracking_uri: str | None, tmp: Path) -> Source:
    """A run folder, a results file or an MLflow run id, as a :class:`Source`."""
    path = Path(source)
    if path.is_dir():
        results = path / f"results_{split}.json"
        config = path / ".hydra" / "config.yaml"
        return _from_files(source, results if results.is_file() else None, config if config.is_file() else None,
                           split, have_gt)  # fmt: skip
    if path.is_file():
        if not have_gt:
            raise InputError(f"{source} is a results file: give the ground truth it was made on with --gt GT.json")
        return Source(source, load_results(path), None)
    if any(sep in source for sep in "/\\") or source.endswith(".json"):
        raise InputError(f"{source}: no such run folder or results file")
    from cnet.tools.report import default_tracking_uri  # mlflow: only for run ids

    uri = tracking_uri or default_tracking_uri()
    try:
        record = run_record(source, uri)
    except ValueError as err:
        raise InputError(f"{source} is not a folder or file here, nor an MLflow run: {err}") from err
    folder = tmp / source
    return _from_files(
        f"run {source}",
        run_file(record, f"results_{split}.json", folder),
        None if have_gt else run_file(record, "config.yaml", folder),
        split,
        have_gt,
    )


def _figure(value: float, samples: Any) -> dict[str, float | None]:
    """``{value, ci_low, ci_high}`` (``samples``: NaN where the resample has no such figure); an
    absent figure (-1) or interval is null."""
    low, high = percentile_interval(samples)
    absent = value == -1 or math.isnan(value)
    return {
        "value": None if absent else value,
        "ci_low": None if absent or math.isnan(low) else low,
        "ci_high": None if absent or math.isnan(high) else high,
    }


def compare(a: Source, b: Source, gt: COCO, iou_type: str, resamples: int, seed: int) -> dict[str, Any]:
    """The comparison as the JSON object ``--format json`` prints."""
    evaluated, matches = [], []
    for side in (a, b):
        try:
            ev, _ = run_cocoeval(gt, side.results, iou_type)
        except ValueError as err:
            raise InputError(f"{side.label}: {err}") from err
        evaluated.append({n: float(v) for n, v in zip(METRIC_NAMES, ev.stats)})
        matches.append(image_matches(ev))
    samples = bootstrap(matches, resamples, seed)
    out: dict[str, Any] = {
        "a": {"source": a.label},
        "b": {"source": b.label},
        "b_minus_a": {},
        "images": len(matches[0].image_ids),
        "resamples": resamples,
        "seed": seed,
        "level": LEVEL,
        "iou_type": iou_type,
    }
    for name in AP_FIGURES:
        va, vb = evaluated[0][name], evaluated[1][name]
        out["a"][name] = _figure(va, defined(samples[0][name]))
        out["b"][name] = _figure(vb, defined(samples[1][name]))
        out["b_minus_a"][name] = _figure(
            vb - va if -1 not in (va, vb) else -1.0, difference(samples[0][name], samples[1][name])
        )
    return out


def verdict(diff: dict[str, float | None]) -> str:
    """``B > A``, ``B < A`` or ``cannot tell apart`` from B - A's interval."""
    low, high = diff["ci_low"], diff["ci_high"]
    if low is None or high is None:
        return "n/a"
    return "B > A" if low > 0 else "B < A" if high < 0 else "cannot tell apart"


def to_text(result: dict[str, Any]) -> str:
    """The comparison as an aligned table, one line per figure."""

    def cell(f: dict[str, float | None], signed: bool = False) -> str:
        if f["value"] is None:
            return "n/a"
        fmt = "{:+.4f}" if signed else "{:.4f}"
        ci = "" if f["ci_low"] is None else f" [{fmt.format(f['ci_low'])}, {fmt.format(f['ci_high'])}]"
        return fmt.format(f["value"]) + ci

    rows = [["figure", "A", "B", "B - A", f"at {result['level']:.0%}"]]
    for name in AP_FIGURES:
        d = result["b_minus_a"][name]
        rows.append([name, cell(result["a"][name]), cell(result["b"][name]), cell(d, signed=True), verdict(d)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"A = {result['a']['source']}",
        f"B = {result['b']['source']}",
        f"paired image bootstrap: {result['resamples']} resamples of the {result['images']} images "
        f"(seed {result['seed']}), {result['level']:.0%} percentile intervals, {result['iou_type']} figures",
        "",
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="run folder, MLflow run id or COCO results file")
    parser.add_argument("b", help="run folder, MLflow run id or COCO results file")
    parser.add_argument("--gt", type=Path, default=None, help="COCO ground truth (needed for results files)")
    parser.add_argument("--split", default="bbox", help="which results_<split>.json of a run (bbox, crowd_bbox, ...)")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of run ids (default as train.py)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        if args.resamples < 1:
            raise InputError(f"--resamples {args.resamples}: give at least 1")
        gt = load_gt(args.gt) if args.gt is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            a, b = (resolve(s, args.split, gt is not None, args.tracking_uri, Path(tmp)) for s in (args.a, args.b))
        if gt is None:
            assert a.gt is not None and b.gt is not None
            if ground_truth_key(a.gt) != ground_truth_key(b.gt):
                raise InputError(
                    f"{a.label} and {b.label} were scored on different ground truth: a paired comparison "
                    "needs the same images and objects (or give one ground truth with --gt GT.json)"
                )
            gt = a.gt
        result = compare(a, b, gt, args.iou_type, args.resamples, args.seed)
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.format == "json" else to_text(result), end="\n" if args.format == "json" else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
