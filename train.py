"""Train and evaluate one configuration: `python train.py [overrides]`, sweeps with `-m`.

Hydra stops here and in cnet.compose: everything below receives plain, typed arguments.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnet import provenance
from cnet.compose import build_run
from cnet.distributed import broadcast_object, destroy, init_distributed, is_main
from cnet.errors import USER_ERRORS
from cnet.run import PAPER_GLOBAL_BATCH, Run, resolve_device
from cnet.tracking import Tracker, flatten_params, resolve_tracking_uri, run_status

PROJECT_ROOT = Path(__file__).resolve().parent
log = logging.getLogger("cnet")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # `kill`/scancel: unwind like Ctrl-C, so the MLflow run is marked KILLED (the checkpoint of the
    # last finished epoch stays; restarting in the same folder resumes the same run)
    signal.signal(signal.SIGTERM, _interrupt)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train(cfg)
    except BaseException as err:
        write_job_status(out_dir, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", error=err)
        if not isinstance(err, USER_ERRORS) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a bug, or a full traceback on request
        log.error("%s: %s", type(err).__name__, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return float("nan")  # the sweep goes on; its summary lists this job and exits non-zero
        sys.exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_job_status(out_dir: Path, status: str, run_id: str | None = None, error: BaseException | None = None) -> None:
    """``job_status.json`` in the job folder (atomic), read by the sweep summary."""
    if not is_main():
        return
    line = (str(error).strip().splitlines() or [""])[0] if error is not None else ""
    body = {"status": status, "run_id": run_id, "error": f"{type(error).__name__}: {line}" if error else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".job_status.json.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, out_dir / "job_status.json")


def train(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    env = init_distributed(resolve_device(cfg.device).type)  # one process per GPU under SLURM/torchrun
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    try:
        run = build_run(cfg, out_dir)  # seeds the weights' initialisation (cnet.compose.build_model)
        # every rank skips a finished job, or none does (rank 0 asks the store)
        if broadcast_object(env.is_main and already_finished(cfg, run, out_dir)):
            return float(run.resume.metrics.get("bbox_AP", 0.0)) if run.resume else 0.0
        host_names = provenance.gather_hosts()  # a collective: every rank says where it runs
        if not env.is_main:  # side effects (MLflow, checkpoints, logs) belong to rank 0
            return float(run.fit(None).get("bbox_AP", 0.0))
        return track_and_fit(cfg, hc, out_dir, run, provenance.tags(run.device.type, host_names))
    finally:
        destroy()


def dataset_name(cfg: DictConfig, choice: str) -> str:
    """``data.name``, else the dataset folder's name (``coco_tiny``, ``coco``), else the option."""
    root = OmegaConf.select(cfg, "data.root", default=None)
    return str(OmegaConf.select(cfg, "data.name", default=None) or (Path(str(root)).name if root else choice))


def describe(
    cfg: DictConfig, choices: dict[str, str], data: str, batch: dict[str, Any], metrics: dict[str, float]
) -> str:
    """The run's description (MLflow note): what was trained, on what, and the headline figures."""
    parts = f"{choices.get('matching')} matching + {choices.get('adaption')} adaption on {choices.get('backbone')}"
    text = f"{parts}, {data}, {cfg.schedule.epochs} epochs, global batch {batch['global_batch']}, seed {cfg.seed}."
    if "bbox_AP" in metrics:
        text += f" Box AP {metrics['bbox_AP']:.3f} (AP50 {metrics.get('bbox_AP50', float('nan')):.3f})"
        if "crowd_bbox_AP" in metrics:
            text += f", look-alike crowd {metrics['crowd_bbox_AP']:.3f}"
        if "oracle_bbox_AP" in metrics:
            text += f", matching-only {metrics['oracle_bbox_AP']:.3f}"
        text += "."
    return text


