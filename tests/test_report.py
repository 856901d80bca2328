"""Paper Tables 4-6 rebuilt from MLflow runs (cnet.tools.report): the selection rule on hand-built runs
and tables from real tiny runs (the table specs and sweeps: test_report_experiments.py)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cnet.tools.report_render import ours_text, table_frame, to_latex, to_markdown
from cnet.tools.report_tables import (
    METRICS,
    RowSpec,
    build_table,
    load_spec,
    match_row,
    parse_epoch_map,
    remap_epochs,
    select_cell,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAPER_TEXT = sorted((ROOT.parent / "shared" / "seeds").glob("000_*.txt"))
TABLES = ["table3", "table4", "table5", "table6"]
# The brief's transcription (independent of the YAML files): row -> AP AP50 AP75 APS APM APL.
PAPER = {
    "table3": [[38.8, 60.4, 41.7, 19.8, 41.3, 51.3]],
    "table4": [
        [37.3, 53.1, 39.0, 17.8, 39.4, 50.8],
        [37.5, 53.1, 39.7, 17.7, 39.4, 51.2],
        [39.9, 57.7, 42.3, 23.1, 42.3, 52.3],
        [40.1, 55.8, 42.7, 21.0, 42.9, 55.6],
        [40.7, 58.0, 42.8, 22.4, 43.0, 55.4],
    ],
    "table5": [
        [40.7, 58.0, 42.8, 22.4, 43.0, 55.4],
        [40.8, 58.2, 43.2, 23.1, 42.7, 54.9],
        [41.1, 58.5, 43.4, 22.9, 43.4, 55.5],
        [41.5, 58.7, 44.4, 23.3, 44.1, 55.7],
    ],
    "table6": [
        [37.3, 53.1, 39.0, 17.8, 39.4, 50.8],
        [37.3, 53.0, 39.5, 18.3, 39.2, 50.7],
        [41.5, 58.7, 44.4, 23.3, 44.1, 55.7],
        [41.8, 58.9, 44.5, 23.0, 44.1, 56.7],
        [41.7, 59.0, 44.4, 23.3, 44.4, 56.1],
        [42.1, 58.7, 44.9, 23.7, 44.5, 56.8],
    ],
}
COLUMNS = {m: f"metrics.bbox_{m}" for m in METRICS}


def run_record(
    run_id: str, minute: int, status: str = "FINISHED", seed: int = 0, ap: float = 0.4, epochs: int = 110, **tags: str
) -> dict:
    """One row of a ``mlflow.search_runs`` frame (what the report reads)."""
    rec = {
        "run_id": run_id,
        "status": status,
        "start_time": pd.Timestamp(2024, 1, 1, 0, minute, tz="UTC"),
        "params.seed": str(seed),
        "params.schedule.epochs": str(epochs),
        "tags.matching": "centripetal",
        "tags.adaption": "none",
        "tags.data": "coco",
        "tags.backbone": "hourglass52",
        "tags.schedule": "ablation",
    }
    rec |= {f"tags.{k}": v for k, v in tags.items()}
    rec |= dict.fromkeys(COLUMNS.values(), ap)
    return rec


def trained_all(epochs: int = 110):
    return lambda run_id: epochs


# ---------------------------------------------------------------- selection rule


def test_latest_finished_run_per_seed_then_mean_std_over_seeds():
    runs = pd.DataFrame(
        [run_record("s0old", 1, ap=0.30), run_record("s0new", 5, ap=0.40), run_record("s1", 3, seed=1, ap=0.50)]
    ).sample(frac=1, random_state=0)
    cell = select_cell(runs, COLUMNS, trained_all())
    assert cell.state == "ok" and cell.n == 2 and cell.label == "ok, n=2"
    assert sorted(r.run_id for r in cell.used) == ["s0new", "s1"]
    assert cell.mean["AP"] == pytest.approx(45.0)
    assert cell.std["AP"] == pytest.approx(math.sqrt(50.0))  # sample std of 40 and 50
    assert ours_text(cell, "AP") == "45.0 ± 7.1"


def test_newer_failed_run_keeps_the_finished_value_and_says_so():
    runs = pd.DataFrame([run_record("ok", 1, ap=0.41), run_record("crash", 2, status="FAILED", ap=float("nan"))])
    cell = select_cell(runs, COLUMNS, trained_all())
    assert cell.state == "ok" and cell.mean["AP"] == pytest.approx(41.0)
    assert cell.notes == ["seed 0: latest run crash is FAILED; value from an earlier FINISHED run"]


@pytest.mark.parametrize("statuses", [["FAILED"], ["KILLED", "FAILED"]])
def test_no_finished_run_is_failed_without_a_value(statuses):
    runs = pd.DataFrame([run_record(f"r{i}", i, status=s) for i, s in enumerate(statuses)])
    cell = select_cell(runs, COLUMNS, trained_all())
    assert (cell.state, cell.n, cell.label, ours_text(cell, "AP")) == ("failed", 0, "failed", "failed")


def test_running_latest_shows_its_epoch_and_no_invented_value():
    runs = pd.DataFrame([run_record("live", 1, status="RUNNING", ap=float("nan"))])
    cell = select_cell(runs, COLUMNS, lambda run_id: {"live": 3}[run_id])
    assert cell.state == "running" and cell.label == "running 3/110" and ours_text(cell, "AP") == "running 3/110"


def test_running_rerun_of_a_finished_seed_is_running_with_the_old_value():
    runs = pd.DataFrame([run_record("done", 1, ap=0.2), run_record("again", 2, status="RUNNING")])
    cell = select_cell(runs, COLUMNS, lambda run_id: {"done": 110, "again": 7}[run_id])
    assert cell.label == "running 7/110" and cell.mean["AP"] == pytest.approx(20.0)
    assert [r.run_id for r in cell.used] == ["done"]


def test_finished_before_its_schedule_ends_is_partial():
    runs = pd.DataFrame([run_record("short", 1, epochs=5, ap=0.1)])
    cell = select_cell(runs, COLUMNS, lambda run_id: 2)
    assert cell.state == "partial" and cell.label == "partial 2/5" and cell.mean["AP"] == pytest.approx(10.0)


def test_no_candidate_is_not_run_and_coco_minus_one_is_na():
    assert (
        select_cell(pd.DataFrame(columns=["run_id", "status", "start_time"]), COLUMNS, trained_all()).state == "not run"
    )
    rec = run_record("r", 1, ap=0.25) | {"metrics.bbox_APL": -1.0}
    cell = select_cell(pd.DataFrame([rec]), COLUMNS, trained_all())
    assert ours_text(cell, "AP") == "25.0" and ours_text(cell, "APL") == "n/a"


def test_figure_training_left_out_beside_its_ap_is_na_and_a_metric_never_logged_says_so():
    # training drops COCO's -1s before logging (LogMetrics): APL is missing next to a logged AP
    rec = {k: v for k, v in run_record("r", 1, ap=0.25).items() if k != "metrics.bbox_APL"}
    columns = COLUMNS | {"crowd AP": "metrics.crowd_bbox_AP"}  # an extra nobody logged
    cell = select_cell(pd.DataFrame([rec]), columns, trained_all())
    assert [ours_text(cell, m) for m in ("AP", "APL", "crowd AP")] == ["25.0", "n/a", "not logged"]
    no_ap = {k: v for k, v in rec.items() if k != "metrics.bbox_AP"}  # no evaluation logged at all
    cell = select_cell(pd.DataFrame([no_ap]), COLUMNS, trained_all())
    assert ours_text(cell, "AP") == "not logged" and ours_text(cell, "APL") == "not logged"


def test_rows_match_on_tags_mask_head_default_and_epochs():
    runs = pd.DataFrame(
        [
            run_record("plain", 1),
            run_record("masked", 2, mask_head="centripetal_mask"),
            run_record("long", 3, epochs=210),
            run_record("ae", 4, matching="ae1d"),
        ]
    )
    row = RowSpec(
        "r", {"matching": "centripetal", "adaption": "none", "mask_head": "none"}, dict.fromkeys(METRICS, 0.0)
    )
    assert list(match_row(runs, row).run_id) == ["plain", "long"]  # no mask_head tag = "none"
    row110 = RowSpec("r", row.config, row.paper, epochs=110)
    assert list(match_row(runs, row110).run_id) == ["plain"]
    masked = RowSpec("r", {**row.config, "mask_head": "centripetal_mask"}, row.paper, epochs=110)
    assert list(match_row(runs, masked).run_id) == ["masked"]


def test_a_short_sweep_fills_the_rows_of_each_paper_schedule_and_the_title_says_so():
    spec = remap_epochs(load_spec("table6"), parse_epoch_map("110=6,210=12"))
    tags = {"matching": "centripetal", "adaption": "cross_star", "data": "synthetic", "backbone": "tiny"}
    runs = pd.DataFrame([run_record("short", 1, epochs=6, **tags), run_record("long", 2, epochs=12, **tags),
                         run_record("paper", 3, epochs=110, **tags)])  # fmt: skip
    table = build_table(spec, runs, lambda run_id: {"short": 6, "long": 12, "paper": 110}[run_id])
    used = [[ref.run_id for ref in cell.used] for cell in table.cells]
    assert used == [[], [], ["short"], [], ["long"], []]  # rows 3 and 5: centripetal + cross_star, no mask
    assert table.title.endswith("ours on SYNTHETIC data, tiny backbone, 6/12-epoch schedule: not a COCO reproduction")
    assert [spec.epoch_label(r) for r in spec.rows] == ["110 (ours 6)"] * 4 + ["210 (ours 12)"] * 2
    with pytest.raises(ValueError, match="table table6 has rows of \\[110, 210\\] epochs, not \\[100\\]"):
        remap_epochs(spec, {100: 5})
    with pytest.raises(ValueError, match="expected PAPER=OURS"):
        parse_epoch_map("110:6")


def test_title_says_when_runs_are_not_the_papers_setting():
    spec = load_spec("table5")
    paper_like = pd.DataFrame([run_record("a", 1)])
    assert build_table(spec, paper_like, trained_all()).title == spec.title
    toy = pd.DataFrame([run_record("b", 1, epochs=24, data="synthetic", backbone="tiny", schedule="demo")])
    title = build_table(spec, toy, trained_all(24)).title
    assert title == f"{spec.title} — ours on SYNTHETIC data, tiny backbone, 24-epoch schedule: not a COCO reproduction"


def test_rendered_table_keeps_states_paper_numbers_and_provenance():
    spec = load_spec("table6")
    runs = pd.DataFrame(
        [
            run_record("cn1", 1, matching="ae1d", ap=0.3),
            run_record("cs2", 2, adaption="cross_star", epochs=210, status="FAILED"),
            run_record("cm3", 3, matching="ae1d", mask_head="centripetal_mask", ap=0.31) | {"metrics.segm_AP": 0.25},
        ]
    )
    table = build_table(spec, runs, trained_all())
    frame = table_frame(table)
    assert list(frame.state) == ["ok", "ok", "not run", "not run", "failed", "not run"]
    assert list(frame.epoch) == [110, 110, 110, 110, 210, 210]
    assert frame.AP_ours[0] == pytest.approx(30.0) and frame.AP_diff[0] == pytest.approx(30.0 - 37.3)
    assert frame.run_ids[0] == "cn1" and frame.dataset[0] == "coco" and frame.schedule[0] == "ablation:110"
    md = to_markdown(table)
    assert "| CornerNet | 110 | 30.0 | 37.3 | -7.3 |" in md and "run cn1 (seed 0, FINISHED" in md
    assert "| CornerNet w/mask | 110 | 31.0 | 37.3 | -6.3 |" in md and "25.0" in md  # box AP, then segm_AP
    tex = to_latex(table)
    assert "CornerNet w/mask & 110 & 31.0 & 37.3 & -6.3" in tex and "CornerNet & 110 & 30.0 & 37.3 & -7.3" in tex


# ---------------------------------------------------------------- real runs


SMALL = [
    "data.source.num_train=16",
    "data.source.num_val=4",
    "data.source.num_val_crowd=2",
    "data.source.image_size=60",
    "data.train_transform.crop_size=63",
    "data.test_transform.pad_logical_or=63",
    "schedule.epochs=1",
    "schedule.warmup_iters=2",
    "trainer.batch_size=4",
    "trainer.progress=false",
    "test.corner_topk=20",
    "test.flip=false",
    "test.matching_only=false",
]
# The table4 sweep, shrunk: its two rows, with command-line groups over the experiment's defaults.
SWEEP = [
    "-m",
    "+experiment=table4",
    "data=synthetic",
    "backbone=tiny",
    "schedule=demo",
    "trainer=demo",
    "matching=centripetal,center_regression",
    *SMALL,
]


def tiny_sweep(tmp: Path, tracking_uri: str, *extra: str) -> None:
    """Two real jobs of the Table 4 sweep (with overrides ``extra``), tracked at ``tracking_uri``."""
    env = dict(os.environ, CNET_CACHE_DIR=str(tmp / "cache"), MLFLOW_TRACKING_URI=tracking_uri)
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SWEEP, *extra, f"hydra.sweep.dir={tmp}/sweep"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def report_csv(table: str, uri: str, out: Path, *extra: str) -> pd.DataFrame:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnet.tools.report",
            table,
            "--tracking-uri",
            uri,
            "--format",
            "csv",
            "--out-dir",
            str(out),
            *extra,
        ],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT), CNET_CACHE_DIR=str(out.parent / "cache")),
    )
    assert res.returncode == 0, res.stderr
    assert (out / f"{table}.csv").read_text() == res.stdout
    return pd.read_csv(out / f"{table}.csv", keep_default_na=False, na_values=[""])


def logged_runs(uri: str) -> pd.DataFrame:
    from cnet.tools.report import fetch_runs

    return fetch_runs(uri)


def check_table4_cells(frame: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Our cells equal the logged metrics x 100, paper cells equal the YAML, the rest is 'not run'."""
    spec = load_spec("table4")
    assert list(frame.row) == [r.name for r in spec.rows]
    by_matching = {r["tags.matching"]: r for r in runs.to_dict("records")}
    assert sorted(by_matching) == ["center_regression", "centripetal"]
    for row, rec in zip(spec.rows, frame.to_dict("records")):
        assert [rec[f"{m}_paper"] for m in METRICS] == [row.paper[m] for m in METRICS]
        run = by_matching.get(row.config["matching"])
        if run is None:
            assert rec["state"] == "not run" and rec["n"] == 0 and all(math.isnan(rec[f"{m}_ours"]) for m in METRICS)
            continue
        assert rec["state"] == "ok" and rec["n"] == 1 and rec["run_ids"] == run["run_id"]
        assert (rec["dataset"], rec["backbone"], rec["schedule"]) == ("synthetic", "tiny", "demo:1")
        for m in METRICS:
            logged = run.get(f"metrics.bbox_{m}")
            if logged is None or math.isnan(logged) or logged < 0:  # COCO: no object of that size (not logged)
                assert math.isnan(rec[f"{m}_ours"])
            else:
                assert rec[f"{m}_ours"] == pytest.approx(100 * logged)
                assert rec[f"{m}_diff"] == pytest.approx(100 * logged - row.paper[m])
        assert rec["crowd_bbox_AP_ours"] == pytest.approx(100 * run["metrics.crowd_bbox_AP"])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("report_runs")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tiny_sweep(tmp, uri)
    return tmp, uri


