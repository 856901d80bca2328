"""``python -m cnet.tools.compare``: two results files, run folders or MLflow runs, paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnet.compose import compose_config
from cnet.tools.compare import main
from cnet.tools.run_files import split_ground_truth


def ten_objects(tmp: Path) -> Path:
    """10 images with one 50 x 50 object each (the hand-worked case of tests/evaluation/test_bootstrap.py)."""
    gt = {
        "images": [{"id": i + 1, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in range(10)],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
            for i in range(10)
        ],
    }
    path = tmp / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def found(tmp: Path, name: str, images: range) -> Path:
    """Results with a perfect detection on ``images`` (0-based)."""
    path = tmp / name
    dets = [{"image_id": i + 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9 - 0.01 * i} for i in images]
    path.write_text(json.dumps(dets))
    return path


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_results_files_give_the_hand_worked_intervals(tmp_path, capsys):
    """A finds 5 of the 10 objects, B all: A's AP 51/101 in [21/101, 81/101], B's 1 on every
    resample, B - A = 50/101 in [20/101, 80/101] (worked out in tests/evaluation/test_bootstrap.py)."""
    gt = ten_objects(tmp_path)
    a, b = found(tmp_path, "a.json", range(5)), found(tmp_path, "b.json", range(10))
    out = run_json(capsys, str(a), str(b), "--gt", str(gt))
    assert (out["images"], out["resamples"], out["seed"], out["level"]) == (10, 1000, 0, 0.95)
    assert out["a"]["AP"] == pytest.approx({"value": 51 / 101, "ci_low": 21 / 101, "ci_high": 81 / 101})
    assert out["b"]["AP"] == pytest.approx({"value": 1.0, "ci_low": 1.0, "ci_high": 1.0})
    assert out["b_minus_a"]["AP"] == pytest.approx({"value": 50 / 101, "ci_low": 20 / 101, "ci_high": 80 / 101})
    assert out["a"]["APS"] == {"value": None, "ci_low": None, "ci_high": None}  # no small object: COCO's -1
    assert main([str(a), str(b), "--gt", str(gt)]) == 0
    text = capsys.readouterr().out
    ap_line = next(line for line in text.splitlines() if line.startswith("AP "))
    assert ap_line.split()[-3:] == ["B", ">", "A"] and "0.5050 [0.2079, 0.8020]" in ap_line
    # the same results twice: the paired difference is 0 on every resample
    same = run_json(capsys, str(a), str(a), "--gt", str(gt), "--resamples", "200")
    assert same["b_minus_a"]["AP"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def synthetic_run(tmp: Path, name: str, cache: Path) -> Path:
    """A run folder as train.py leaves it: its config (a small synthetic set) and, for its
    validation split, results with a perfect detection of every second object."""
    cfg = compose_config(
        ["data=synthetic", f"data.source.cache_dir={cache}", "data.source.num_train=2", "data.source.num_val=6"]
        + ["data.source.num_val_crowd=2", "data.source.image_size=64"]
    )
    run = tmp / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    coco = split_ground_truth(run / ".hydra" / "config.yaml", "bbox")
    anns = [a for a in coco.dataset["annotations"] if not a.get("iscrowd")]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0 - 0.001 * k}
            for k, a in enumerate(anns[::2])]  # fmt: skip
    (run / "results_bbox.json").write_text(json.dumps(dets))
    return run


def test_run_folders_and_mlflow_runs_use_the_runs_own_ground_truth(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run = synthetic_run(tmp_path, "run", tmp_path / "cache")
    out = run_json(capsys, str(run), str(run))
    assert out["images"] == 6 and out["a"]["AP"]["value"] == out["b"]["AP"]["value"] > 0
    assert out["b_minus_a"]["AP"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # the same files as the artifacts of an MLflow run, named by its id
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x", artifact_location=str(tmp_path / "art"))).info.run_id
    client.log_artifact(run_id, str(run / ".hydra" / "config.yaml"))
    client.log_artifact(run_id, str(run / "results_bbox.json"))
    by_id = run_json(capsys, run_id, str(run), "--tracking-uri", uri)
    assert by_id["a"]["source"] == f"run {run_id}" and by_id["a"]["AP"] == out["a"]["AP"]
    assert by_id["b_minus_a"]["AP"]["ci_high"] == 0.0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["{a}", "{b}"], "is a results file: give the ground truth it was made on with --gt"),
        (["{tmp}/none.json", "{b}", "--gt", "{gt}"], "no such run folder or results file"),
        (["{tmp}", "{b}", "--gt", "{gt}"], "has no results_bbox.json"),
        (["{a}", "{b}", "--gt", "{gt}", "--resamples", "0"], "--resamples 0: give at least 1"),
        (["{a}", "{bad}", "--gt", "{gt}"], "not in the ground truth"),
    ],
)
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, argv, message):
    gt = ten_objects(tmp_path)
    a, b = found(tmp_path, "a.json", range(5)), found(tmp_path, "b.json", range(10))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    names = {"a": a, "b": b, "gt": gt, "tmp": tmp_path, "bad": bad}
    assert main([arg.format(**names) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_runs_on_different_images_are_not_compared(tmp_path, capsys):
    one = synthetic_run(tmp_path, "one", tmp_path / "cache")
    other = synthetic_run(tmp_path, "other", tmp_path / "cache2")
    cfg = OmegaConf.load(other / ".hydra" / "config.yaml")
    cfg.data.source.seed = 1  # another synthetic set
    OmegaConf.save(cfg, other / ".hydra" / "config.yaml")
    assert main([str(one), str(other)]) == 2
    assert "scored on different ground truth" in capsys.readouterr().err
