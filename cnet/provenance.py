"""What a run ran on: library versions, the code's git commit, devices, hosts and SLURM ids.

:func:`tags` returns them as flat MLflow tags ``provenance.<key>`` (every key on every run, ``none``
where it does not apply: the compare view lines the columns up, and a run resumed elsewhere keeps no
stale value of its earlier attempt). :func:`gather_hosts` is a collective: every rank calls it, rank 0
turns the answer into tags. :func:`package_list` is the installed distributions, one
``name==version`` a line (the run's ``provenance/packages.txt`` artifact).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from cnet.distributed import all_gather_objects

PREFIX = "provenance."
NONE = "none"
# MLflow takes 8000 characters per tag value; provenance stays far shorter (a long host list is cut
# at a host, saying how many were left out)
MAX_VALUE_LENGTH = 500
CODE_ROOT = Path(__file__).resolve().parents[1]
# distribution name -> tag key
PACKAGES = {
    "torchvision": "torchvision",
    "mlflow": "mlflow",
    "hydra-core": "hydra",
    "numpy": "numpy",
    "pycocotools": "pycocotools",
}
# tag key -> SLURM variables, the first one set wins (SLURM_NNODES in a step, SLURM_JOB_NUM_NODES in the job)
SLURM_VARS = {
    "slurm.job_id": ("SLURM_JOB_ID",),
    "slurm.array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "slurm.array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "slurm.nodelist": ("SLURM_JOB_NODELIST",),
    "slurm.nnodes": ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
    "slurm.cluster": ("SLURM_CLUSTER_NAME",),
}


def shorten(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``value`` cut to ``limit`` characters (the cut ends with ``...``)."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def counted(names: Iterable[str], limit: int = MAX_VALUE_LENGTH) -> str:
    """Sorted unique names with how often each occurs: ``"node01 (8), node02 (8)"``; past ``limit``
    characters the list ends at a name with ``... (+N more)``."""
    items = [f"{name} ({n})" for name, n in sorted(Counter(names).items())]
    text = ", ".join(items)
    for keep in range(len(items) - 1, -1, -1):
        if len(text) <= limit:
            break
        text = ", ".join([*items[:keep], f"... (+{len(items) - keep} more)"])
    return shorten(text, limit)


def version(distribution: str) -> str:
    """The installed version of ``distribution`` (``none`` when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NONE


def nccl_version() -> str:
    """NCCL's version (``2.27.3``) when CUDA is available, else ``none``."""
    if not torch.cuda.is_available():
        return NONE
    try:
        v = torch.cuda.nccl.version()
    except (RuntimeError, AttributeError):  # a build without NCCL
        return NONE
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def versions() -> dict[str, str]:
    """Python, torch, CUDA, cuDNN, NCCL and the libraries whose behaviour a run depends on."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda or NONE),
        "cudnn": str(cudnn) if cudnn else NONE,
        "nccl": nccl_version(),
    }
    return out | {key: version(dist) for dist, key in PACKAGES.items()}


def git_state(root: Path = CODE_ROOT) -> dict[str, str]:
    """``git_commit`` (the full hash of HEAD) and ``git_dirty`` (``true`` when tracked files differ
    from it) of the checkout at ``root``; both ``none`` outside a git checkout (or without git)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": NONE, "git_dirty": NONE}
    return {"git_commit": commit or NONE, "git_dirty": str(dirty).lower()}


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, e.g. SLURM's ``--cpus-per-task``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def devices(device_type: str) -> dict[str, str]:
    """``device`` (the run's device type), ``gpu`` (the model of every GPU this process sees, with
    their number: ``"NVIDIA H200 (8)"``; ``cpu`` on a CPU run), ``gpu_count`` and ``cpu_count``."""
    names: list[str] = []
    if device_type == "cuda" and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "device": device_type,
        "gpu": counted(names) if names else "cpu",
        "gpu_count": str(len(names)),
        "cpu_count": str(cpu_count()),
    }


def host_name() -> str:
    """This machine's host name."""
    return socket.gethostname() or "unknown"


def gather_hosts() -> list[str]:
    """Every rank's host name, in rank order: a collective, every rank of the job must call it
    (``[this host]`` in a single process)."""
    return [str(h) for h in all_gather_objects(host_name())]


def hosts(names: list[str]) -> dict[str, str]:
    """``world_size`` (the ranks that answered), ``hosts`` (sorted unique host names with the number
    of ranks on each: ``"node07 (8), node08 (8)"``) and ``host_count`` (distinct hosts)."""
    return {"world_size": str(len(names)), "hosts": counted(names), "host_count": str(len(set(names)))}


def slurm_ids(environ: Mapping[str, str]) -> dict[str, str]:
    """The job's SLURM ids (job, array job and task, node list, node count, cluster); ``none`` when unset."""
    out = {}
    for key, names in SLURM_VARS.items():
        out[key] = next((environ[n] for n in names if environ.get(n, "").strip()), NONE)
    return out


def tags(
    device_type: str, host_names: list[str], environ: Mapping[str, str] | None = None, root: Path = CODE_ROOT
) -> dict[str, str]:
    """Every provenance tag of this run (rank 0): ``{"provenance.torch": "2.5.1", ...}``.

    Args:
        device_type: the run's device type (``cuda``, ``cpu``).
        host_names: every rank's host name (:func:`gather_hosts`).
        environ: where the SLURM variables are read (default: ``os.environ``).
        root: the code's checkout, whose commit is recorded.
    """
    found = (
        versions()
        | git_state(root)
        | devices(device_type)
        | hosts(host_names)
        | slurm_ids(os.environ if environ is None else environ)
    )
    return {PREFIX + key: shorten(str(value)) for key, value in found.items()}


def package_list() -> str:
    """The installed distributions, one ``name==version`` a line, sorted (case-insensitively)."""
    lines = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{line}\n" for line in sorted(lines, key=lambda s: (s.lower(), s)))
