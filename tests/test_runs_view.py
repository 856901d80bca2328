"""cnet.runs_view and ``make ui``'s links: the ablation view stored on the experiment, the link to it."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

from mlflow.tracking import MlflowClient

from cnet.run import LogMetrics
from cnet.runs_view import METRICS, VIEW_KEY, VIEW_TAG, publish, publish_all, runs_table_url, ui_base
from tests.test_train_cli import ROOT


def test_publish_stores_the_view_on_the_experiment_and_links_to_its_runs_table(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("abl")
    link = publish(uri, "abl")
    assert link == runs_table_url("http://127.0.0.1:5000", exp_id)
    parts = urlsplit(link)
    assert parts.fragment.startswith(f"/experiments/{exp_id}/runs?")  # the UI routes in the fragment
    assert parse_qs(parts.fragment.split("?", 1)[1]) == {
        "workflowType": ["machine_learning"],
        "viewStateShareKey": [VIEW_KEY],
    }
    state = json.loads(client.get_experiment(exp_id).tags[VIEW_TAG])
    assert state["selectedColumns"][:2] == ["metrics.`bbox_AP`", "metrics.`crowd_bbox_AP`"]
    assert "tags.`matching`" in state["selectedColumns"] and "attributes.`Dataset`" in state["selectedColumns"]
    assert state["columnWidths"]["metrics.`crowd_bbox_mispair_rate`"] > 8 * len("crowd_bbox_mispair_rate")
    assert publish(uri, "no-such-experiment") is None


def test_the_view_shows_figures_runs_log():
    class Rec:
        def __init__(self) -> None:
            self.logged: dict[str, float] = {}

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            self.logged |= metrics

    rec = Rec()
    figures = {f"{s}_{f}": 0.5 for s in ("bbox", "crowd_bbox", "oracle_bbox") for f in ("AP", "mispair_rate")}
    LogMetrics(rec).on_evaluate(None, 1, figures)  # type: ignore[arg-type]
    assert set(METRICS) <= set(rec.logged)


def test_a_tracking_server_serves_its_own_ui():
    assert ui_base("http://tracking:5000/") == "http://tracking:5000"
    assert ui_base("sqlite:////x/mlflow.db") == "http://127.0.0.1:5000"


def test_make_ui_prints_a_link_per_experiment_with_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    used, empty = client.create_experiment("used"), client.create_experiment("empty")
    client.set_terminated(client.create_run(used).info.run_id)
    assert publish_all(uri, "http://h:1") == [("used", runs_table_url("http://h:1", used))]
    assert VIEW_TAG not in client.get_experiment(empty).tags
    res = subprocess.run([sys.executable, "-m", "cnet.tools.ui", "--backend-store-uri", uri, "--port", "5123",
                          "--no-serve"], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"runs table of experiment used: {runs_table_url('http://127.0.0.1:5123', used)}"
