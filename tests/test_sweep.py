"""Sweeps that lose nothing and compare at a glance: a re-launched sweep skips finished jobs, every
sweep ends with a summary, and each MLflow run says what it is (name, dataset, commit, description)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from cnet.compose import sweep_summary
from cnet.run import LogMetrics
from tests.test_train_cli import FAST, run_train


def test_sweep_summary_counts_and_names_each_job(tmp_path):
    url = "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=cnet-ablations"
    jobs = {"0": {"status": "FINISHED", "run_id": "a", "runs_table": url},
            "1": {"status": "FAILED", "run_id": None, "error": "ValueError: bad"},
            "10": {"status": "SKIPPED", "run_id": "c", "runs_table": url}}  # fmt: skip
    for job, body in jobs.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "job_status.json").write_text(json.dumps(body))
    lines = sweep_summary(tmp_path).splitlines()
    assert lines[0] == f"sweep {tmp_path}: 1 failed, 1 finished, 1 skipped"
    assert [ln.split()[1] for ln in lines[1:4]] == ["0:", "1:", "10:"]  # numeric job order
    assert lines[2].endswith("ValueError: bad") and "run c" in lines[3]
    assert lines[4:] == [f"runs table: {url}"]  # once per experiment


class _Recorder:
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append(dict(metrics))


class _Criterion:
    def __init__(self) -> None:
        self.part_of = {"pull": "matching", "push": "matching", "guiding": "adaption"}


class _Trainer:  # what LogMetrics reads from a trainer
    def __init__(self) -> None:
        self.criterion = _Criterion()


def test_metrics_skip_cocos_minus_one_and_add_per_part_totals():
    rec = _Recorder()
    cb = LogMetrics(rec)
    cb.on_train_epoch_end(_Trainer(), 1, {"det": 1.0, "pull": 0.25, "push": 0.5, "guiding": 0.125, "total": 1.875})
    assert rec.logged[0]["train_matching"] == 0.75 and rec.logged[0]["train_adaption"] == 0.125
    cb.on_evaluate(_Trainer(), 1, {"bbox_AP": 0.5, "bbox_APS": -1.0})
    assert rec.logged[1] == {"bbox_AP": 0.5, "AP/bbox": 0.5}  # -1 means "no small objects", not a value


def test_the_headline_figures_are_logged_again_as_chart_sections():
    rec = _Recorder()
    figures = {"bbox_AP": 0.5, "bbox_AP50": 0.7, "crowd_bbox_AP": 0.25, "oracle_bbox_AP": 0.75,
               "crowd_bbox_mispair_rate": 0.125, "crowd_bbox_mispair_fp_rate": 0.5, "bbox_dAP_mispair": 0}  # fmt: skip
    LogMetrics(rec).on_evaluate(_Trainer(), 4, figures)
    assert rec.logged[0] == figures | {
        "AP/bbox": 0.5, "AP/crowd_bbox": 0.25, "AP/oracle_bbox": 0.75, "mispair_rate/crowd_bbox": 0.125
    }  # fmt: skip


@pytest.mark.slow
def test_relaunched_sweep_skips_finished_jobs_and_reports_the_failed_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", *FAST, "adaption=none", "test.matching_only=false",
            "trainer.batch_size=4,1000"]  # fmt: skip
    first = run_train(args, tmp_path)
    assert first.returncode == 1  # one job failed: the sweep says so, after running every job
    assert f"sweep {sweep}: 1 failed, 1 finished" in first.stdout
    assert "job 1: FAILED" in first.stdout and "trainer.batch_size=1000" in first.stdout
    again = run_train(args, tmp_path)
    assert f"sweep {sweep}: 1 failed, 1 skipped" in again.stdout, again.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"  # skipping did not reopen it
    assert run.data.tags["dataset"] == "synthetic" and run.info.run_name.startswith("centripetal-none-tiny-synthetic")
    assert " batch_size=4" in run.info.run_name and " num_train=16" in run.info.run_name
    assert "progress" not in run.info.run_name  # display-only
    assert len(run.data.tags.get("mlflow.source.git.commit", "")) >= 40
    assert "Box AP" in run.data.tags["mlflow.note.content"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}  # split and size (FAST's counts)
    assert sorted(inputs) == ["synthetic/train 16 images", "synthetic/val 4 images", "synthetic/val_crowd 2 images"]
    assert all(len(d.dataset.digest) == 12 for d in inputs.values())
    root = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results_bbox.json", "results_crowd_bbox.json", "hydra", "train.log", "eval"} <= root
    assert f"runs table: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?" in again.stdout
