"""The report's table specs against the paper, the experiments that sweep each table's rows, and the
report of an empty store (the paper's numbers, every cell "not run")."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from test_report import CONF, PAPER, PAPER_TEXT, ROOT, TABLES, run_record

from cnet.tools.report_render import to_markdown
from cnet.tools.report_tables import METRICS, available_tables, build_table, load_spec


@pytest.mark.parametrize("table", TABLES)
def test_paper_values_in_yaml_are_the_papers(table):
    spec = load_spec(table)
    assert available_tables() == TABLES
    assert [[row.paper[m] for m in METRICS] for row in spec.rows] == PAPER[table]
    assert all(len(row.paper) == 6 for row in spec.rows)
    if PAPER_TEXT:  # the paper's own text, where this checkout has it
        text = " ".join(PAPER_TEXT[0].read_text().split())
        for row, paper in zip(spec.rows, PAPER[table]):
            epoch = f" {row.epochs}" if row.epochs else ""
            epoch = " Hourglass-104" if table == "table3" else epoch  # Table 3 names the backbone
            assert f"{row.name}{epoch} " + " ".join(f"{v:.1f}" for v in paper) in text


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("table", TABLES)
def test_experiment_sets_the_papers_setting_and_sweeps_the_tables_rows(table):
    spec = load_spec(table)
    cfg = compose_hydra([f"+experiment={table}"])
    choices = cfg.hydra.runtime.choices
    assert (choices.backbone, choices.schedule, choices.data, choices.trainer) == (
        spec.setting["backbone"],
        spec.setting["schedule"],
        spec.setting["data"],
        "gpu",
    )
    assert cfg.schedule.epochs == spec.setting["epochs"] and cfg.tracking.experiment == spec.experiment
    swept = {k: v.split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for group, options in swept.items():
        assert all((CONF / group / f"{o}.yaml").is_file() for o in options), (group, options)
    if table == "table6":  # one named configuration per row: conf/experiment/table6_*.yaml
        assert swept == {}
        rows = sorted(p.stem for p in (CONF / "experiment").glob("table6_*.yaml"))
        made = []
        for name in rows:
            row_cfg = compose_hydra([f"+experiment={name}"])
            tags = {g: row_cfg.hydra.runtime.choices[g] for g in ("matching", "adaption", "mask_head")}
            made.append((tags, row_cfg.schedule.epochs))
            assert row_cfg.tracking.experiment == spec.experiment
        assert sorted(map(str, made)) == sorted(str((r.config, r.epochs)) for r in spec.rows)
        return
    for group in ("matching", "adaption", "mask_head"):
        values = swept.get(group, [choices[group]])
        assert sorted(values) == sorted({r.config[group] for r in spec.rows}), group


@pytest.mark.parametrize("table", TABLES)
def test_command_line_groups_win_over_the_experiments_defaults(table):
    cfg = compose_hydra([f"+experiment={table}", "data=synthetic", "backbone=tiny", "schedule=demo", "trainer=demo"])
    choices = cfg.hydra.runtime.choices
    assert (choices.data, choices.backbone, choices.schedule, choices.trainer) == ("synthetic", "tiny", "demo", "demo")
    assert cfg.data.source._target_ == "cnet.data.SyntheticData" and cfg.trainer.batch_size == 16
    assert cfg.tracking.experiment == f"cnet-{table}"


def test_sweep_composes_with_the_slurm_launcher():
    cfg = compose_hydra(["+experiment=table5", "hydra/launcher=slurm_gpu", "data.root=/data/coco"])
    assert cfg.hydra.launcher.gpus_per_node == 8 and "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.tasks_per_node == 8  # one task per GPU
    assert cfg.hydra.sweeper.params.adaption == "none,dcn,roi_conv,cross_star"


@pytest.mark.parametrize("table", TABLES)
def test_empty_store_prints_the_papers_numbers_and_not_run(table, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnet.tools.report",
            table,
            "--tracking-uri",
            f"sqlite:///{tmp_path}/empty.db",
            "--out-dir",
            str(tmp_path / "reports"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "paper" not in line]
    assert len(rows) == len(PAPER[table])
    for line, paper in zip(rows, PAPER[table]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        first = 2 if table == "table6" else 1
        assert [float(cells[first + 1 + 3 * i]) for i in range(6)] == paper
        assert [cells[first + 3 * i] for i in range(6)] == ["not run"] * 6 and cells[-1] == "not run"
    assert not (tmp_path / "empty.db").exists()  # reading never creates a store
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        f"{table}.{e}" for e in ("csv", "md", "png", "tex")
    ]


SEGM = {"AP": 0.30, "AP50": 0.52, "AP75": 0.31, "APS": 0.12, "APM": 0.33, "APL": 0.46}


def test_table3_shows_the_mask_ap_and_table6_the_box_ap_of_the_same_run():
    """One finished HG-104 full-model run with the mask head, box AP 0.40 in every column and other
    mask figures: Table 3 (mask AP, ``metric: segm``) must show the segm figures x 100 and the box AP
    only in its extra column; Table 6's CentripetalNet 210-epoch row the box figures, with the mask
    AP as its extra."""
    tags = {"adaption": "cross_star", "mask_head": "centripetal_mask", "backbone": "hourglass104"}
    rec = run_record("full", 1, ap=0.40, epochs=210, schedule="paper", **tags)
    runs = pd.DataFrame([rec | {f"metrics.segm_{m}": v for m, v in SEGM.items()}])
    table3 = build_table(load_spec("table3"), runs, lambda run_id: 210)
    (cell,) = table3.cells
    assert cell.state == "ok" and [r.run_id for r in cell.used] == ["full"]
    assert cell.mean == pytest.approx({m: 100 * v for m, v in SEGM.items()} | {"bbox_AP": 40.0})
    assert "| CentripetalNet(single-scale) | 30.0 | 38.8 | -8.8 | 52.0 | 60.4 | -8.4 |" in to_markdown(table3)
    table6 = build_table(load_spec("table6"), runs, lambda run_id: 210)
    assert [c.state for c in table6.cells] == ["not run"] * 5 + ["ok"]
    assert table6.cells[-1].mean == pytest.approx(dict.fromkeys(METRICS, 40.0) | {"segm_AP": 30.0, "segm_AP50": 52.0,
                                                                                 "segm_AP75": 31.0})  # fmt: skip
