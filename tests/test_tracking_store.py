"""The MLflow store under parallel jobs: a fresh SQLite store initialised once, nothing lost,
and an unreadable store reported in one line naming the file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnet.errors import TrackingStoreError
from cnet.tracking import Tracker, open_store
from tests.test_train_cli import FAST, run_train

# each process opens the fresh store and logs one run with a param and a metric
_JOB = """
import sys
from cnet.tracking import Tracker
with Tracker(sys.argv[1], "parallel", run_name=sys.argv[2]) as t:
    t.log_params({"job": sys.argv[2]})
    t.log_metrics({"value": float(sys.argv[2])}, step=0)
"""


@pytest.mark.slow
def test_parallel_processes_on_a_fresh_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _JOB, uri, str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.data.params["job"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["value"] == float(r.data.params["job"]) for r in runs)


def _start_together(tracker: Tracker, barrier: threading.Barrier, ann: Path, errors: list[Exception]) -> None:
    barrier.wait()
    tracker.log_dataset("coco", ann)
    try:
        tracker.finish()
    except Exception as exc:
        errors.append(exc)


def runs_start_on_one_dataset_at_once(uri: str, folder: Path, runs: int = 8, rounds: int = 3) -> None:
    """``runs`` runs log the same dataset at the same moment (a sweep's jobs starting together), on
    a new dataset each round; every run ends FINISHED with the dataset as its input."""
    client = MlflowClient(uri)
    for r in range(rounds):
        ann = folder / f"instances_{r}.json"
        ann.write_text(f'{{"round": {r}}}')  # a new digest: the dataset row does not exist yet
        trackers = [Tracker(uri, "one-dataset", run_name=f"round{r}-{i}") for i in range(runs)]
        barrier, errors = threading.Barrier(runs), []
        threads = [threading.Thread(target=_start_together, args=(t, barrier, ann, errors)) for t in trackers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [], f"round {r}: {len(errors)} of {runs} runs failed: {errors[0]}"
        for tracker in trackers:
            run = client.get_run(tracker.run_id)
            assert run.info.status == "FINISHED"
            assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["coco"]
    exp = client.get_experiment_by_name("one-dataset")
    assert exp is not None and len(client.search_runs([exp.experiment_id])) == runs * rounds


def test_runs_starting_on_one_dataset_at_once_all_finish_on_sqlite(tmp_path):
    runs_start_on_one_dataset_at_once(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, rounds=2)


def test_an_unreadable_store_is_one_error_naming_the_file(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TrackingStoreError, match=r"mlflow\.db is unreadable .*mv .*mlflow\.db\.bad"):
        Tracker(f"sqlite:///{db}", "exp")
    assert db.read_bytes().startswith(b"this is not a database")  # nothing overwritten


def test_open_store_creates_the_folder_and_the_schema_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a' / 'b' / 'mlflow.db'}"
    open_store(uri).create_experiment("x")
    assert open_store(uri).get_experiment_by_name("x") is not None


@pytest.mark.slow
def test_four_parallel_sweep_jobs_into_a_fresh_store_all_finish(tmp_path):
    """The reproduction: `train.py -m hydra/launcher=local_cpu` with 4 jobs, no mlflow.db yet."""
    sweep = tmp_path / "sweep"
    matchings = "matching=ae1d,ae2d,centripetal,center_regression"
    args = ["-m", "hydra/launcher=local_cpu", f"hydra.sweep.dir={sweep}", *FAST, "adaption=none", matchings]
    res = run_train([*args, "test.matching_only=false"], tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["matching"] for r in runs) == ["ae1d", "ae2d", "center_regression", "centripetal"]
    for r in runs:
        assert r.info.status == "FINISHED", r.data.tags["matching"]
        assert "bbox_AP" in r.data.metrics and r.data.params["seed"] == "0"
        assert not any(k.endswith("._target_") for k in r.data.params)


def test_train_py_reports_an_unreadable_store_in_one_line(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"garbage" * 100)
    res = run_train([*FAST, "schedule.epochs=0"], tmp_path)
    assert res.returncode == 1
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "TrackingStoreError" in ln]
    assert len(lines) == 1 and "mlflow.db is unreadable" in lines[0], res.stdout + res.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("last.pt"))
