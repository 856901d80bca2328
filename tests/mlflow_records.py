"""Runs of an MLflow store as DataFrame rows, through an explicit client.

``mlflow.search_runs`` reads mlflow's process-wide tracking URI; setting that in one test and
relying on it in another makes the suite depend on test order. This helper takes the URI.
"""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient


def run_records(uri: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per run (``run_id``, ``experiment_id``, ``status``, ``params.*``, ``tags.*``,
    ``metrics.*``) of ``experiment``, or of every experiment when None; newest first."""
    client = MlflowClient(tracking_uri=uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        ids = [] if exp is None else [exp.experiment_id]
    rows = []
    for run in client.search_runs(ids) if ids else []:
        row = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status}
        row |= {f"params.{k}": v for k, v in run.data.params.items()}
        row |= {f"tags.{k}": v for k, v in run.data.tags.items()}
        row |= {f"metrics.{k}": v for k, v in run.data.metrics.items()}
        rows.append(row)
    return pd.DataFrame(rows)
