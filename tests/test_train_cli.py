"""`python train.py` for real: a two-job sweep tracked in MLflow, and bad input handled cleanly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_records import run_records
from PIL import Image

from cnet.data.synthetic import generate_synthetic
from tests.test_provenance import assert_provenance

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=16, num_val=4, num_val_crowd=2, image_size=60)
FAST = [f"data.source.{k}={v}" for k, v in SMALL.items()] + [
    "data.train_transform.crop_size=63",
    "data.test_transform.pad_logical_or=63",
    "schedule.epochs=1",
    "schedule.warmup_iters=2",
    "trainer.batch_size=4",
    "trainer.progress=false",
    "test.corner_topk=20",
]


def run_train(args: list[str], tmp: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def runs(tmp: Path) -> list[dict]:
    if not (tmp / "mlflow.db").exists():
        return []
    return run_records(store(tmp)).to_dict("records")  # explicit store: no global MLflow state


@pytest.mark.slow
def test_sweep_runs_two_jobs_tracked_with_tags_and_metrics(tmp_path):
    res = run_train(["-m", "adaption=none,cross_star", *FAST, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = runs(tmp_path)
    assert sorted(r["tags.adaption"] for r in records) == ["cross_star", "none"]
    for r in records:
        assert r["status"] == "FINISHED"
        assert r["tags.matching"] == "centripetal" and r["tags.backbone"] == "tiny" and r["tags.data"] == "synthetic"
        assert r["tags.sweep_id"] == records[0]["tags.sweep_id"]
        for k in ("bbox_AP", "bbox_AP50", "bbox_AR100"):  # COCO figures: logged, in [0, 1]
            assert 0 <= r[f"metrics.{k}"] <= 1, k
        for k in ("train_det", "train_centripetal", "train_total"):  # losses of a real epoch
            assert math.isfinite(r[f"metrics.{k}"]) and r[f"metrics.{k}"] > 0, k
        assert r["metrics.train_total"] >= r["metrics.train_det"]  # total = weighted sum of >= 0 terms
        assert r["metrics.bbox_AP50"] >= r["metrics.bbox_AP"]  # AP averages AP50 with stricter IoUs
        assert r["params.matching.mu_small"] == "0.4166666666666667"
        assert_provenance(store(tmp_path), r["run_id"], 1, tmp_path / r["run_id"])
    guided = next(r for r in records if r["tags.adaption"] == "cross_star")
    assert guided["metrics.train_guiding"] > 0
    client = MlflowClient(tracking_uri=store(tmp_path))
    arts = [a.path for a in client.list_artifacts(guided["run_id"], "hydra")]
    assert "hydra/config.yaml" in arts
    results = sorted(a.path for a in client.list_artifacts(guided["run_id"]) if a.path.startswith("results_"))
    assert results == [f"results_{k}.json" for k in ("bbox", "crowd_bbox", "oracle_bbox", "oracle_crowd_bbox")]
    for k in ("crowd_bbox_AP", "oracle_bbox_AP", "oracle_crowd_bbox_AP"):  # look-alike crowd + matching-only
        assert 0 <= guided[f"metrics.{k}"] <= 1


@pytest.mark.slow
def test_missing_dataset_root_is_one_line_and_leaves_nothing(tmp_path):
    res = run_train(["data=coco", "data.root=/no/such/coco", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1
    assert "data.root=/no/such/coco does not exist" in out
    assert "Traceback" not in out
    assert runs(tmp_path) == [] and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_missing_annotation_file_names_the_file(tmp_path):
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    res = run_train(["data=coco", f"data.root={tmp_path}/coco", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "instances_train2017.json" in out and "Traceback" not in out
    assert runs(tmp_path) == []


@pytest.mark.slow  # ~10 s: train.py's imports and Hydra start-up
def test_bad_annotation_file_is_one_line_and_leaves_nothing(tmp_path):
    """A duplicated image id in the train file: a one-line DataError naming file and id, exit 1."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    images = [{"id": k, "file_name": f"{k}.png", "width": 32, "height": 32} for k in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0}]
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        for im in images:
            Image.new("RGB", (32, 32)).save(root / split / im["file_name"])
        data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
        if split == "train2017":
            data["images"] = [*images, images[0]]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    res = run_train(["data=coco", f"data.root={root}", f"hydra.run.dir={tmp_path}/run"], tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert (
        f"DataError: {root}/annotations/instances_train2017.json: image id 1 appears twice in 'images' "
        "(entries 0 and 2); give each image a unique id\n"
    ) in out
    assert "Traceback" not in out
    assert runs(tmp_path) == [] and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_unreadable_image_fails_the_run_without_a_checkpoint(tmp_path):
    root = generate_synthetic(tmp_path / "cache", seed=0, **SMALL)
    for img in (root / "images").glob("*.png"):
        img.write_bytes(b"not a png")  # every image is corrupt: the first batch hits one
    res = run_train([*FAST, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "cannot read image" in out and ".png" in out
    records = runs(tmp_path)
    assert len(records) == 1 and records[0]["status"] == "FAILED"
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_unknown_config_option_names_the_key(tmp_path):
    res = run_train(["matching=not_a_strategy"], tmp_path, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "matching" in out and "not_a_strategy" in out
    assert "centripetal" in out  # Hydra lists the available options
    assert runs(tmp_path) == []
