"""Tracking into the cluster set-up of the README: `mlflow server` on PostgreSQL, started with the
README's own command. Parallel jobs lose nothing; a server that goes away mid-run costs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import MlflowServer, readme_auth_config, readme_server_command
from tests.test_tracking_store import runs_start_on_one_dataset_at_once
from tests.test_train_cli import FAST, ROOT

pytestmark = [pytest.mark.timeout(900)]


def test_the_readme_gives_a_postgresql_backed_server_command():
    argv = readme_server_command()
    assert argv[:2] == ["mlflow", "server"]
    values = dict(zip(argv[2::2], argv[3::2]))
    assert values["--backend-store-uri"].startswith("postgresql://") and "--artifacts-destination" in values
    server = MlflowServer(Path("/nonexistent"), "postgresql://u@h:1/db", "postgresql://u@h:1/auth")
    assert server.argv[1:] == [server.argv[1]] + [
        {
            "--host": "127.0.0.1",
            "--port": str(server.port),
            "--backend-store-uri": "postgresql://u@h:1/db",
            "--artifacts-destination": "/nonexistent/artifacts",
        }.get(argv[i - 1], a)
        for i, a in enumerate(argv)
        if i > 1
    ]  # fmt: skip -- only the four values are ours; every flag is the README's
    # its users: the README's basic_auth.ini with only the database replaced, a fresh admin password
    assert server.env["MLFLOW_AUTH_CONFIG_PATH"] == "/nonexistent/basic_auth.ini"
    assert server.auth_ini.splitlines() == [
        "database_uri = postgresql://u@h:1/auth" if line.startswith("database_uri") else line
        for line in readme_auth_config().splitlines()
    ]
    assert server.admin is not None and server.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == server.admin[1]
    assert server.admin[1] != MlflowServer(Path("/nonexistent"), "postgresql://u@h:1/db", "sqlite://").admin[1]


def _env(tmp: Path, url: str) -> dict[str, str]:
    # MLflow's own HTTP retries wait up to minutes per call; cnet's outbox retries instead
    return dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=url,
                MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", OMP_NUM_THREADS="1")  # fmt: skip


def _runs(url: str, experiment: str) -> list:
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on {url}"
    return client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_four_parallel_sweep_jobs_into_a_postgres_backed_server_all_finish(mlflow_postgres: MlflowServer, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local_cpu", f"hydra.sweep.dir={sweep}", *FAST, "adaption=none",
            "matching=ae1d,ae2d,centripetal,center_regression", "test.matching_only=false",
            "tracking.experiment=parallel-pg"]  # fmt: skip
    env = _env(tmp_path, mlflow_postgres.url)
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=800)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    runs = _runs(mlflow_postgres.url, "parallel-pg")
    assert sorted(r.data.tags["matching"] for r in runs) == ["ae1d", "ae2d", "center_regression", "centripetal"]
    for r in runs:
        assert r.info.status == "FINISHED", r.data.tags["matching"]
        assert r.data.params["seed"] == "0" and len(r.data.params) > 50
        assert not any(k.endswith("._target_") for k in r.data.params)
        assert {"bbox_AP", "crowd_bbox_AP", "train_total", "train_matching"} <= set(r.data.metrics)


@pytest.mark.slow
def test_runs_starting_on_one_dataset_at_once_all_finish_on_the_server(mlflow_postgres: MlflowServer, tmp_path):
    runs_start_on_one_dataset_at_once(mlflow_postgres.url, tmp_path)


def _wait_for(path: Path, text: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and text in path.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"{text!r} not in {path} (rc {proc.poll()}):\n{out[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_training_goes_on_while_the_server_is_down_and_the_run_ends_complete(mlflow_postgres: MlflowServer, tmp_path):
    epochs = 6
    run_dir = tmp_path / "run"
    args = [*FAST, "adaption=none", "data.source.num_train=64", f"schedule.epochs={epochs}", "trainer.eval_every=2",
            "tracking.experiment=outage", "tracking.flush_timeout_min=10", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                            env=_env(tmp_path, mlflow_postgres.url), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = run_dir / "train.log"
    try:
        _wait_for(log, "epoch 0:", 300, proc)
        mlflow_postgres.kill()  # the server goes away mid-run, at once (a graceful stop may outlast the run)
        _wait_for(log, "unreachable", 300, proc)  # noticed, buffered, and training went on:
        _wait_for(log, f"epoch {epochs - 1}:", 300, proc)
        mlflow_postgres.start()  # back on the same port, same database
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not mlflow_postgres.healthy():  # the session's other tests need it
            mlflow_postgres.start()
    assert proc.returncode == 0, out[-3000:]
    assert "is back after" in log.read_text()
    (run,) = _runs(mlflow_postgres.url, "outage")
    client = MlflowClient(mlflow_postgres.url)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_total")] == list(range(1, epochs + 1))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "bbox_AP")] == [2, 4, 6]  # step = epochs done
    assert {"config.yaml", "hydra"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
