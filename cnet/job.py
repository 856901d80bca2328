"""One training job around its :class:`~cnet.run.Run`: distributed set-up, the skip of a finished
job, the MLflow run (name, tags, params, dataset, metrics, artifacts) and ``job_status.json``.

``train.py`` gives it a :class:`JobSpec` (built from the composed config by
:func:`cnet.compose.build_job`): plain, typed values, no config objects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnet import provenance, runs_view
from cnet.data.coco import CocoDetection
from cnet.distributed import broadcast_object, destroy, init_distributed, is_main
from cnet.eval_artifacts import EvaluationArtifacts
from cnet.run import PAPER_GLOBAL_BATCH, Run, resolve_device
from cnet.tracking import Tracker, run_status

log = logging.getLogger("cnet")


@dataclass(frozen=True)
class JobSpec:
    """What a job needs to know besides its :class:`Run`.

    ``choices``: the Hydra group options (``matching`` -> ``centripetal``, ...), ``overrides``: the
    command line's overrides as typed, ``name_overrides``: those that change the defaults, as
    ``leaf=value`` (the run name's tail), ``data``: the dataset's name, ``params``: the resolved config
    flattened to MLflow params (dotted keys), ``config_yaml``: the resolved config (no ``${...}``),
    ``tracking_uri``: resolved (env, config, project file).
    """

    out_dir: Path
    device: str
    tracking_uri: str
    experiment: str
    flush_s: float
    sweep_id: str
    epochs: int
    seed: int
    data: str
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    name_overrides: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    config_yaml: str = ""


def run_job(spec: JobSpec, build_run: Callable[[], Run]) -> float:
    """Train and evaluate one job (every rank calls it); its box AP (0.0 when it has none)."""
    env = init_distributed(resolve_device(spec.device).type)  # one process per GPU under SLURM/torchrun
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    try:
        run = build_run()  # seeds the weights' initialisation (cnet.compose.build_model)
        # every rank skips a finished job, or none does (rank 0 asks the store)
        if broadcast_object(env.is_main and already_finished(spec, run)):
            return float(run.resume.metrics.get("bbox_AP", 0.0)) if run.resume else 0.0
        host_names = provenance.gather_hosts()  # a collective: every rank says where it runs
        if not env.is_main:  # side effects (MLflow, checkpoints, logs) belong to rank 0
            return float(run.fit(None).get("bbox_AP", 0.0))
        return track_and_fit(spec, run, provenance.tags(run.device.type, host_names))
    finally:
        destroy()


def write_job_status(
    out_dir: Path,
    status: str,
    run_id: str | None = None,
    error: BaseException | None = None,
    runs_table: str | None = None,
) -> None:
    """``job_status.json`` in the job folder (atomic), read by the sweep summary; ``runs_table``: the
    link to the experiment's runs table (:mod:`cnet.runs_view`), when known."""
    if not is_main():
        return
    line = (str(error).strip().splitlines() or [""])[0] if error is not None else ""
    body = {"status": status, "run_id": run_id, "error": f"{type(error).__name__}: {line}" if error else None}
    if runs_table:
        body["runs_table"] = runs_table
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".job_status.json.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, out_dir / "job_status.json")


def describe(spec: JobSpec, batch: dict[str, Any], metrics: dict[str, float]) -> str:
    """The run's description (MLflow note): what was trained, on what, and the headline figures."""
    c = spec.choices
    parts = f"{c.get('matching')} matching + {c.get('adaption')} adaption on {c.get('backbone')}"
    text = f"{parts}, {spec.data}, {spec.epochs} epochs, global batch {batch['global_batch']}, seed {spec.seed}."
    if "bbox_AP" in metrics:
        text += f" Box AP {metrics['bbox_AP']:.3f} (AP50 {metrics.get('bbox_AP50', float('nan')):.3f})"
        if "crowd_bbox_AP" in metrics:
            text += f", look-alike crowd {metrics['crowd_bbox_AP']:.3f}"
        if "oracle_bbox_AP" in metrics:
            text += f", matching-only {metrics['oracle_bbox_AP']:.3f}"
        text += "."
    return text


def run_name(spec: JobSpec) -> str:
    """The name that tells runs apart: the parts, the dataset and whatever differs from the defaults
    (``centripetal-none-tiny-synthetic epochs=2 milestones=[1]``)."""
    name = "-".join(spec.choices[k] for k in ("matching", "adaption", "backbone") if k in spec.choices)
    return f"{name}-{spec.data}" + "".join(f" {o}" for o in spec.name_overrides)


def run_tags(spec: JobSpec, run: Run, origin: dict[str, str]) -> dict[str, str]:
    """The MLflow tags of the job: its parts, dataset, sweep, batch and ``origin`` (provenance)."""
    tags = spec.choices | {
        "dataset": spec.data,
        "sweep_id": spec.sweep_id,
        "output_dir": str(spec.out_dir),
        "overrides": " ".join(spec.overrides) or "(defaults)",
        "schedule_epochs": str(spec.epochs),
        "global_batch": str(run.batch["global_batch"]),
        "paper_batch": str(run.batch["global_batch"] == PAPER_GLOBAL_BATCH).lower(),
        "mlflow.source.name": "train.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.note.content": describe(spec, run.batch, {}),
    }
    tags |= origin
    if origin["provenance.git_commit"] != provenance.NONE:
        tags["mlflow.source.git.commit"] = origin["provenance.git_commit"]
    if run.resume_run_id:  # a resumed run keeps the sweep it was launched in
        tags.pop("sweep_id")
    return tags


def already_finished(spec: JobSpec, run: Run) -> bool:
    """A re-launched sweep's job whose checkpoint is complete and whose MLflow run is FINISHED."""
    done = run.resume is not None and run.resume.epoch >= spec.epochs and run.resume_run_id
    if not (done and run_status(spec.tracking_uri, str(run.resume_run_id)) == "FINISHED"):
        return False
    log.info("already finished: MLflow run %s (%s); skipped", run.resume_run_id, spec.out_dir)
    write_job_status(spec.out_dir, "SKIPPED", run.resume_run_id, runs_table=publish_view(spec))
    return True


def track_and_fit(spec: JobSpec, run: Run, origin: dict[str, str]) -> float:
    """Fit ``run`` inside its MLflow run (rank 0): params, tags, dataset, metrics, artifacts.

    ``origin``: the provenance tags of this attempt (a resumed run gets those of its latest attempt)."""
    out_dir, name, tags = spec.out_dir, run_name(spec)[:250], run_tags(spec, run, origin)
    with Tracker(spec.tracking_uri, spec.experiment, run.resume_run_id, name, tags, spec.flush_s) as tracker:
        write_job_status(out_dir, "RUNNING", tracker.run_id)
        tracker.log_text(provenance.package_list(), "provenance/packages.txt", out_dir)
        tracker.log_params(spec.params)
        tracker.log_params({"model.num_parameters": str(run.num_parameters)})
        tracker.log_params({f"batch.{k}": str(v) for k, v in run.batch.items()})
        if run.resume is None:
            tracker.log_dataset(dataset_name(spec.data, run.train_set), run.train_annotations, "train")
            for val_set in run.val_sets.values():
                tracker.log_dataset(dataset_name(spec.data, val_set), Path(val_set.ann_file), "eval")
        try:
            metrics = run.fit(tracker, [EvaluationArtifacts(tracker, out_dir)])
        finally:  # a failed run keeps its log too
            if (out_dir / "train.log").is_file():  # Hydra's job log (hydra.job.name = train)
                tracker.log_artifact(out_dir / "train.log")
        tracker.set_tags({"mlflow.note.content": describe(spec, run.batch, metrics)})
        # at the artifact root (what MLflow's compare view lines up): config, results and error categories
        tracker.log_text(spec.config_yaml, "config.yaml", out_dir)  # resolved: no ${...} left
        for results in sorted([*out_dir.glob("results_*.json"), *out_dir.glob("mispairs_*.json")]):
            tracker.log_artifact(str(results))
        tracker.log_artifacts(str(out_dir / ".hydra"), "hydra")
    url = publish_view(spec)
    write_job_status(out_dir, "FINISHED", tracker.run_id, runs_table=url)
    log.info("MLflow run %s in %s%s", tracker.run_id, spec.tracking_uri, f"; runs table: {url}" if url else "")
    return float(metrics.get("bbox_AP", 0.0))


def publish_view(spec: JobSpec) -> str | None:
    """The ablation view on the run's experiment and the link to it; None (with a warning) when the
    store refuses it: the run itself is complete."""
    try:
        return runs_view.publish(spec.tracking_uri, spec.experiment)
    except Exception as err:
        log.warning("could not store the runs table's view on experiment %s: %s", spec.experiment, err)
        return None


def dataset_name(data: str, dataset: CocoDetection) -> str:
    """The runs table's name of a split: dataset, split and size (``synthetic/train 400 images``,
    ``coco/val2017 5000 images``); the split is the annotation file's (``instances_<split>.json``),
    or its folder's for a generic name (coco_tiny's ``val2017/annotations.json``)."""
    ann_file = Path(dataset.ann_file)
    split = ann_file.stem.removeprefix("instances_")
    if split in ("annotations", "instances"):
        split = ann_file.parent.name
    return f"{data}/{split} {len(dataset)} images"