@pytest.mark.slow
def test_table4_from_real_runs_in_sqlite(store):
    tmp, uri = store
    runs = logged_runs(uri)
    assert set(runs["tags.data"]) == {"synthetic"} and set(runs["tags.backbone"]) == {"tiny"}  # CLI won
    frame = report_csv("table4", uri, tmp / "reports", "--log-to-runs")
    check_table4_cells(frame, runs)
    logged = {f"report/table4.{ext}" for ext in ("md", "csv", "tex", "png")} | {"report/table4_mispairs.png"}
    for run_id in frame.run_ids.dropna():  # each run of the table carries it
        assert {a.path for a in MlflowClient(uri).list_artifacts(run_id, "report")} == logged
    md = (tmp / "reports" / "table4.md").read_text()
    assert "ours on SYNTHETIC data, tiny backbone, 1-epoch schedule: not a COCO reproduction" in md
    # the picture: one crowd image per row that has a run (two here), from the runs' own files
    from PIL import Image

    from cnet.tools.mispair_figure import TITLE_H

    with Image.open(tmp / "reports" / "table4_mispairs.png") as figure:
        assert figure.width == 2 * (figure.height - 24 - TITLE_H)  # square synthetic images, side by side
    # --sweep-id keeps the runs tagged with it (computed from the tags: jobs of one sweep may differ)
    sweep_id = runs.loc[runs["tags.matching"] == "centripetal", "tags.sweep_id"].iloc[0]
    only = report_csv("table4", uri, tmp / "by_sweep", "--experiment", "cnet-table4", "--sweep-id", sweep_id)
    in_sweep = set(runs.loc[runs["tags.sweep_id"] == sweep_id, "tags.matching"])
    spec = load_spec("table4")
    assert list(only.state) == ["ok" if r.config["matching"] in in_sweep else "not run" for r in spec.rows]
    assert only.set_index("row").loc["centripetal shift", "state"] == "ok"
    assert set(report_csv("table4", uri, tmp / "other", "--sweep-id", "no-such-sweep").state) == {"not run"}


