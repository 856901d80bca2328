"""The MLflow UI's runs table set up for comparing ablations, and the link that opens it.

MLflow 3's experiment page opens in its GenAI view (traces, latency, an assistant) unless the URL
says ``workflowType=machine_learning``, and its runs table shows Created / Dataset / Duration /
Source / Models until someone picks columns by hand. What it does read: a *shared view state*, an
experiment tag ``mlflow.sharedViewState.<key>`` holding the page's state as JSON (the same thing its
"Share" button stores), opened by ``?viewStateShareKey=<key>`` in the URL. :func:`publish` writes
ours on the experiment (the ablation columns, their widths so headers are not cut, newest runs
first) and :func:`runs_table_url` gives the link.

What MLflow cannot do (3.17): make this the experiment's default view (a plain link to the
experiment still opens what that browser chose last), format values (figures show as logged,
full float precision), or keep a metric column wider than the table allows.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from mlflow.tracking import MlflowClient

from cnet.tracking import _retry_locked, open_store

VIEW_KEY = "cnet-ablations"  # the share key; the tag is mlflow.sharedViewState.<VIEW_KEY>
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
DEFAULT_UI = "http://127.0.0.1:5000"  # `make ui` (mlflow ui's default port)

# the runs table's columns (MLflow groups them: metrics, then tags, then attributes such as Dataset):
# box AP, look-alike-crowd AP, matching-only AP, the crowd's mispair rate, then what the ablation varies.
# Few and narrow, so that they fit beside the run name in one screen (backbone, epochs: in the name)
METRICS = ("bbox_AP", "crowd_bbox_AP", "oracle_bbox_AP", "crowd_bbox_mispair_rate")
TAGS = ("matching", "adaption")
ATTRIBUTES = ("Dataset",)
DATASET_WIDTH = 260  # "synthetic/train 400 images" and its digest


def column(kind: str, name: str) -> str:
    """A column's id as the runs table spells it: ``metrics.`bbox_AP```."""
    return f"{kind}.`{name}`"


def view_state() -> dict[str, Any]:
    """The page state of the ablation view: columns, their widths (wide enough for the header), order."""
    columns = [column("metrics", m) for m in METRICS] + [column("tags", t) for t in TAGS]
    columns += [column("attributes", a) for a in ATTRIBUTES]
    widths = {c: max(100, 7 * len(c.split("`")[1]) + 44) for c in columns}  # the header in full (13 px font)
    widths[column("attributes", "Dataset")] = DATASET_WIDTH
    return {
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": widths,
        "runsHiddenMode": "SHOW_ALL",  # every run in the charts, not only the first 10
        "hideEmptyCharts": True,
    }


def ui_base(tracking_uri: str) -> str:
    """Where the UI of ``tracking_uri`` answers: a tracking server serves its own UI; a file store
    is opened with ``make ui`` (:data:`DEFAULT_UI`)."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI


def runs_table_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in model-training mode with the ablation view."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def publish(tracking_uri: str, experiment: str) -> str | None:
    """Store the ablation view on ``experiment`` (an experiment tag, rewritten each time) and return
    the link to its runs table; None when the experiment does not exist."""
    client = open_store(tracking_uri)
    exp = _retry_locked(client.get_experiment_by_name, experiment)
    if exp is None:
        return None
    _store_view(client, exp.experiment_id)
    return runs_table_url(ui_base(tracking_uri), exp.experiment_id)


def publish_all(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """The ablation view on every active experiment of the store that has runs (MLflow's empty
    ``Default`` is left alone): ``(experiment name, link)`` pairs, links to the UI at ``base``."""
    client = open_store(tracking_uri)
    links = []
    for exp in _retry_locked(client.search_experiments):
        if _retry_locked(client.search_runs, [exp.experiment_id], max_results=1):
            _store_view(client, exp.experiment_id)
            links.append((exp.name, runs_table_url(base, exp.experiment_id)))
    return links


def _store_view(client: MlflowClient, experiment_id: str) -> None:
    _retry_locked(client.set_experiment_tag, experiment_id, VIEW_TAG, json.dumps(view_state()))
