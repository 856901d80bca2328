"""Evaluate a COCO results file against COCO ground truth.

    python -m cnet.evaluate GT.json RESULTS.json [--iou-type bbox|segm] [--verbose]

Prints the 12 COCOeval figures as one JSON object on stdout. COCOeval's own text goes to
stderr with --verbose and is suppressed otherwise. Bad input: one-line error on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from cnet.evaluation.coco_eval import IOU_TYPES, evaluate_coco

PROG = "python -m cnet.evaluate"


class InputError(Exception):
    """Bad command-line input; the message is printed as the one-line error."""


def _load_json(path: Path, what: str) -> Any:
    """Parse a JSON file, turning a missing file or bad JSON into an InputError naming it."""
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        with path.open() as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} file {path} is not valid JSON: {e}") from e


def load_gt(path: Path) -> COCO:
    """Load a COCO instances file into a pycocotools COCO object without its progress prints."""
    data = _load_json(path, "ground-truth")
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise InputError(f"ground-truth file {path} needs 'images', 'annotations' and 'categories' keys")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(path: Path) -> list[dict[str, Any]]:
    """A COCO results file: a JSON list of detections (InputError naming the file otherwise)."""
    results = _load_json(path, "results")
    if not isinstance(results, list):
        raise InputError(f"results file {path} must hold a JSON list of detections, got {type(results).__name__}")
    return results


def run(gt_path: Path, results_path: Path, iou_type: str = "bbox", verbose: bool = False) -> dict[str, float]:
    """Evaluate ``results_path`` (a JSON list of COCO results) against ``gt_path``; returns the 12 figures."""
    coco_gt = load_gt(gt_path)
    results = load_results(results_path)
    try:
        return evaluate_coco(coco_gt, results, iou_type=iou_type, verbose=verbose)
    except ValueError as e:
        raise InputError(f"{results_path}: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("gt", type=Path, help="COCO ground-truth annotation JSON")
    parser.add_argument("results", type=Path, help="COCO results JSON (list of detections)")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox")
    parser.add_argument("--verbose", action="store_true", help="show COCOeval's summary on stderr")
    args = parser.parse_args(argv)
    try:
        metrics = run(args.gt, args.results, args.iou_type, args.verbose)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