@pytest.mark.slow
def test_failed_partial_and_running_runs_are_shown_as_such(store):
    from mlflow.tracking import MlflowClient

    tmp, real_uri = store
    shutil.copy(tmp / "mlflow.db", tmp / "copy.db")  # the real runs, plus the ones made here
    uri = f"sqlite:///{tmp}/copy.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cnet-table4").experiment_id
    base = {"data": "synthetic", "backbone": "tiny", "schedule": "demo", "adaption": "none"}

    def make(matching: str, status: str, epochs: int, steps: int, ap: float | None) -> str:
        run = client.create_run(exp, tags=base | {"matching": matching})
        client.log_param(run.info.run_id, "seed", "0")
        client.log_param(run.info.run_id, "schedule.epochs", str(epochs))
        for step in range(1, steps + 1):
            client.log_metric(run.info.run_id, "train_total", 1.0 / step, step=step)
        if ap is not None:
            client.log_metric(run.info.run_id, "bbox_AP", ap, step=steps)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    make("ae2d", "FAILED", 5, 1, None)
    partial = make("center_heatmap", "FINISHED", 5, 2, 0.123)
    make("ae1d", "RUNNING", 5, 3, None)
    real = logged_runs(real_uri)
    crash = make("centripetal", "KILLED", 1, 0, None)  # newer than the real centripetal run
    frame = report_csv("table4", uri, tmp / "states").set_index("row")
    assert frame.loc["associative emb.(2D)", "state"] == "failed"
    assert frame.loc["associative emb.(1D)", "state"] == "running 3/5"
    assert frame.loc["center prediction", "state"] == "partial 2/5"
    assert frame.loc["center prediction", "AP_ours"] == pytest.approx(12.3)
    assert frame.loc["center prediction", "run_ids"] == partial
    kept = real[real["tags.matching"] == "centripetal"].iloc[0]
    assert frame.loc["centripetal shift", "run_ids"] == kept["run_id"]  # still the finished run
    assert frame.loc["centripetal shift", "AP_ours"] == pytest.approx(100 * kept["metrics.bbox_AP"])
    assert f"latest run {crash[:8]} is KILLED" in frame.loc["centripetal shift", "note"]
    md = (tmp / "states" / "table4.md").read_text()
    assert re.search(r"\| associative emb\.\(1D\) \| running 3/5 \| 37\.3 \| — \|", md)
