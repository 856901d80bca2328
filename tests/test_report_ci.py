"""``cnet.tools.report TABLE --ci``: intervals from the runs' own results files, paired across rows,
seeds averaged per resample, and the sentence on the paper's orderings (cnet.tools.report_ci)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cnet.compose import compose_config
from cnet.tools.report import fetch_runs, main
from cnet.tools.report_tables import load_spec
from cnet.tools.run_files import split_ground_truth
from tests.test_report import report_csv, tiny_sweep

# Table 5's rows -> the results of each seed's run: "all" finds every object exactly (AP 100 on
# every resample: precision and recall 1), "none" finds nothing (AP 0 on every resample)
ROWS = {"none": ["all"], "dcn": ["all"], "roi_conv": ["none"], "cross_star": ["all", "none"]}


def write_run(folder: Path, cache: Path, found: str) -> float:
    """A run folder (config of a small synthetic set, ``results_bbox.json``); returns its box AP."""
    cfg = compose_config(
        ["data=synthetic", f"data.source.cache_dir={cache}", "data.source.num_train=2", "data.source.num_val=8"]
        + ["data.source.num_val_crowd=2", "data.source.image_size=64"]
    )
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    coco = split_ground_truth(folder / ".hydra" / "config.yaml", "bbox")
    objects = [a for a in coco.dataset["annotations"] if not a.get("iscrowd")] if found == "all" else []
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1 - 0.001 * k}
            for k, a in enumerate(objects)]  # fmt: skip
    (folder / "results_bbox.json").write_text(json.dumps(dets))
    return 1.0 if found == "all" else 0.0


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str]:
    """An MLflow store with one FINISHED run per (Table 5 row, seed): tags, params, metrics and the
    run's config and results file as artifacts (no output folder: the report downloads them)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("report_ci")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cnet-table5", artifact_location=str(tmp / "artifacts"))
    for adaption, seeds in ROWS.items():
        for seed, found in enumerate(seeds):
            tags = {"matching": "centripetal", "adaption": adaption, "mask_head": "none", "data": "synthetic"}
            run_id = client.create_run(exp, tags=tags | {"backbone": "tiny", "schedule": "demo"}).info.run_id
            folder = tmp / f"{adaption}{seed}"
            ap = write_run(folder, tmp / "cache", found)
            client.log_param(run_id, "seed", str(seed))
            client.log_param(run_id, "schedule.epochs", "4")
            client.log_metric(run_id, "train_total", 1.0, step=4)
            client.log_metric(run_id, "bbox_AP", ap, step=4)
            client.log_artifact(run_id, str(folder / ".hydra" / "config.yaml"))
            client.log_artifact(run_id, str(folder / "results_bbox.json"))
            client.set_terminated(run_id, "FINISHED")
    return tmp, uri


def test_table_with_intervals_from_the_runs_results(store):
    tmp, uri = store
    out = tmp / "reports"
    argv = ["table5", "--tracking-uri", uri, "--ci", "--resamples", "200", "--out-dir", str(out), "--format", "csv"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "table5.csv").set_index("row")
    # every resample: base and DCN 100, RoI conv. 0, cross-star the mean of its seeds' 100 and 0
    expected = {  # row: (AP interval, AP - base and its interval)
        "no feature adaption": ((100, 100), (0, 0, 0)),
        "deformable conv.": ((100, 100), (0, 0, 0)),
        "RoI conv.": ((0, 0), (-100, -100, -100)),
        "cross-star deformable conv.": ((50, 50), (-50, -50, -50)),
    }
    for row, (ci, diff) in expected.items():
        rec = frame.loc[row]
        assert (rec["AP_ci_low"], rec["AP_ci_high"]) == pytest.approx(ci), row
        assert (rec["AP_vs_base"], rec["AP_vs_base_ci_low"], rec["AP_vs_base_ci_high"]) == pytest.approx(diff), row
    assert frame.loc["cross-star deformable conv.", "AP_ours_std"] == pytest.approx(70.7107, abs=1e-3)  # the seeds
    md = (out / "table5.md").read_text()
    assert "| AP 95% CI | AP vs no feature adaption |" in md
    assert "| [50.0, 50.0] | -50.0 [-50.0, -50.0] |" in md
    sentence = next(line for line in md.splitlines() if line.startswith("95% CI:"))
    assert "200 resamples of the 8 evaluation images" in sentence
    assert "reproduced: cross-star deformable conv. > RoI conv." in sentence  # paper 41.5 > 41.1, ours 50 > 0
    assert not sentence.endswith("..")  # one full stop after a row name ending in "."
    assert "cannot tell apart: deformable conv. > no feature adaption" in sentence  # ours 100 = 100
    reversed_part = sentence.split("reversed (ours the other way at 95%): ")[1].split("; cannot")[0]
    assert reversed_part.split(", ") == [
        "RoI conv. > no feature adaption",
        "cross-star deformable conv. > no feature adaption",
        "RoI conv. > deformable conv.",
        "cross-star deformable conv. > deformable conv.",
    ]
    tex = (out / "table5.tex").read_text()
    assert r"\multicolumn{5}{c}{AP}" in tex and r"95\% CI & vs base" in tex and "reproduced:" in tex
    with Image.open(out / "table5.png") as png:
        assert png.width > 500 and png.height > 300


