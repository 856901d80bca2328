"""Table 4 from a real MLflow tracking server (loopback only): the cluster set-up of experiments/README.md."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_report import check_table4_cells, report_csv, tiny_sweep

MLFLOW = Path(sys.executable).with_name("mlflow")
# /health answers in ~30 s on an idle 2-core machine (schema migration + uvicorn start); the CPU
# here is shared, so wait longer than that before calling the server broken.
HEALTH_TIMEOUT_S = 120
PORT_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """End the server and its worker: its own process group, SIGTERM then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def start_server(tmp: Path, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp}/srv.db",
            "--artifacts-destination",
            str(tmp / "artifacts"),
        ],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own group: stop() ends all
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A loopback MLflow server. The port is free when picked but may be taken before the server
    binds it (another process on the machine): a server that exits early is retried on a new port."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    log = open(tmp / "server.log", "w")  # noqa: SIM115 -- the server writes to it until the fixture ends
    proc = None
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for _attempt in range(PORT_ATTEMPTS):
            url = f"http://127.0.0.1:{free_port()}"
            proc = start_server(tmp, int(url.rsplit(":", 1)[1]), log)
            while not healthy(url) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
            if proc.poll() is None and healthy(url):
                break
            stop(proc)
        else:
            pytest.fail(f"mlflow server did not answer /health:\n{(tmp / 'server.log').read_text()[-3000:]}")
        yield tmp, url
    finally:
        if proc is not None:
            stop(proc)
        log.close()


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
