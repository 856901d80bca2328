"""Fault injection: `kill -9` at arbitrary points of training (checkpoint writes included) and SIGTERM
during evaluation; restarting the same command always ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cnet.checkpoint import TrainState
from tests.test_train_cli import FAST, ROOT

# 3 epochs of 4 steps, a checkpoint after each: kills land in training, in writes and in start-up
ARGS = [*FAST, "adaption=none", "test.matching_only=false", "schedule.epochs=3", "trainer.checkpoint_every_min=0"]


def start(tmp: Path, run_dir: Path, **extra_env: str) -> subprocess.Popen:
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
    env.update(extra_env)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return TrainState.load(run_dir / "checkpoints" / "last.pt").model


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_ends_with_the_same_weights(tmp_path):
    reference = start(tmp_path, tmp_path / "reference")
    t0 = time.monotonic()
    assert reference.wait(timeout=900) == 0, reference.communicate()[0][-3000:]
    duration = time.monotonic() - t0
    rng = random.Random(0)
    run_dir = tmp_path / "killed"
    for _ in range(3):  # SIGKILL: no handler runs, no cleanup, possibly mid-write
        proc = start(tmp_path, run_dir)
        time.sleep(rng.uniform(0.2, 0.9) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    final = start(tmp_path, run_dir)
    assert final.wait(timeout=900) == 0, final.communicate()[0][-3000:]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # a killed write's temp file is cleaned up
    a, b = weights(tmp_path / "reference"), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "the killed-and-resumed run diverged"


@pytest.mark.slow
def test_sigterm_during_evaluation_marks_the_run_killed_and_it_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(tmp_path, run_dir, SLURM_CLUSTER_NAME="first")  # provenance of each attempt (no SLURM job)
    log = run_dir / "train.log"
    deadline = time.monotonic() + 900
    while not (log.exists() and "epoch 2:" in log.read_text()):  # the last epoch is done: evaluation next
        assert time.monotonic() < deadline and proc.poll() is None, "training did not reach its evaluation"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED" and run.data.tags["provenance.slurm.cluster"] == "first"
    again = start(tmp_path, run_dir, SLURM_CLUSTER_NAME="second")
    assert again.wait(timeout=900) == 0, again.communicate()[0][-3000:]
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and "bbox_AP" in run.data.metrics  # the same run, now complete
    assert run.data.tags["provenance.slurm.cluster"] == "second"  # the latest attempt's provenance
