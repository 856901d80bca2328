"""Train and evaluate one configuration: `python train.py [overrides]`, sweeps with `-m`.

Hydra stops here and in cnet.compose: everything below receives plain, typed arguments.
"""

from __future__ import annotations

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

from cnet.compose import build_run
from cnet.distributed import destroy, init_distributed
from cnet.errors import USER_ERRORS
from cnet.run import PAPER_GLOBAL_BATCH, Run, resolve_device, seed_everything
from cnet.tracking import Tracker, flatten_params, resolve_tracking_uri

PROJECT_ROOT = Path(__file__).resolve().parent
log = logging.getLogger("cnet")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # `kill`/scancel: unwind like Ctrl-C, so the MLflow run is marked KILLED (the checkpoint of the
    # last finished epoch stays; restarting in the same folder resumes the same run)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return train(cfg)
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # full traceback on request; in a sweep Hydra records the failed job
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def train(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    env = init_distributed(resolve_device(cfg.device).type)  # one process per GPU under SLURM/torchrun
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    try:
        seed_everything(cfg.seed)  # before any module is built: weights init from the seed
        run = build_run(cfg, out_dir)
        if not env.is_main:  # side effects (MLflow, checkpoints, logs) belong to rank 0
            return float(run.fit(None).get("bbox_AP", 0.0))
        return track_and_fit(cfg, hc, out_dir, run)
    finally:
        destroy()


def track_and_fit(cfg: DictConfig, hc: Any, out_dir: Path, run: Run) -> float:
    """Fit ``run`` inside its MLflow run (rank 0): params, tags, metrics, artifacts."""
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v}
    tags = choices | {
        "sweep_id": str(cfg.tracking.sweep_id),
        "output_dir": str(out_dir),
        "overrides": " ".join(hc.overrides.task) or "(defaults)",
        "schedule_epochs": str(cfg.schedule.epochs),
        "global_batch": str(run.batch["global_batch"]),
        "paper_batch": str(run.batch["global_batch"] == PAPER_GLOBAL_BATCH).lower(),
    }
    uri = resolve_tracking_uri(cfg.tracking.uri, PROJECT_ROOT)
    run_name = "-".join(f"{choices[k]}" for k in ("matching", "adaption", "backbone", "data") if k in choices)
    with Tracker(uri, cfg.tracking.experiment, run_id=run.resume_run_id, run_name=run_name, tags=tags) as tracker:
        tracker.log_params(flatten_params(OmegaConf.to_container(cfg, resolve=True)))
        tracker.log_params({"model.num_parameters": str(run.num_parameters)})
        tracker.log_params({f"batch.{k}": str(v) for k, v in run.batch.items()})
        metrics = run.fit(tracker)
        tracker.log_artifacts(str(out_dir / ".hydra"), "hydra")
        for results in sorted(out_dir.glob("results_*.json")):
            tracker.log_artifact(str(results), "results")
    log.info("MLflow run %s in %s", tracker.run_id, uri)
    return float(metrics.get("bbox_AP", 0.0))


if __name__ == "__main__":
    main()
