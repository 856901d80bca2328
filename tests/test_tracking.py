"""MLflow Tracker against a throwaway SQLite store (one store per module: its init is slow)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow_records import run_records

from cnet.errors import ResumeError
from cnet.tracking import MAX_PARAM_VALUE_LENGTH, Tracker, flatten_params, resolve_tracking_uri

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """SQLite tracking URI (also exported as MLFLOW_TRACKING_URI while the module runs)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # pay the schema migration once, in setup
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture
def experiment() -> str:
    return f"exp{next(_names)}"


def _runs(experiment: str):
    # an explicit store, never mlflow's process-wide tracking URI (test order must not matter)
    return run_records(os.environ["MLFLOW_TRACKING_URI"], experiment)


def test_new_run_logs_params_tags_metrics(store, experiment, tmp_path):
    with Tracker(store, experiment, run_name="demo", tags={"variant": "centripetal"}) as tracker:
        tracker.log_params({"model.backbone.num_stacks": "2", "lr": "0.00025"})
        tracker.set_tags({"stage": "train"})
        tracker.log_metrics({"loss": 2.0, "ap": 0.1}, step=0)
        tracker.log_metrics({"loss": 1.5}, step=1)
        (tmp_path / "cfg.yaml").write_text("a: 1\n")
        tracker.log_artifact(tmp_path / "cfg.yaml", "config")
    runs = _runs(experiment)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == tracker.run_id and row["experiment_id"] == tracker.experiment_id
    assert row["status"] == "FINISHED"
    assert row["params.model.backbone.num_stacks"] == "2" and row["params.lr"] == "0.00025"
    assert row["tags.variant"] == "centripetal" and row["tags.stage"] == "train"
    assert row["tags.mlflow.runName"] == "demo"
    assert row["metrics.loss"] == 1.5 and row["metrics.ap"] == pytest.approx(0.1)
    history = MlflowClient(store).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5)]


def test_artifacts_go_next_to_sqlite_db(store, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra changes the cwd per job; artifacts must not follow it
    src = tmp_path / "plots"
    src.mkdir()
    (src / "pr.txt").write_text("curve")
    with Tracker(store, experiment) as tracker:
        tracker.log_artifacts(src, "plots")
    db_dir = Path(store[len("sqlite:///") :]).parent
    run = MlflowClient(store).get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((db_dir / "mlartifacts").as_uri())
    assert len(list((db_dir / "mlartifacts").rglob("plots/pr.txt"))) == 1
    assert not (tmp_path / "mlartifacts").exists()


def test_log_text_writes_the_file_in_the_job_folder_and_logs_it_under_its_folder(store, experiment, tmp_path):
    with Tracker(store, experiment) as tracker:
        tracker.log_text("a==1\nb==2\n", "provenance/packages.txt", tmp_path / "job")
        tracker.log_text("top\n", "note.txt", tmp_path / "job")
    client = MlflowClient(store)
    assert [a.path for a in client.list_artifacts(tracker.run_id, "provenance")] == ["provenance/packages.txt"]
    assert "note.txt" in {a.path for a in client.list_artifacts(tracker.run_id)}
    local = client.download_artifacts(tracker.run_id, "provenance/packages.txt", str(tmp_path / "back"))
    assert Path(local).read_text() == "a==1\nb==2\n"
    assert (tmp_path / "job" / "provenance" / "packages.txt").read_text() == "a==1\nb==2\n"  # kept beside the run
    assert not list((tmp_path / "job").rglob("*.tmp"))  # written atomically


def test_resume_continues_same_run(store, experiment):
    first = Tracker(store, experiment, tags={"variant": "a"})
    first.log_params({"lr": "0.1"})
    first.log_metrics({"loss": 3.0}, step=0)
    first.finish("KILLED")  # e.g. preempted

    client = MlflowClient(store)
    resumed = Tracker(store, experiment, run_id=first.run_id, tags={"resumed": "1"})
    assert resumed.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_params({"lr": "0.1", "epochs": "2"})  # same value again is fine, new keys are added
    resumed.log_metrics({"loss": 2.0}, step=1)
    resumed.finish()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "2"}
    assert run.data.tags["variant"] == "a" and run.data.tags["resumed"] == "1"
    history = client.get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0)]
    assert len(_runs(experiment)) == 1


def test_resume_with_changed_param_raises(store, experiment):
    with Tracker(store, experiment) as first:
        first.log_params({"lr": "0.1"})
    resumed = Tracker(store, experiment, run_id=first.run_id)
    with pytest.raises(ValueError, match=r"lr.*'0\.1'.*'0\.2'"):
        resumed.log_params({"lr": "0.2", "epochs": "3"})
    # nothing of the rejected batch was written
    assert MlflowClient(store).get_run(first.run_id).data.params == {"lr": "0.1"}


