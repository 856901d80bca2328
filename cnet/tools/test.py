"""Evaluate a checkpoint without training: ``python -m cnet.test CHECKPOINT_OR_RUN_DIR [overrides]``.

The source is a run folder (its ``checkpoints/last.pt`` and ``.hydra/config.yaml``) or a checkpoint
file (inside a run folder its config is used, otherwise the default config). Overrides change that
config as on the ``train.py`` command line: ``data.root=/data/coco``, ``test.flip=false``,
``test=multiscale``, ``test.scales=[0.75,1]``, ``backbone=hourglass104`` (a group option replaces the node).

By default the run's validation splits are scored; ``--ann FILE [--images DIR]`` scores any COCO
annotation file instead. An image-info file without annotations (COCO test-dev) only writes the
detections file ``detections_<name>_cnet_results.json``, ready to upload, and says that figures need
annotations. Results files and ``metrics.json`` go to ``--out`` (default
``<run folder>/test/<date-time>``); the 12 COCO figures are printed per split; a new MLflow run
(tags: ``source_checkpoint``, ``source_run_id``, ``overrides``, ``provenance.*``) gets the figures, or
the source run with ``--into-source-run`` (as ``test_<figure>``). Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnet import provenance
from cnet.checkpoint import TrainState
from cnet.compose import (
    CONFIG_ERRORS,
    apply_overrides,
    build_evaluation,
    compose_config,
    load_config,
    select,
    to_plain,
)
from cnet.errors import USER_ERRORS
from cnet.evaluation.coco_eval import detections_to_coco, write_results
from cnet.evaluator import evaluate
from cnet.files import write_text_atomic
from cnet.run import Evaluation
from cnet.tracking import Tracker, flatten_params, resolve_tracking_uri

PROG = "python -m cnet.test"


class InputError(Exception):
    """Bad command-line input; the message is printed as the one-line error."""


def resolve_source(source: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) of a run folder or checkpoint path."""
    if source.is_dir():
        ckpt = source / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise InputError(f"run folder {source} has no checkpoint {ckpt.relative_to(source)}")
        return ckpt, source
    if not source.is_file():
        raise InputError(f"checkpoint or run folder not found: {source}")
    for run_dir in (source.parent.parent, source.parent):
        if (run_dir / ".hydra" / "config.yaml").is_file():
            return source, run_dir
    return source, None


def source_config(run_dir: Path | None, overrides: Sequence[str]) -> Any:
    """The run's saved config with ``overrides`` (no run folder: the default config)."""
    if run_dir is None:
        return compose_config(overrides)
    return apply_overrides(load_config(run_dir / ".hydra" / "config.yaml"), overrides)


def source_choices(run_dir: Path | None, overrides: Sequence[str]) -> dict[str, str]:
    """The run's config-group choices (``matching``, ``backbone``, ...; from ``.hydra/hydra.yaml``),
    updated by group overrides such as ``test=multiscale``: MLflow tags, as ``train.py`` sets them."""
    choices: dict[str, str] = {}
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml" if run_dir is not None else None
    if hydra_yaml is not None and hydra_yaml.is_file():
        node = select(load_config(hydra_yaml), "hydra.runtime.choices", {})
        choices = {str(k): str(v) for k, v in node.items() if not str(k).startswith("hydra") and v}
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in choices:
            choices[key] = value
    return choices


def has_annotations(evaluation: Evaluation) -> bool:
    """Whether every split's annotation file has an ``annotations`` list (test-dev has none)."""
    return all("annotations" in ds.coco.dataset for ds in evaluation.val_sets.values())


