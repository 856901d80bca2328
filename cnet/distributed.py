"""Process groups for data-parallel training: SLURM/submitit, torchrun, or a single process.

One process per GPU (or per CPU task in tests). ``init_distributed()`` reads, in order: a
submitit job environment with several tasks (``submitit.helpers.TorchDistributedEnvironment``),
torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``),
else it stays single-process. NCCL on CUDA, gloo on CPU. Rank 0 owns every side effect
(tracking, checkpoints, progress bar); :func:`is_main` tells the others to stay quiet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _submitit_env() -> DistEnv | None:
    """The submitit task's place (SLURM or submitit's local executor), exporting torch's variables."""
    if "SUBMITIT_FOLDER" not in os.environ and "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment()
    except (ImportError, RuntimeError, KeyError):
        return None  # not inside a submitit job (e.g. an interactive SLURM shell)
    if env.world_size <= 1:
        return None
    # MASTER_ADDR (the first host of the node list), MASTER_PORT (from the job id: the same on every
    # node), RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE. CUDA_VISIBLE_DEVICES stays as SLURM set
    # it (all of the node's GPUs, or the task's own with --gpus-per-task): see ``cuda_index``.
    env.export(set_cuda_visible_devices=False, overwrite=True)
    return DistEnv(env.rank, env.world_size, env.local_rank)


def _torchrun_env() -> DistEnv | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return None
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def cuda_index(local_rank: int, device_count: int | None = None) -> int:
    """This process's GPU among those it sees: its local rank when it sees every GPU of the node,
    0 when SLURM bound it to its own (``--gpus-per-task=1``); ``local_rank % device_count``."""
    count = torch.cuda.device_count() if device_count is None else device_count
    return local_rank % max(count, 1)


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group of this job (idempotent); single process when no launcher set one up."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    env = _submitit_env() or _torchrun_env()
    if env is None:
        return DistEnv()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(cuda_index(env.local_rank))
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return env


def current() -> DistEnv:
    """This process's place in an initialised group (or the single-process default)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistEnv()


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    env = current()
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
