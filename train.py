"""Train and evaluate one configuration: `python train.py [overrides]`, sweeps with `-m`.

Hydra stops here and in cnet.compose: everything below receives plain, typed arguments.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnet.compose import build_job, build_run
from cnet.errors import USER_ERRORS
from cnet.job import run_job, write_job_status

PROJECT_ROOT = Path(__file__).resolve().parent
log = logging.getLogger("cnet")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # `kill`/scancel: unwind like Ctrl-C, so the MLflow run is marked KILLED (the checkpoint of the
    # last finished epoch stays; restarting in the same folder resumes the same run)
    signal.signal(signal.SIGTERM, _interrupt)
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        spec = build_job(cfg, out_dir, dict(hc.runtime.choices), list(hc.overrides.task), PROJECT_ROOT)
        return run_job(spec, lambda: build_run(cfg, out_dir))
    except BaseException as err:
        write_job_status(out_dir, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", error=err)
        if not isinstance(err, USER_ERRORS) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a bug, or a full traceback on request
        log.error("%s: %s", type(err).__name__, err)
        if hc.mode == RunMode.MULTIRUN:
            return float("nan")  # the sweep goes on; its summary lists this job and exits non-zero
        sys.exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
