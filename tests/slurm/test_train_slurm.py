"""`python train.py -m hydra/launcher=slurm_cpu` on the real test cluster: 2-task DDP jobs, and a job
pre-empted mid-epoch (SIGUSR2) that is requeued and resumes into the same MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cnet.checkpoint import TrainState
from tests.slurm.cluster import LocalSlurm
from tests.test_train_cli import FAST, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(900)]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def environment(tmp: Path) -> dict[str, str]:
    uri = f"sqlite:///{tmp}/mlflow.db"
    MlflowClient(uri).search_experiments()  # create the store once, before parallel jobs write to it
    return dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")


def finished_runs(tmp: Path) -> dict[str, dict[str, float]]:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    return {r.data.tags["output_dir"]: r.data.metrics for r in runs}


def torchrun(tmp: Path, run_dir: Path, args: list[str]) -> None:
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *args,
        f"hydra.run.dir={run_dir}",
    ]
    res = subprocess.run(cmd, cwd=tmp, env=environment(tmp), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]


def test_two_ddp_jobs_through_slurm_match_the_same_jobs_run_locally(slurm_cluster: LocalSlurm, tmp_path: Path):
    common = [*FAST, "adaption=none", "trainer.batch_size=2", "test.matching_only=false"]
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={sweep}",
         *common, "seed=0,1"],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for seed in (0, 1):
        torchrun(tmp_path, tmp_path / f"local{seed}", [*common, f"seed={seed}"])
    runs = finished_runs(tmp_path)
    assert len(runs) == 4  # one MLflow run per job: the second task of each job tracked nothing
    for job, seed in ((0, 0), (1, 1)):
        slurm, local = runs[str(sweep / str(job))], runs[str(tmp_path / f"local{seed}")]
        figures = sorted(k for k in slurm if k.startswith("bbox_"))
        assert figures and {k: slurm[k] for k in figures} == {k: local[k] for k in figures}


def _wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path} after {timeout_s:.0f} s")
        time.sleep(0.2)


def test_job_preempted_mid_epoch_is_requeued_and_resumes_into_the_same_run(slurm_cluster: LocalSlurm, tmp_path: Path):
    # 192 images, 2 tasks x 2 images: 48 steps per epoch (about 3 s on an idle machine, where 48 images
    # took 0.8 s and finished first), so the notice sent 0.5 s into epoch 1 lands mid-epoch
    args = [*FAST, "adaption=none", "trainer.batch_size=2", "data.source.num_train=192", "schedule.epochs=2",
            "test.matching_only=false", "hydra.launcher.timeout_min=600"]  # fmt: skip
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={sweep}", *args],
        cwd=tmp_path, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log = sweep / "0" / "train.log"
    _wait_for_text(log, "epoch 0:", timeout_s=400)  # one epoch done: the handler is installed
    job_id = slurm_cluster.run(["squeue", "-h", "-o", "%i"]).split()[0]
    time.sleep(0.5)
    slurm_cluster.run(["scancel", "--signal=USR2", job_id])  # SLURM's pre-emption notice
    out, _ = proc.communicate(timeout=800)
    assert proc.returncode == 0, out[-4000:]
    text = log.read_text()
    assert "mid-epoch checkpoint: epoch 1" in text and "resuming" in text, text[-3000:]
    runs = finished_runs(tmp_path)
    assert len(runs) == 1  # the requeued job continued the same MLflow run
    torchrun(tmp_path, tmp_path / "local", args[:-1])
    a = TrainState.load(sweep / "0" / "checkpoints" / "last.pt").model
    b = TrainState.load(tmp_path / "local" / "checkpoints" / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a), "the pre-empted job ended with other weights"
