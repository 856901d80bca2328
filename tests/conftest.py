"""Shared fixtures: paths and small helpers used across the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from tests.servers import MlflowServer
    from tests.slurm.cluster import LocalSlurm

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = ROOT.parent / "shared" / "data" / "coco_tiny"


# under pytest-xdist (`make test` runs 2 workers on 2 cores) each worker computes on one thread
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)
    yield


# session-wide services: the tests sharing one run on one xdist worker (`--dist loadgroup`), so a
# session starts one SLURM cluster and one tracking server, not one per worker
SHARED_SERVICES = ("slurm_cluster", "mlflow_postgres")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for service in SHARED_SERVICES:
            if service in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(service))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset generated once per test session."""
    from cnet.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synth"), seed=0, num_train=24, num_val=8, num_val_crowd=4, image_size=96
    )


SLURM_SKIP_REASON = "SLURM not installed (apt-get install slurmctld slurmd slurm-client munge)"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[LocalSlurm]:
    """A real single-node SLURM cluster (slurmctld + slurmd) for the whole session, or a skip.

    While it runs, SLURM_CONF points the clients (sbatch, squeue, submitit) at it, and PYTHONPATH
    starts with the repository root so jobs can unpickle functions from `tests.slurm.jobs`.
    """
    from tests.slurm.cluster import LocalSlurm, available

    ok, _ = available()
    if not ok:
        pytest.skip(SLURM_SKIP_REASON)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PYTHONPATH")}
    try:
        cluster.start()
        os.environ.update(cluster.env())
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
        yield cluster
    finally:
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


MLFLOW_JOB_USER = "cnet-job"  # the account the tests' jobs log in with (mlflow_postgres)
MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="session")
def mlflow_postgres(tmp_path_factory) -> Iterator[MlflowServer]:
    """The README's ``mlflow server`` (with users: ``--app-name basic-auth``, its users on PostgreSQL
    too) on a private PostgreSQL cluster, for the session, or a skip.

    While it runs, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD log in as the account
    ``cnet-job`` (``server.users``), as the README's job environment does: the tests' clients and
    the jobs they start inherit them. The cluster's folder is a fresh one under /tmp: PostgreSQL runs
    as user postgres when we are root, and pytest's own folders are closed to other users.
    """
    import shutil
    import tempfile

    from tests.servers import LocalPostgres, MlflowServer, postgres_available

    ok, reason = postgres_available()
    if not ok:
        pytest.skip(reason)
    db = LocalPostgres(Path(tempfile.mkdtemp(prefix="cnet-postgres-")))
    server = None
    saved = {key: os.environ.get(key) for key in MLFLOW_LOGIN}
    try:
        db.start()
        server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), db.uri, db.auth_uri).start()
        os.environ.update(zip(MLFLOW_LOGIN, (MLFLOW_JOB_USER, server.add_user(MLFLOW_JOB_USER))))
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if server is not None:
            server.stop()
        db.stop()
        shutil.rmtree(db.folder, ignore_errors=True)