def test_resume_unknown_run_names_it(store, experiment):
    with pytest.raises(RuntimeError, match=r"0123456789abcdef.*delete the checkpoint"):
        Tracker(store, experiment, run_id="0123456789abcdef")


def test_resume_of_a_deleted_run_is_refused(store, experiment):
    with Tracker(store, experiment) as first:
        pass
    MlflowClient(store).delete_run(first.run_id)
    with pytest.raises(ResumeError, match=rf"{first.run_id}: it is deleted; to start fresh"):
        Tracker(store, experiment, run_id=first.run_id)


def test_resume_of_a_run_from_another_experiment_is_refused(store, experiment):
    with Tracker(store, experiment) as first:
        pass
    with pytest.raises(ResumeError, match=rf"{first.run_id}: it belongs to experiment id {first.experiment_id}"):
        Tracker(store, f"{experiment}-other", run_id=first.run_id)
    assert MlflowClient(store).get_run(first.run_id).info.status == "FINISHED"  # left as it was


def test_a_deleted_experiment_is_not_reused(store, experiment):
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment(experiment))
    with pytest.raises(ResumeError, match=rf"experiment '{experiment}' is deleted.*restore"):
        Tracker(store, experiment)


def test_exception_marks_failed_and_interrupt_killed(store, experiment):
    with pytest.raises(RuntimeError, match="boom"), Tracker(store, experiment) as failed:
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), Tracker(store, experiment) as killed:
        raise KeyboardInterrupt
    client = MlflowClient(store)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_sequential_trackers_in_one_process(store, experiment):
    """Two jobs of a multirun in one process: distinct runs, both finished, no active-run clash."""
    ids = []
    for lr in ("0.1", "0.2"):
        with Tracker(store, experiment) as tracker:
            tracker.log_params({"lr": lr})
            tracker.log_metrics({"loss": float(lr)}, step=0)
        ids.append(tracker.run_id)
    assert ids[0] != ids[1]
    runs = _runs(experiment).set_index("run_id")
    assert sorted(runs.index) == sorted(ids)
    assert (runs["status"] == "FINISHED").all()
    assert runs.loc[ids[1], "params.lr"] == "0.2"
    assert mlflow.active_run() is None


def test_existing_experiment_is_reused(store, experiment):
    a = Tracker(store, experiment)
    b = Tracker(store, experiment)
    assert a.experiment_id == b.experiment_id and a.run_id != b.run_id


def test_experiment_created_concurrently_is_reused(store, experiment, monkeypatch):
    """Another process creates the experiment between our lookup and our create."""
    other_id = MlflowClient(store).create_experiment(experiment)
    real_get = MlflowClient.get_experiment_by_name
    calls = []

    def stale_get(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real_get(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_get)
    tracker = Tracker(store, experiment)
    assert tracker.experiment_id == other_id and len(calls) == 2


def test_non_finite_metrics_skipped_with_warning(store, experiment):
    with Tracker(store, experiment) as tracker, pytest.warns(UserWarning, match="nan"):
        tracker.log_metrics({"loss": float("nan"), "ap": 0.3}, step=4)
    metrics = MlflowClient(store).get_run(tracker.run_id).data.metrics
    assert metrics == {"ap": 0.3}


def test_finish_rejects_unknown_status(store, experiment):
    tracker = Tracker(store, experiment)
    with pytest.raises(ValueError, match="DONE"):
        tracker.finish("DONE")
    tracker.finish()


def test_flatten_params():
    cfg = {
        "model": {"backbone": {"num_stacks": 2, "dims": [256, 384]}, "head": None},
        "optim": {"lr": 2.5e-4, "betas": (0.9, 0.999)},
        "empty": {},
        "none_list": [],
        "long": "x" * 7000,
        "flag": True,
    }
    assert flatten_params(cfg) == {
        "model.backbone.num_stacks": "2",
        "model.backbone.dims.0": "256",
        "model.backbone.dims.1": "384",
        "model.head": "null",  # as YAML spells it, like the run names
        "optim.lr": "0.00025",
        "optim.betas.0": "0.9",
        "optim.betas.1": "0.999",
        "empty": "{}",
        "none_list": "[]",
        "long": "x" * MAX_PARAM_VALUE_LENGTH,
        "flag": "true",
    }
    assert flatten_params({"a": {"b": 1}}, prefix="cfg") == {"cfg.a.b": "1"}


def test_resolve_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/mlflow.db")
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "sqlite:////env/mlflow.db"
    monkeypatch.chdir(tmp_path)  # the default is absolute, so it does not depend on the cwd
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, Path(".")) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
