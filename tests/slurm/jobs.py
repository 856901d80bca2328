"""Functions the SLURM tests submit. They live in an importable module (not the test file) so that
the pickles submitit writes can be loaded on the node (`tests.slurm.jobs` from the repository root)."""

from __future__ import annotations

import time
from pathlib import Path

import submitit


def all_reduce_rank() -> tuple[int, int, float]:
    """Join a gloo process group over the job's tasks and all-reduce (rank + 1); returns (rank, world, sum)."""
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    try:
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
        return env.rank, env.world_size, float(value.item())
    finally:
        dist.destroy_process_group()


class Resumable(submitit.helpers.Checkpointable):
    """Counts its starts in `folder`; the first start waits to be preempted, `checkpoint()` leaves a marker."""

    def __init__(self, folder: str, wait_s: float = 90.0) -> None:
        self.folder = folder
        self.wait_s = wait_s

    def __call__(self) -> int:
        folder = Path(self.folder)
        starts_file = folder / "starts"
        starts = int(starts_file.read_text()) + 1 if starts_file.exists() else 1
        starts_file.write_text(str(starts))
        if not (folder / "checkpointed").exists():
            (folder / "running").write_text(str(starts))
            deadline = time.monotonic() + self.wait_s
            while time.monotonic() < deadline:  # the test preempts us here
                time.sleep(0.2)
            raise TimeoutError("the job was never preempted")
        return starts

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        (Path(self.folder) / "checkpointed").write_text("1")
        return super().checkpoint(*args, **kwargs)
