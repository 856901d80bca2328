"""Run provenance: the tags of a faked 2-node SLURM array job on faked GPUs, exactly; a CPU run outside
SLURM; git state; host lists kept under MLflow's tag limit; the package list. (End to end: the tiny
runs of test_train_cli, test_distributed (2-process torchrun), test_faults (resume) and test_tool_test
read the tags and ``provenance/packages.txt`` back from their MLflow store.)"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from cnet import provenance

GPU = "NVIDIA H100 80GB HBM3"


def library_versions() -> dict[str, str]:
    """What the tags must say of the libraries, read independently of cnet.provenance."""
    dist = {"torchvision": "torchvision", "mlflow": "mlflow", "hydra": "hydra-core", "numpy": "numpy"}
    out = {f"provenance.{k}": importlib.metadata.version(v) for k, v in dist.items()}
    try:
        out["provenance.pycocotools"] = importlib.metadata.version("pycocotools")
    except importlib.metadata.PackageNotFoundError:
        out["provenance.pycocotools"] = "none"
    return out | {"provenance.python": platform.python_version(), "provenance.torch": torch.__version__}


def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(key, raising=False)


def git_repo(path: Path) -> str:
    """A checkout with one commit of ``a.txt``; its commit hash."""
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "a.txt").write_text("a\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node with two H100s, CUDA 12.4, cuDNN 9.1, NCCL 2.21.5 and 16 CPUs for this process."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: [GPU, GPU][i])
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 21, 5))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)


def test_tags_of_a_two_node_array_job_on_gpus(monkeypatch, two_gpus, tmp_path):
    no_slurm(monkeypatch)
    for key, value in {
        "SLURM_JOB_ID": "5003",
        "SLURM_ARRAY_JOB_ID": "5000",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_JOB_NODELIST": "gpu-node[07-08]",
        "SLURM_JOB_NUM_NODES": "2",  # the job's count; no SLURM_NNODES outside a step
        "SLURM_CLUSTER_NAME": "hpc",
        "SLURM_PROCID": "0",  # not provenance: where this task sits, not what the job ran on
    }.items():
        monkeypatch.setenv(key, value)
    commit = git_repo(tmp_path / "code")
    hosts = ["gpu-node08"] * 2 + ["gpu-node07"] * 2  # in rank order, as all_gather returns them
    assert provenance.tags("cuda", hosts, root=tmp_path / "code") == library_versions() | {
        "provenance.cuda": "12.4",
        "provenance.cudnn": "90100",
        "provenance.nccl": "2.21.5",
        "provenance.git_commit": commit,
        "provenance.git_dirty": "false",
        "provenance.device": "cuda",
        "provenance.gpu": f"{GPU} (2)",
        "provenance.gpu_count": "2",
        "provenance.cpu_count": "16",
        "provenance.world_size": "4",
        "provenance.hosts": "gpu-node07 (2), gpu-node08 (2)",
        "provenance.host_count": "2",
        "provenance.slurm.job_id": "5003",
        "provenance.slurm.array_job_id": "5000",
        "provenance.slurm.array_task_id": "3",
        "provenance.slurm.nodelist": "gpu-node[07-08]",
        "provenance.slurm.nnodes": "2",
        "provenance.slurm.cluster": "hpc",
    }
    monkeypatch.setenv("SLURM_NNODES", "1")  # inside a one-node step: the step's count
    assert provenance.tags("cuda", hosts, root=tmp_path / "code")["provenance.slurm.nnodes"] == "1"


def test_a_cpu_run_outside_slurm_says_none_where_nothing_applies(monkeypatch, two_gpus, tmp_path):
    no_slurm(monkeypatch)
    tags = provenance.tags("cpu", ["laptop"], root=tmp_path)  # tmp_path: not a git checkout
    assert {k: v for k, v in tags.items() if k.startswith("provenance.slurm.")} == {
        f"provenance.slurm.{k}": "none"
        for k in ("job_id", "array_job_id", "array_task_id", "nodelist", "nnodes", "cluster")
    }
    assert (tags["provenance.device"], tags["provenance.gpu"], tags["provenance.gpu_count"]) == ("cpu", "cpu", "0")
    assert (tags["provenance.git_commit"], tags["provenance.git_dirty"]) == ("none", "none")
    assert (tags["provenance.world_size"], tags["provenance.hosts"], tags["provenance.host_count"]) == (
        "1",
        "laptop (1)",
        "1",
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert provenance.tags("cpu", ["laptop"], root=tmp_path)["provenance.nccl"] == "none"


def test_a_modified_tracked_file_makes_the_checkout_dirty_an_untracked_one_does_not(tmp_path):
    commit = git_repo(tmp_path)
    (tmp_path / "new.txt").write_text("untracked\n")
    assert provenance.git_state(tmp_path) == {"git_commit": commit, "git_dirty": "false"}
    (tmp_path / "a.txt").write_text("changed\n")
    assert provenance.git_state(tmp_path) == {"git_commit": commit, "git_dirty": "true"}


def test_a_long_host_list_is_cut_at_a_host_below_the_tag_limit():
    assert provenance.MAX_VALUE_LENGTH < MAX_TAG_VAL_LENGTH
    names = [f"node{i:04d}.cluster.example.org" for i in range(300) for _ in range(8)]
    tags = provenance.hosts(names)
    assert len(tags["hosts"]) <= provenance.MAX_VALUE_LENGTH
    assert tags["hosts"].startswith("node0000.cluster.example.org (8), node0001.cluster.example.org (8), ")
    shown = tags["hosts"].count(" (8)")
    assert tags["hosts"].endswith(f", ... (+{300 - shown} more)") and shown > 5
    assert (tags["world_size"], tags["host_count"]) == ("2400", "300")  # the counts stay exact


def test_the_package_list_is_sorted_name_version_lines_with_torch():
    text = provenance.package_list()
    lines = text.splitlines()
    assert text.endswith("\n") and all("==" in line for line in lines)
    assert lines == sorted(set(lines), key=lambda s: (s.lower(), s))
    assert f"torch=={importlib.metadata.version('torch')}" in lines
    assert f"mlflow=={importlib.metadata.version('mlflow')}" in lines


def assert_provenance(uri: str, run_id: str, world_size: int, tmp: Path) -> dict[str, str]:
    """The MLflow run ``run_id`` of a CPU job on this machine with ``world_size`` processes carries
    the provenance tags and ``provenance/packages.txt``; returns its tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert tags["provenance.world_size"] == str(world_size)
    assert tags["provenance.hosts"] == f"{provenance.host_name()} ({world_size})"  # every rank, one machine
    assert tags["provenance.host_count"] == "1"
    assert (tags["provenance.device"], tags["provenance.gpu"]) == ("cpu", "cpu")
    assert tags["provenance.torch"] == torch.__version__ and tags["provenance.python"] == platform.python_version()
    assert tags["provenance.git_commit"] == (commit.stdout.strip() or "none")
    assert {k for k in tags if k.startswith("provenance.slurm.")} == {
        f"provenance.slurm.{k}" for k in ("job_id", "array_job_id", "array_task_id", "nodelist", "nnodes", "cluster")
    }
    assert all(len(v) <= provenance.MAX_VALUE_LENGTH for k, v in tags.items() if k.startswith("provenance."))
    local = client.download_artifacts(run_id, "provenance/packages.txt", str(tmp))
    assert f"torch=={importlib.metadata.version('torch')}" in Path(local).read_text().splitlines()
    return tags