def already_finished(cfg: DictConfig, run: Run, out_dir: Path) -> bool:
    """A re-launched sweep's job whose checkpoint is complete and whose MLflow run is FINISHED."""
    done = run.resume is not None and run.resume.epoch >= cfg.schedule.epochs and run.resume_run_id
    uri = resolve_tracking_uri(cfg.tracking.uri, PROJECT_ROOT)
    if not (done and run_status(uri, str(run.resume_run_id)) == "FINISHED"):
        return False
    log.info("already finished: MLflow run %s (%s); skipped", run.resume_run_id, out_dir)
    write_job_status(out_dir, "SKIPPED", run.resume_run_id)
    return True


def track_and_fit(cfg: DictConfig, hc: Any, out_dir: Path, run: Run, origin: dict[str, str]) -> float:
    """Fit ``run`` inside its MLflow run (rank 0): params, tags, dataset, metrics, artifacts.

    ``origin``: the provenance tags of this attempt (a resumed run gets those of its latest attempt)."""
    uri = resolve_tracking_uri(cfg.tracking.uri, PROJECT_ROOT)
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v}
    data = dataset_name(cfg, choices.get("data", "data"))
    overrides = [o for o in hc.overrides.task if not o.split("=")[0].lstrip("+~").startswith(("hydra", "data.root"))]
    tags = choices | {
        "dataset": data,
        "sweep_id": str(cfg.tracking.sweep_id),
        "output_dir": str(out_dir),
        "overrides": " ".join(hc.overrides.task) or "(defaults)",
        "schedule_epochs": str(cfg.schedule.epochs),
        "global_batch": str(run.batch["global_batch"]),
        "paper_batch": str(run.batch["global_batch"] == PAPER_GLOBAL_BATCH).lower(),
        "mlflow.source.name": "train.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.note.content": describe(cfg, choices, data, run.batch, {}),
    }
    tags |= origin
    if origin["provenance.git_commit"] != provenance.NONE:
        tags["mlflow.source.git.commit"] = origin["provenance.git_commit"]
    # the name tells runs apart: the parts, the dataset and whatever differs from the defaults
    run_name = "-".join(choices[k] for k in ("matching", "adaption", "backbone") if k in choices) + f"-{data}"
    rest = [o for o in overrides if o.split("=")[0] not in ("matching", "adaption", "backbone", "data")]
    run_name += "".join(f" {o.split('=')[0].rsplit('.', 1)[-1]}={o.split('=', 1)[-1]}" for o in rest)  # leaf=value
    if run.resume_run_id:  # a resumed run keeps the sweep it was launched in
        tags.pop("sweep_id")
    flush_s = 60.0 * float(cfg.tracking.flush_timeout_min)
    with Tracker(uri, cfg.tracking.experiment, run.resume_run_id, run_name[:250], tags, flush_s) as tracker:
        write_job_status(out_dir, "RUNNING", tracker.run_id)
        tracker.log_text(provenance.package_list(), "provenance/packages.txt", out_dir)
        params = flatten_params(OmegaConf.to_container(cfg, resolve=True))
        params.pop("tracking.sweep_id")  # a time stamp of the launch: a tag, and may differ on resume
        params.pop("tracking.flush_timeout_min")  # how to wait for the store, not what was trained
        tracker.log_params(params)
        tracker.log_params({"model.num_parameters": str(run.num_parameters)})
        tracker.log_params({f"batch.{k}": str(v) for k, v in run.batch.items()})
        if run.resume is None:
            tracker.log_dataset(data, run.train_annotations, "train")
        metrics = run.fit(tracker)
        tracker.set_tags({"mlflow.note.content": describe(cfg, choices, data, run.batch, metrics)})
        # at the artifact root (what MLflow's compare view lines up): config, results and error categories
        tracker.log_artifact(str(out_dir / ".hydra" / "config.yaml"))
        for results in sorted([*out_dir.glob("results_*.json"), *out_dir.glob("mispairs_*.json")]):
            tracker.log_artifact(str(results))
        tracker.log_artifacts(str(out_dir / ".hydra"), "hydra")
    write_job_status(out_dir, "FINISHED", tracker.run_id)
    log.info("MLflow run %s in %s", tracker.run_id, uri)
    return float(metrics.get("bbox_AP", 0.0))


if __name__ == "__main__":
    main()
