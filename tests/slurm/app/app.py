"""A tiny Hydra app for the SLURM launcher test: each task writes `rank<global rank>.txt` in its job dir."""

from __future__ import annotations

from pathlib import Path

import hydra
import submitit
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> int:
    env = submitit.JobEnvironment()
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / f"rank{env.global_rank}.txt").write_text(f"{cfg.x} {env.num_tasks} {env.job_id}")
    return int(cfg.x)


if __name__ == "__main__":
    main()
