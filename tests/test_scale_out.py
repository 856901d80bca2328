"""Every option on the cluster path: each YAML of ``conf/matching``, ``conf/adaption`` and
``conf/mask_head`` (picked up by itself, so a new option cannot skip it) trains through 2-process DDP
(torchrun, gloo) for 2 epochs, combined with options of the other groups and with fp32, bf16, fp16
and bf16 + accumulation (7 jobs, not one per option: every job pays 3 interpreter start-ups), and a run
killed mid-epoch under DDP resumes to the uninterrupted run's weights. Each job must end FINISHED
with exactly one MLflow run (rank 1 tracks nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnet.checkpoint import TrainState
from tests.test_train_cli import FAST, ROOT

TORCHRUN = Path(sys.executable).with_name("torchrun")
CONF = ROOT / "conf"
# 2 epochs of 2 steps per process (16 images, batch 4 x 2 processes); the LR drops after the first
EPOCHS = ["schedule.epochs=2", "schedule.milestones=[1]", "schedule.warmup_iters=0"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# a mask head that switches on in the second epoch: idle in the first (no gradient), then trained
PER_OPTION = {"mask_head=centripetal_mask": ["mask_head.start_epoch=1"]}
# the trainer's variants, each with every part: precision, and accumulation (2 micro-batches per step)
# (in this order the mask head meets fp32 and bf16 + accumulation, the Table 3/6 runs' setting)
TRAINER = {
    "fp32": [], "fp16": ["trainer.precision=fp16"],
    "bf16+accumulation=2": ["trainer.precision=bf16", "trainer.batch_size=2", "trainer.global_batch=8"],
    "bf16": ["trainer.precision=bf16"],
}  # fmt: skip
GROUPS = ("matching", "adaption", "mask_head")


def combined_jobs() -> list[tuple[list[str], list[str]]]:
    """Jobs that together run every option of every group and every trainer variant, each option
    with a different partner in the other groups (job i takes option i mod n of each): the longest
    group sets the count, so a new option adds no job unless it lengthens that group."""
    names = {g: [f"{g}={n}" for n in options(g)] for g in GROUPS} | {"trainer": list(TRAINER)}
    jobs = []
    for i in range(max(len(v) for v in names.values())):
        picked = [v[i % len(v)] for v in names.values()]
        overrides = [o for p in picked[:-1] for o in (p, *PER_OPTION.get(p, []))] + TRAINER[picked[-1]]
        jobs.append((picked, overrides))
    return jobs


MATRIX = [pytest.param(overrides, id=",".join(picked)) for picked, overrides in combined_jobs()]


def ddp_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *FAST, *EPOCHS,
            *overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip


def job_env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                OMP_NUM_THREADS="1")  # fmt: skip


def finished_runs(tmp: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
@pytest.mark.parametrize("overrides", MATRIX)
def test_every_option_trains_through_two_process_ddp(tmp_path, overrides):
    res = subprocess.run(ddp_command(tmp_path / "run", overrides), cwd=tmp_path, env=job_env(tmp_path),
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "world_size 2" in res.stdout
    runs = finished_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [r.info.status for r in runs]
    assert runs[0].data.params["batch.world_size"] == "2"
    assert TrainState.load(tmp_path / "run/checkpoints/last.pt").epoch == 2


def test_the_matrix_covers_every_option_of_the_groups():
    picked = {p for ids, _ in combined_jobs() for p in ids}
    for group in GROUPS:
        names = options(group)
        assert names, f"no options found in conf/{group}"
        assert {f"{group}={n}" for n in names} <= picked
    assert set(TRAINER) <= picked
    # each job sets one option per group, so no two options of a group meet in a job
    assert all(sum(o.startswith(f"{g}=") for o in ov) == 1 for _, ov in combined_jobs() for g in GROUPS)


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_a_ddp_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    # a checkpoint after every optimizer step (mid-epoch), so a kill lands after one
    every_step = ["trainer.checkpoint_every_min=0.00001", "trainer.batch_size=2", "schedule.warmup_iters=2"]
    env = job_env(tmp_path)
    ref = subprocess.run(ddp_command(tmp_path / "reference", every_step), cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-4000:]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(ddp_command(run_dir, every_step), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt, deadline = run_dir / "checkpoints" / "last.pt", time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:  # the first mid-epoch checkpoint
        if ckpt.exists() and TrainState.load(ckpt).batch_in_epoch > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a mid-epoch checkpoint could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, no handler runs
    proc.wait(timeout=60)
    killed_at = TrainState.load(ckpt)
    assert killed_at.epoch < 2 and killed_at.batch_in_epoch > 0
    res = subprocess.run(ddp_command(run_dir, every_step), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resuming" in res.stdout + res.stderr
    a, b = TrainState.load(tmp_path / "reference/checkpoints/last.pt"), TrainState.load(ckpt)
    assert (a.epoch, a.step) == (b.epoch, b.step) == (2, 8)
    worst = max(((a.model[k] - b.model[k]).abs().max()).item() for k in a.model)
    assert worst <= 1e-6, f"the killed-and-resumed DDP run diverged by {worst:.3g}"
    runs = finished_runs(tmp_path)  # reference + the killed run, resumed into its own MLflow run
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"], [r.info.status for r in runs]
    again = subprocess.run(ddp_command(run_dir, every_step), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]  # a finished job re-launched: both ranks skip it
    assert "already finished" in again.stdout + again.stderr and len(finished_runs(tmp_path)) == 2
