"""The job's naming, tags and params (cnet.job), built from a composed config (cnet.compose.build_job)."""

from __future__ import annotations

from pathlib import Path

from cnet.compose import build_job, compose_config, name_overrides
from cnet.data.coco import CocoDetection
from cnet.job import JobSpec, dataset_name, describe, run_name, write_job_status
from tests.conftest import COCO_TINY

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


def test_run_name_has_the_parts_the_dataset_and_the_overrides_that_change_the_defaults(tmp_path):
    overrides = ["matching=ae1d", "schedule=demo", "schedule.epochs=3", "schedule.milestones=[2]",
                 "trainer.batch_size=16", "test.flip=False", "trainer.progress=False", "+trainer.foo=1"]  # fmt: skip
    name = run_name(spec(tmp_path, overrides))
    # schedule=demo and batch 16 are the defaults, the progress bar only shows; values as YAML spells them
    assert name == "ae1d-dcn-tiny-synthetic epochs=3 milestones=[2] flip=false foo=1"


def test_a_key_counts_against_its_group_options_defaults_and_hydra_keys_never_count():
    cfg = compose_config(["trainer=gpu", "trainer.batch_size=6", "trainer.eval_every=5"])
    overrides = ["trainer=gpu", "trainer.batch_size=6", "trainer.eval_every=5", "hydra.sweep.dir=/x", "data.root=/d"]
    # trainer=gpu's batch is 6 already; its eval_every is 10
    assert name_overrides(cfg, overrides) == ["trainer=gpu", "eval_every=5"]
    cfg = compose_config(["+experiment=table4"])
    assert name_overrides(cfg, ["+experiment=table4"]) == ["experiment=table4"]


def test_params_leave_out_hydras_keys_and_spell_values_as_yaml_and_the_config_is_resolved(tmp_path):
    job = spec(tmp_path, ["test.flip=false"])
    assert not [k for k in job.params if k.endswith(("._target_", "._partial_"))]
    assert job.params["test.flip"] == "false" and job.params["trainer.global_batch"] == "null"
    assert "matching.mu_small" in job.params
    assert "${" not in job.config_yaml and "cache_dir: " in job.config_yaml
    assert compose_config().data.source.cache_dir in job.config_yaml  # what ${oc.env:...} gave


def test_a_dataset_is_named_with_its_split_and_size():
    ds = CocoDetection(COCO_TINY / "val2017" / "images", COCO_TINY / "val2017" / "annotations.json", lambda *a: a)
    assert dataset_name("coco_tiny", ds) == f"coco_tiny/val2017 {len(ds)} images"


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