def test_without_ci_the_table_has_no_interval_columns(store):
    tmp, uri = store
    out = tmp / "plain"
    assert main(["table5", "--tracking-uri", uri, "--out-dir", str(out), "--format", "csv"]) == 0
    assert "AP_ci_low" not in pd.read_csv(out / "table5.csv").columns
    assert "95% CI" not in (out / "table5.md").read_text()


def test_a_run_without_results_is_left_out_and_said_so(store, tmp_path):
    from mlflow.tracking import MlflowClient

    _, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cnet-table5").experiment_id
    tags = {"matching": "centripetal", "adaption": "dcn", "mask_head": "none", "data": "synthetic"}
    run_id = client.create_run(exp, tags=tags | {"backbone": "tiny", "schedule": "demo"}).info.run_id
    client.log_param(run_id, "seed", "1")
    client.log_param(run_id, "schedule.epochs", "4")
    client.log_metric(run_id, "train_total", 1.0, step=4)
    client.log_metric(run_id, "bbox_AP", 1.0, step=4)
    client.set_terminated(run_id, "FINISHED")
    assert main(["table5", "--tracking-uri", uri, "--ci", "--resamples", "50", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "table5.md").read_text()
    assert f"Left out: deformable conv.: run {run_id[:8]} has no results_bbox.json." in md
    client.delete_run(run_id)


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> tuple[Path, str]:
    """Two real jobs of the Table 4 sweep (tests/test_report.py's tiny sweep), tracked in SQLite."""
    tmp = tmp_path_factory.mktemp("report_ci_runs")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tiny_sweep(tmp, uri)
    return tmp, uri


@pytest.mark.slow
def test_ci_of_real_runs_is_the_interval_their_evaluation_logged(real_store):
    """--ci re-scores each run's own results file on the same 1000 image resamples (seed 0) as its
    evaluation did: a one-seed row's interval is the one the run logged at the end of training."""
    import math

    tmp, uri = real_store
    runs = fetch_runs(uri)
    spec = load_spec("table4")
    with_ci = report_csv("table4", uri, tmp / "ci", "--ci").set_index("row")
    for rec in runs.to_dict("records"):
        row = next(r.name for r in spec.rows if r.config["matching"] == rec["tags.matching"])
        logged = (100 * rec["metrics.bbox_AP_ci_low"], 100 * rec["metrics.bbox_AP_ci_high"])
        assert (with_ci.loc[row, "AP_ci_low"], with_ci.loc[row, "AP_ci_high"]) == pytest.approx(logged), row
    assert math.isnan(with_ci.loc["centripetal shift", "AP_vs_base"])  # the base row (AE 1D) has no run
    md = (tmp / "ci" / "table4.md").read_text()
    sentence = next(line for line in md.splitlines() if line.startswith("95% CI"))
    assert "centripetal shift > center regression" in sentence  # the one pair with runs: paper 40.7 > 40.1
