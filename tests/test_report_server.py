"""Table 4 from a real MLflow tracking server: the session's PostgreSQL-backed server with users (the
cluster set-up of experiments/README.md); the jobs and the report log in as the session's job user."""

from __future__ import annotations

import pytest
from test_report import check_table4_cells, report_csv, tiny_sweep

from tests.servers import MlflowServer


@pytest.mark.slow
def test_table4_from_a_tracking_server(mlflow_postgres: MlflowServer, tmp_path):
    url = mlflow_postgres.url
    tiny_sweep(tmp_path, url, "tracking.experiment=report-server")  # the server is shared: an experiment of its own
    from cnet.tools.report import fetch_runs

    runs = fetch_runs(url, experiment="report-server")
    assert len(runs) == 2 and set(runs.status) == {"FINISHED"}
    assert all(uri.startswith("mlflow-artifacts:") for uri in runs.artifact_uri)  # stored by the server
    frame = report_csv("table4", url, tmp_path / "reports", "--experiment", "report-server")
    check_table4_cells(frame, runs)
