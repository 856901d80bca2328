"""`python -m cnet.test`: a trained run's figures reproduced from its checkpoint alone,
test-dev style prediction (no annotations), MLflow runs tagged with their source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_train_cli import FAST, ROOT, run_train

from cnet.checkpoint import TrainState
from cnet.tools import evaluate as evaluate_tool
from tests.test_provenance import assert_provenance


def run_tool(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
    return subprocess.run(
        [sys.executable, "-m", "cnet.test", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tool_test")
    res = run_train([*FAST, f"hydra.run.dir={tmp}/run"], tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_reproduces_the_runs_final_figures_and_tags_its_source(trained):
    tmp, run = trained, trained / "run"
    res = run_tool([str(run), "--out", str(tmp / "t1")], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    state = TrainState.load(run / "checkpoints" / "last.pt")
    metrics = json.loads((tmp / "t1" / "metrics.json").read_text())
    assert metrics == state.metrics  # every figure of every split, exactly
    for name in ("bbox", "crowd_bbox", "oracle_bbox"):
        assert (tmp / "t1" / f"results_{name}.json").read_bytes() == (run / f"results_{name}.json").read_bytes()
    assert "AR100" in res.stdout  # the 12 figures printed
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("cnet").experiment_id, "tags.kind = 'test'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["source_run_id"] == state.mlflow_run_id
    assert tags["matching"] == "centripetal" and tags["test"] == "default"  # the run's group choices
    assert tags["source_checkpoint"] == str((run / "checkpoints" / "last.pt").resolve())
    assert runs[0].data.metrics["bbox_AP"] == metrics["bbox_AP"]
    assert_provenance(f"sqlite:///{tmp}/mlflow.db", runs[0].info.run_id, 1, tmp / "t1_artifacts")  # of the evaluation


@pytest.mark.slow
def test_overrides_and_into_source_run(trained):
    tmp, run = trained, trained / "run"
    ckpt = run / "checkpoints" / "last.pt"
    res = run_tool(
        [str(ckpt), "test.flip=false", "test.matching_only=false", "--into-source-run", "--out", str(tmp / "t2")], tmp
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp / "t2").glob("results_*.json")) == [
        "results_bbox.json",
        "results_crowd_bbox.json",
    ]
    state = TrainState.load(ckpt)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    source = client.get_run(state.mlflow_run_id)
    assert "test_bbox_AP" in source.data.metrics and source.info.status == "FINISHED"


@pytest.mark.slow
def test_test_dev_writes_an_upload_file_and_says_figures_need_annotations(trained):
    tmp, run = trained, trained / "run"
    gt_file = next((tmp / "cache").rglob("instances_val.json"))
    info = {k: v for k, v in json.loads(gt_file.read_text()).items() if k != "annotations"}
    (tmp / "image_info.json").write_text(json.dumps(info))
    args = [
        str(run),
        "--ann",
        str(tmp / "image_info.json"),
        "--images",
        str(gt_file.parent / "images"),
        "--out",
        str(tmp / "t3"),
    ]
    res = run_tool(args, tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no figures" in res.stdout and "annotations" in res.stdout
    upload = tmp / "t3" / "detections_image_info_cnet_results.json"
    assert upload.is_file()
    # the same detections as the run's own results: they score identically against the annotations
    state = TrainState.load(run / "checkpoints" / "last.pt")
    assert evaluate_tool.run(gt_file, upload)["AP"] == state.metrics["bbox_AP"]


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    res = run_tool([str(tmp_path / "nowhere")], tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "nowhere" in res.stderr


@pytest.mark.slow
def test_predict_writes_one_png_per_image_and_a_results_file_evaluate_scores(trained, tmp_path):
    tmp, run = trained, trained / "run"
    gt_file = next((tmp / "cache").rglob("instances_val.json"))
    gt = json.loads(gt_file.read_text())
    files = [gt_file.parent / "images" / im["file_name"] for im in gt["images"]]
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"))
    args = [str(run / "checkpoints" / "last.pt"), *map(str, files), "--out", str(tmp_path / "pred")]
    res = subprocess.run(
        [sys.executable, "-m", "cnet.predict", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == sorted(f.stem + ".png" for f in files)
    # image ids are 1..N in the listed order: renumber the ground truth the same way and score
    new_id = {im["id"]: i for i, im in enumerate(gt["images"], start=1)}
    gt["images"] = [im | {"id": new_id[im["id"]]} for im in gt["images"]]
    gt["annotations"] = [a | {"image_id": new_id[a["image_id"]]} for a in gt["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    figures = evaluate_tool.run(tmp_path / "gt.json", tmp_path / "pred" / "results.json")
    state = TrainState.load(run / "checkpoints" / "last.pt")
    assert figures["AP"] == state.metrics["bbox_AP"]  # same model, same views: the run's own figure