def predict_only(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Detections of every split, written as COCO upload files; no figures."""
    written = []
    for name, loader in evaluation.loaders.items():
        ds = evaluation.val_sets[name]
        ids, dets = evaluation.predictor.predict(loader, evaluation.device, progress=True)
        results = detections_to_coco(ids, dets[""], ds.label_to_cat_id)
        written.append(write_results(out_dir / f"detections_{ds.ann_file.stem}_cnet_results.json", results))
    return written


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    write_text_atomic(path, json.dumps(data, indent=1))


def track(
    cfg: Any, state: TrainState, ckpt: Path, overrides: Sequence[str], metrics: dict[str, float], out_dir: Path,
    into_source: bool, choices: dict[str, str], device_type: str = "cpu",
) -> str:  # fmt: skip
    """Log the figures to a new MLflow run (or the source run) and return its id. A new run gets the
    provenance tags and packages of this evaluation (the source run keeps its training's)."""
    uri = resolve_tracking_uri(cfg.tracking.uri)
    flush_s = 60.0 * float(cfg.tracking.get("flush_timeout_min", 30))  # runs saved before the key existed
    tags = choices | {
        "kind": "test",
        "source_checkpoint": str(ckpt.resolve()),
        "source_run_id": state.mlflow_run_id or "",
        "overrides": " ".join(overrides) or "(none)",
        "output_dir": str(out_dir.resolve()),
    }
    tags |= provenance.tags(device_type, provenance.gather_hosts())
    if into_source:
        if not state.mlflow_run_id:
            raise InputError(f"--into-source-run: checkpoint {ckpt} records no MLflow run id")
        with Tracker(uri, cfg.tracking.experiment, run_id=state.mlflow_run_id, flush_timeout_s=flush_s) as tracker:
            tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=state.epoch)
        return tracker.run_id
    name = f"test-{ckpt.parent.parent.name}" if ckpt.parent.name == "checkpoints" else f"test-{ckpt.stem}"
    with Tracker(uri, cfg.tracking.experiment, run_name=name, tags=tags, flush_timeout_s=flush_s) as tracker:
        tracker.log_params(flatten_params(to_plain(cfg)))
        tracker.log_text(provenance.package_list(), "provenance/packages.txt", out_dir)
        tracker.log_metrics(metrics, step=state.epoch)
        for results in sorted(out_dir.glob("results_*.json")):
            tracker.log_artifact(str(results), "results")
    return tracker.run_id


def run(args: argparse.Namespace) -> int:
    ckpt, run_dir = resolve_source(args.source)
    if args.images is not None and args.ann is None:
        raise InputError("--images needs --ann (the annotation file of those images)")
    if args.ann is not None and not args.ann.is_file():
        raise InputError(f"annotation file not found: {args.ann}")
    cfg = source_config(run_dir, args.overrides)
    state = TrainState.load(ckpt)
    evaluation = build_evaluation(cfg, args.ann, args.images)
    evaluation.load(state, ckpt)
    base = run_dir if run_dir is not None else ckpt.parent
    out_dir = args.out or base / "test" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if not has_annotations(evaluation):
        for path in predict_only(evaluation, out_dir):
            print(f"wrote {path}")
        print(f"no figures: {args.ann or 'the validation file'} has no annotations (results ready to upload)")
        return 0
    metrics = evaluate(
        evaluation.predictor, evaluation.loaders, evaluation.device, out_dir, f"{ckpt} epoch {state.epoch}"
    )
    write_json(out_dir / "metrics.json", metrics)
    print(f"results in {out_dir}")
    if not args.no_mlflow:
        choices = source_choices(run_dir, args.overrides)
        run_id = track(
            cfg, state, ckpt, args.overrides, metrics, out_dir, args.into_source_run, choices, evaluation.device.type
        )
        print(f"MLflow run {run_id}")
    return 0


ERRORS: tuple[type[BaseException], ...] = (InputError, *USER_ERRORS, *CONFIG_ERRORS)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="run folder (outputs/...) or checkpoint file (.pt)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. test.flip=false data.root=/data/coco")
    parser.add_argument("--ann", type=Path, help="COCO annotation (or image-info) JSON to evaluate on instead")
    parser.add_argument("--images", type=Path, help="image folder of --ann (default: the file's folder)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run folder>/test/<date-time>)")
    parser.add_argument("--into-source-run", action="store_true", help="log into the checkpoint's MLflow run")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(args)
    except ERRORS as e:
        print(f"{PROG}: error: {e}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
