"""The job's naming, tags and params (cnet.job), built from a composed config (cnet.compose.build_job)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cnet.compose import build_job, compose_config
from cnet.job import JobSpec, describe, run_name, write_job_status

CHOICES = {"matching": "ae1d", "adaption": "dcn", "backbone": "tiny", "data": "synthetic", "hydra/launcher": "basic"}


def spec(tmp_path: Path, overrides: list[str], choices: dict[str, str] | None = None) -> JobSpec:
    cfg = compose_config(overrides)
    return build_job(cfg, tmp_path, dict(choices or CHOICES), overrides, tmp_path)


def test_build_job_reads_the_config_into_plain_values(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = spec(tmp_path, ["schedule.epochs=3", "seed=7", "tracking.experiment=abl"])
    assert (job.epochs, job.seed, job.experiment, job.data) == (3, 7, "abl", "synthetic")
    assert job.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert "hydra/launcher" not in job.choices and job.choices["matching"] == "ae1d"
    # the launch time stamp and the flush wait are not what was trained
    assert "tracking.sweep_id" not in job.params and "tracking.flush_timeout_min" not in job.params
    assert job.params["schedule.epochs"] == "3" and job.params["seed"] == "7"


def test_the_dataset_is_named_by_its_folder_when_it_has_a_root(tmp_path):
    job = spec(tmp_path, ["data=coco", "data.root=/data/my_coco"], CHOICES | {"data": "coco"})
    assert job.data == "my_coco"


def test_run_name_has_the_parts_the_dataset_and_the_other_overrides_by_leaf(tmp_path):
    overrides = ["matching=ae1d", "schedule.epochs=3", "hydra.sweep.dir=/x", "data.root=/d", "+trainer.foo=1"]
    name = run_name(_with(tmp_path, overrides))
    assert name == "ae1d-dcn-tiny-synthetic epochs=3 foo=1"


def _with(tmp_path: Path, overrides: list[str]) -> JobSpec:
    return replace(spec(tmp_path, []), overrides=overrides)


def test_describe_gives_the_parts_and_the_headline_figures(tmp_path):
    job = spec(tmp_path, ["schedule.epochs=2"])
    text = describe(job, {"global_batch": 8}, {"bbox_AP": 0.4123, "bbox_AP50": 0.6, "crowd_bbox_AP": 0.2})
    assert text.startswith("ae1d matching + dcn adaption on tiny, synthetic, 2 epochs, global batch 8, seed 0.")
    assert "Box AP 0.412 (AP50 0.600), look-alike crowd 0.200." in text and "matching-only" not in text


def test_job_status_is_written_whole_with_the_errors_first_line(tmp_path):
    write_job_status(tmp_path, "FAILED", "r1", ValueError("bad file x.json\nmore detail"))
    assert (tmp_path / "job_status.json").read_text() == (
        '{"status": "FAILED", "run_id": "r1", "error": "ValueError: bad file x.json"}'
    )
    assert not list(tmp_path.glob(".*.tmp"))
