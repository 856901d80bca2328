"""Table 4 from a real MLflow tracking server (loopback only): the cluster set-up of experiments/README.md."""

from __future__ import annotations

import pytest
from test_report import check_table4_cells, report_csv, tiny_sweep

from tests.servers import MlflowServer

PORT_ATTEMPTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The README's server command on SQLite stores (runs, users), the jobs and the report logged in
    as one user. The port is free when picked but may be taken before the server binds it (another
    process on the machine): a failed start retries on a new port."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    for attempt in range(PORT_ATTEMPTS):
        srv = MlflowServer(tmp, f"sqlite:///{tmp}/srv.db", f"sqlite:///{tmp}/auth.db")
        try:
            srv.start()
            break
        except RuntimeError:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    try:
        with pytest.MonkeyPatch.context() as mp:  # the jobs and the report tool inherit the login
            mp.setenv("MLFLOW_TRACKING_USERNAME", "report")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", srv.add_user("report"))
            yield tmp, srv.url
    finally:
        srv.stop()


@pytest.mark.slow
def test_table4_from_a_tracking_server(server):
    tmp, url = server
    tiny_sweep(tmp, url)
    from cnet.tools.report import fetch_runs

    runs = fetch_runs(url, experiment="cnet-table4")
    assert len(runs) == 2 and set(runs.status) == {"FINISHED"}
    assert all(uri.startswith("mlflow-artifacts:") for uri in runs.artifact_uri)  # stored by the server
    frame = report_csv("table4", url, tmp / "reports")
    check_table4_cells(frame, runs)
