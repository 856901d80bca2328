"""The README's tracking server lets in its users only (`mlflow server --app-name basic-auth`, users on
PostgreSQL): a job that logs in tracks as before and its password is nowhere in the run; an anonymous
job, a wrong password and a user without permission are refused in one line and write nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from cnet.errors import TrackingAuthError
from cnet.tracking import Tracker
from tests.conftest import MLFLOW_JOB_USER, MLFLOW_LOGIN
from tests.servers import MlflowServer, credentials_file
from tests.test_tracking_server import _env, _runs
from tests.test_train_cli import FAST, ROOT

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # each needs the server (~1 min to start)


@contextmanager
def logged_in(username: str | None, password: str | None) -> Iterator[None]:
    """MLflow's login variables of this process set to ``username``/``password`` (unset for None)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in zip(MLFLOW_LOGIN, (username, password)):
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        yield


def everything(server: MlflowServer) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The server's experiments and runs (name / id, status), deleted ones too, as its admin sees them."""
    assert server.admin is not None
    with logged_in(*server.admin):
        client = MlflowClient(server.url)
        exps = client.search_experiments(view_type=ViewType.ALL)
        runs = client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)
    return sorted(e.name for e in exps), sorted((r.info.experiment_id, r.info.run_id, r.info.status) for r in runs)


def _train(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, "adaption=none", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=800)  # fmt: skip


def test_a_job_that_logs_in_tracks_and_its_password_is_nowhere_in_the_run(mlflow_postgres, tmp_path):
    password = mlflow_postgres.users[MLFLOW_JOB_USER]
    run_dir = tmp_path / "run"
    res = _train(["tracking.experiment=logged-in", f"hydra.run.dir={run_dir}"], _env(tmp_path, mlflow_postgres.url),
                 tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (run,) = _runs(mlflow_postgres.url, "logged-in")
    assert run.info.status == "FINISHED" and len(run.data.params) > 50
    assert {"bbox_AP", "train_total"} <= set(run.data.metrics)
    # the experiment's creator manages it (README: a user writes to the experiments they created)
    assert mlflow_postgres.admin is not None
    with logged_in(*mlflow_postgres.admin):
        auth = get_app_client("basic-auth", tracking_uri=mlflow_postgres.url)
        assert auth.get_user_permission(MLFLOW_JOB_USER, "experiment", run.info.experiment_id).permission == "MANAGE"
    # the password: in no param, tag, log line, artifact or file of the job folder
    records = [*run.data.params.items(), *run.data.tags.items()]
    assert [k for k, v in records if password in k or password in v] == []
    assert password not in res.stdout + res.stderr
    artifacts = Path(MlflowClient(mlflow_postgres.url).download_artifacts(run.info.run_id, "", str(tmp_path / "art")))
    files = [p for p in [*artifacts.rglob("*"), *run_dir.rglob("*")] if p.is_file()]
    assert {"config.yaml", "packages.txt", "train.log"} <= {p.name for p in files}
    assert [p for p in files if password.encode() in p.read_bytes()] == []


def test_an_anonymous_job_is_refused_in_one_line_and_writes_nothing(mlflow_postgres, tmp_path):
    env = _env(tmp_path, mlflow_postgres.url) | {"HOME": str(tmp_path)}  # no ~/.mlflow/credentials either
    for key in MLFLOW_LOGIN:
        env.pop(key)
    before = everything(mlflow_postgres)
    res = _train(["tracking.experiment=anonymous", f"hydra.run.dir={tmp_path}/run"], env, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert (
        f"TrackingAuthError: MLflow server {mlflow_postgres.url} lets in its users only and no login is set "
        "(401 to read experiment 'anonymous'); export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    ) in out
    assert "Traceback" not in out
    assert everything(mlflow_postgres) == before
    with logged_in(None, None), pytest.raises(Exception, match="401"):  # MLflow's own client: refused too
        MlflowClient(mlflow_postgres.url).search_experiments()


def test_a_wrong_password_is_refused_and_writes_nothing(mlflow_postgres, tmp_path, monkeypatch):
    password = mlflow_postgres.users[MLFLOW_JOB_USER]
    monkeypatch.setenv("HOME", str(tmp_path))
    before = everything(mlflow_postgres)
    with logged_in(MLFLOW_JOB_USER, password + "x"), pytest.raises(TrackingAuthError) as err:
        Tracker(mlflow_postgres.url, "wrong-password")
    assert str(err.value).startswith(
        f"MLflow server {mlflow_postgres.url} refused user '{MLFLOW_JOB_USER}' from MLFLOW_TRACKING_USERNAME "
        "(401 to read experiment 'wrong-password': wrong user name or password)"
    )
    assert password not in str(err.value)
    # the same wrong password from MLflow's credentials file
    (tmp_path / ".mlflow").mkdir()
    credentials = tmp_path / ".mlflow" / "credentials"
    credentials.write_text(credentials_file(MLFLOW_JOB_USER, password + "x"))
    with logged_in(None, None), pytest.raises(TrackingAuthError, match=r"from ~/\.mlflow/credentials \(401"):
        Tracker(mlflow_postgres.url, "wrong-password")
    assert everything(mlflow_postgres) == before
    # and the right one from the file lets the job in
    credentials.write_text(credentials_file(MLFLOW_JOB_USER, password))
    with logged_in(None, None):
        with Tracker(mlflow_postgres.url, "from-credentials-file", run_name="file") as tracker:
            tracker.log_metrics({"m": 1.0}, step=1)
        assert tracker.status() == "FINISHED"


def test_a_user_without_permission_gets_a_one_line_403_and_creates_no_run(mlflow_postgres):
    with Tracker(mlflow_postgres.url, "owned-by-job-user", run_name="owner's"):  # the fixture's user owns it
        pass
    bob = mlflow_postgres.add_user("bob")
    before = everything(mlflow_postgres)
    with logged_in("bob", bob):
        with pytest.raises(TrackingAuthError) as err:
            Tracker(mlflow_postgres.url, "owned-by-job-user")
        assert str(err.value).startswith(
            f"MLflow server {mlflow_postgres.url}: user 'bob' may not create a run in experiment "
            "'owned-by-job-user' (403 permission denied); ask the experiment's owner or the server's admin for EDIT"
        )
        assert everything(mlflow_postgres) == before
        assert len(_runs(mlflow_postgres.url, "owned-by-job-user")) == 1  # default_permission = READ: bob reads
    exp = MlflowClient(mlflow_postgres.url).get_experiment_by_name("owned-by-job-user")
    assert exp is not None and mlflow_postgres.admin is not None
    with logged_in(*mlflow_postgres.admin):  # the README's grant, as the admin
        get_app_client("basic-auth", tracking_uri=mlflow_postgres.url).grant_user_permission(
            "bob", "experiment", exp.experiment_id, "EDIT"
        )
    with logged_in("bob", bob), Tracker(mlflow_postgres.url, "owned-by-job-user", run_name="bob's") as tracker:
        tracker.log_params({"who": "bob"})
    assert len(_runs(mlflow_postgres.url, "owned-by-job-user")) == 2
