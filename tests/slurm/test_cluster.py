"""End-to-end checks against a real single-node SLURM cluster (see tests/slurm/cluster.py).

Skipped with a reason when SLURM is not installed; `.ci/run` installs it so CI runs them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from tests.slurm.cluster import LocalSlurm
from tests.slurm.jobs import Resumable, all_reduce_rank

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(120)]


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout_s:.0f} s")
        time.sleep(0.2)


def test_sbatch_wrap_runs_a_job_and_writes_its_output(slurm_cluster: LocalSlurm, tmp_path: Path):
    out = tmp_path / "out-%j.txt"
    job_id = slurm_cluster.run(["sbatch", "--parsable", "-o", str(out), "--wrap", "echo hello $SLURM_JOB_ID"]).strip()
    job_id = job_id.split(";")[0]
    slurm_cluster.wait_job(job_id, timeout_s=60)
    assert (tmp_path / f"out-{job_id}.txt").read_text().strip() == f"hello {job_id}"


def test_submitit_two_tasks_all_reduce_over_gloo(slurm_cluster: LocalSlurm, tmp_path: Path):
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition="debug", tasks_per_node=2, cpus_per_task=1, nodes=1, timeout_min=60)
    job = executor.submit(all_reduce_rank)
    results = job.results()  # one per task
    assert sorted(results) == [(0, 2, 3.0), (1, 2, 3.0)], job.stderr()


def test_checkpointable_job_is_preempted_checkpointed_requeued_and_resumes(slurm_cluster: LocalSlurm, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    # a large time limit: submitit reads USR2 as preemption, not as a time-out
    executor.update_parameters(slurm_partition="debug", tasks_per_node=1, cpus_per_task=1, timeout_min=600)
    job = executor.submit(Resumable(str(work)))
    _wait_for(work / "running", timeout_s=45)
    slurm_cluster.run(["scancel", "--signal=USR2", job.job_id])
    assert job.result() == 2, job.stderr()
    assert (work / "checkpointed").exists()
    assert (work / "starts").read_text() == "2"


def test_hydra_sweep_with_the_slurm_cpu_launcher(slurm_cluster: LocalSlurm, tmp_path: Path):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "app" / "app.py"),
            "-m",
            f"hydra.searchpath=[file://{ROOT / 'conf'}]",
            "hydra/launcher=slurm_cpu",
            f"hydra.sweep.dir={sweep}",
            "x=7",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ranks = sorted(p.name for p in (sweep / "0").glob("rank*.txt"))
    assert ranks == ["rank0.txt", "rank1.txt"], res.stdout + res.stderr
    assert (sweep / "0" / "rank1.txt").read_text().startswith("7 2 ")
