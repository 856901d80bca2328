"""``make ui`` as a researcher meets it: a sweep's printed link, opened in headless Chromium, lands on
the runs table with bbox_AP for every run, and a run's artifacts list its evaluation picture.

Screenshots go to ``$CNET_UI_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.browser import browser_available, start_chromium, wait_for
from tests.servers import free_port
from tests.test_train_cli import FAST, ROOT, run_train, store

BBOX_AP = "metrics.`bbox_AP`"


def _start_ui(uri: str, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m cnet.tools.ui`` (what ``make ui`` runs) and the first link it prints."""
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "cnet.tools.ui", "--backend-store-uri", uri, "--port", str(port)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    link = wait_for(lambda: re.search(r"^runs table of experiment cnet: (\S+)$", log.read_text(), re.M), 60, "the link")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{base}/health", timeout=2).status == 200, 180, "mlflow ui")
    return proc, link.group(1)


@pytest.mark.slow
def test_the_printed_link_shows_bbox_ap_for_every_run_and_the_run_page_lists_the_picture(tmp_path):
    ok, reason = browser_available()
    if not ok:
        pytest.skip(reason)
    shots = Path(os.environ.get("CNET_UI_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", *FAST, "schedule.epochs=2", "trainer.eval_every=1", "adaption=none",
            "matching=ae1d,centripetal"]  # fmt: skip
    res = run_train(args, tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    printed = re.search(r"^runs table: (\S+)$", res.stdout, re.M)
    assert printed, res.stdout[-2000:]
    client = MlflowClient(store(tmp_path))
    exp = client.get_experiment_by_name("cnet")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2

    port = free_port()
    ui, link = _start_ui(store(tmp_path), port, tmp_path / "ui.log")
    try:
        # `make ui` prints the link the sweep printed, at the port it serves
        assert link == printed.group(1).replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
        driver = start_chromium()
        try:
            driver.get(link)
            for run in runs:  # the row of each run (ag-grid row id = run id) has its box AP, as logged
                cell = f'.ag-row[row-id="{run.info.run_id}"] [col-id="{BBOX_AP}"]'
                text = wait_for(lambda c=cell: driver.find_element("css selector", c).text, what=f"bbox_AP of {cell}")
                assert float(text) == pytest.approx(run.data.metrics["bbox_AP"])
            header = driver.find_element("css selector", f'.ag-header-cell[col-id="{BBOX_AP}"]')
            assert header.text == "bbox_AP" and "Model training" in driver.find_element("tag name", "body").text
            time.sleep(1)  # let the grid paint before the picture
            driver.save_screenshot(str(shots / "runs_table.png"))

            run = runs[0]
            page = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts"
            driver.get(f"{page}/eval/epoch_0002/detections.png")
            wait_for(lambda: "detections.png" in driver.find_element("tag name", "body").text, what="the artifact tree")
            listed = driver.find_element("tag name", "body").text
            assert "eval" in listed and "train.log" in listed and "config.yaml" in listed
            wait_for(lambda: driver.find_elements("css selector", "img[src*='detections.png'], img[src^='blob:']"),
                     what="the picture's preview")  # fmt: skip
            time.sleep(1)
            driver.save_screenshot(str(shots / "run_artifacts.png"))
            driver.get(
                f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics"
            )
            wait_for(lambda: "AP" in driver.find_element("tag name", "body").text, what="the metrics tab")
            time.sleep(3)
            driver.save_screenshot(str(shots / "run_metrics.png"))
        finally:
            driver.quit()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
