"""Where a process sits in a multi-node job: the variables SLURM sets for 2 nodes x 8 tasks (as
submitit's sbatch script runs them), torchrun's, and which GPU each task takes."""

from __future__ import annotations

import os

import pytest

from cnet.distributed import DistEnv, _submitit_env, _torchrun_env, cuda_index

DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def slurm_task(monkeypatch: pytest.MonkeyPatch, procid: int, cuda_visible: str | None = None) -> None:
    """The environment of task ``procid`` of job 4242: 16 tasks on gpu-node[07-08], 8 per node
    (srun's block distribution: tasks 0-7 on gpu-node07, 8-15 on gpu-node08)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(key, raising=False)
    # submitit's export() writes these straight into os.environ: register each with monkeypatch
    # (set, then delete) so the undo removes them, else later subprocesses think they are rank N of 16
    for key in DIST_VARS:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    values = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "16",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node[07-08]",
        "SLURM_NODEID": str(procid // 8),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % 8),
        "SUBMITIT_FOLDER": "/shared/sweeps/.submitit/%j",
        "SUBMITIT_EXECUTOR": "slurm",  # submitit's sbatch script exports it
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    if cuda_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)


@pytest.mark.parametrize(("procid", "node", "local"), [(0, 0, 0), (7, 0, 7), (8, 1, 0), (11, 1, 3), (15, 1, 7)])
def test_two_nodes_of_eight_tasks_read_from_slurm(monkeypatch, procid, node, local):
    slurm_task(monkeypatch, procid, cuda_visible="0,1,2,3,4,5,6,7")
    assert _submitit_env() == DistEnv(rank=procid, world_size=16, local_rank=local)
    # torch's env:// rendezvous: every task meets on the first node of the list
    assert os.environ["MASTER_ADDR"] == "gpu-node07"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == (str(procid), "16")
    assert (os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]) == (str(local), "8")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # SLURM's binding is kept
    assert _torchrun_env() == DistEnv(procid, 16, local)  # what was exported reads back the same


def test_every_task_of_a_job_agrees_on_the_master_port(monkeypatch):
    ports = set()
    for procid in (0, 5, 8, 15):
        slurm_task(monkeypatch, procid)
        _submitit_env()
        ports.add(os.environ["MASTER_PORT"])
    assert len(ports) == 1 and 20000 <= int(ports.pop()) <= 60000


def test_a_job_of_one_task_stays_single_process(monkeypatch):
    slurm_task(monkeypatch, 0)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert _submitit_env() is None
    assert "RANK" not in os.environ


@pytest.mark.parametrize(
    ("local_rank", "visible", "expected"),
    [
        (3, 8, 3),  # the task sees the node's 8 GPUs: its own is its local rank
        (7, 8, 7),
        (3, 1, 0),  # --gpus-per-task=1: SLURM shows the task only its own GPU
        (5, 4, 1),  # 2 GPUs per task of 4 visible (not a layout cnet makes, but never out of range)
        (2, 0, 0),  # no GPU (a CPU job): index 0, unused
    ],
)
def test_each_task_takes_a_gpu_it_can_see(local_rank, visible, expected):
    assert cuda_index(local_rank, visible) == expected


def test_no_rendezvous_variable_outlives_a_test():
    # runs after the SLURM tests above: a leaked RANK/WORLD_SIZE makes every later train.py
    # subprocess wait for 15 peers (or clash on MASTER_PORT), as CI once saw
    assert not any(key in os.environ for key in DIST_VARS)
