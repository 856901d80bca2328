"""Rebuild the paper's Tables 4-6 from MLflow runs, beside the paper's numbers.

``python -m cnet.tools.report table4|table5|table6 [--tracking-uri URI] [--format md|csv|tex]
[--experiment NAME] [--sweep-id ID] [--out-dir reports] [--ci [--resamples 1000]] [--log-to-runs]``

``--log-to-runs`` also logs the written files into every run the table used (artifacts ``report/``):
each run of a sweep then shows the table it is part of, beside the paper's numbers.

Runs come from ``mlflow.search_runs`` (every experiment unless ``--experiment``) as one pandas
DataFrame; the rows (``experiments/<table>.yaml``) and the rule that picks each cell's runs live
in :mod:`cnet.tools.report_tables`; :mod:`cnet.tools.report_render` writes the files. ``--ci`` adds
the paired image bootstrap's intervals from the runs' own results files (:mod:`cnet.tools.report_ci`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cnet.tools import report_render as render
from cnet.tools.report_tables import available_tables, build_table, load_spec, parse_epoch_map, remap_epochs

# mlflow (3 s to import) is imported only where runs are read: an empty store never pays for it.


# ---------------------------------------------------------------- runs from MLflow


def missing_sqlite_store(uri: str) -> bool:
    """True for a ``sqlite:///`` URI whose database file does not exist (not created by us)."""
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return bool(path) and path != ":memory:" and not Path(path).exists()


def fetch_runs(tracking_uri: str, experiment: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
    """All active runs as ``mlflow.search_runs`` returns them (``tags.*``, ``params.*``, ``metrics.*``).

    Every experiment unless ``experiment`` (a name) is given; ``sweep_id`` keeps the runs with that
    ``tags.sweep_id``. A missing SQLite file or experiment gives an empty frame.
    """
    if missing_sqlite_store(tracking_uri):
        return pd.DataFrame(columns=["run_id", "status", "start_time"])
    if sweep_id and "'" in sweep_id:
        raise ValueError(f"--sweep-id must not contain a quote, got {sweep_id!r}")
    import mlflow

    where = {"search_all_experiments": True} if experiment is None else {"experiment_names": [experiment]}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # search_runs reads the global URI; restored below
    try:
        return mlflow.search_runs(filter_string=f"tags.sweep_id = '{sweep_id}'" if sweep_id else "", **where)
    finally:
        mlflow.set_tracking_uri(previous)


def history_last_epoch(tracking_uri: str) -> Callable[[str], int | None]:
    """``run_id -> last step of its train_total history`` (None if never logged), cached."""
    clients: list[Any] = []  # made on first use: opening a SQLite store creates it
    cache: dict[str, int | None] = {}

    def last_epoch(run_id: str) -> int | None:
        if run_id not in cache:
            if not clients:
                from mlflow.tracking import MlflowClient

                clients.append(MlflowClient(tracking_uri))
            steps = [m.step for m in clients[0].get_metric_history(run_id, "train_total")]
            cache[run_id] = max(steps) if steps else None
        return cache[run_id]

    return last_epoch


# ---------------------------------------------------------------- CLI


def default_tracking_uri() -> str:
    """As ``train.py``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<current folder>/mlflow.db``."""
    from cnet.tracking import resolve_tracking_uri  # imports mlflow

    return resolve_tracking_uri(None)


def main(argv: list[str] | None = None) -> int:
    tables = available_tables()
    parser = argparse.ArgumentParser(prog="python -m cnet.tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=tables, help="which paper table (experiments/<table>.yaml)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<current folder>/mlflow.db)",
    )
    parser.add_argument("--format", choices=("md", "csv", "tex"), default="md", help="what to print")
    parser.add_argument("--experiment", default=None, help="only this MLflow experiment (default: all)")
    parser.add_argument("--sweep-id", default=None, help="only runs with this tags.sweep_id")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"), help="where <table>.{md,csv,tex,png} go")
    parser.add_argument(
        "--epochs",
        default=None,
        metavar="PAPER=OURS,...",
        help="fill the rows of a PAPER-epoch schedule with runs of OURS epochs (a short sweep: 110=6,210=12)",
    )
    parser.add_argument(
        "--ci",
        action="store_true",
        help="add each row's 95%% interval of AP and of its difference to the first row (paired image "
        "bootstrap of the runs' results files) and say which of the paper's orderings hold",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="image resamples of --ci (default 1000)")
    parser.add_argument(
        "--log-to-runs", action="store_true", help="also log the files into each run the table used (report/)"
    )
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples {args.resamples}: give at least 1")

    spec = load_spec(args.table)
    if args.epochs:
        spec = remap_epochs(spec, parse_epoch_map(args.epochs))
    uri = args.tracking_uri or default_tracking_uri()
    if missing_sqlite_store(uri):
        print(f"note: no MLflow store at {uri}: every cell is 'not run'", file=sys.stderr)
    runs = fetch_runs(uri, args.experiment, args.sweep_id)
    table = build_table(spec, runs, history_last_epoch(uri))
    if args.ci:
        from cnet.tools.report_ci import table_intervals  # COCOeval, Hydra and torch: only here

        records = {str(r["run_id"]): r | {"tracking_uri": uri} for r in runs.to_dict("records")}
        table.intervals = table_intervals(table, records, args.resamples)
    texts = render.write_all(table, args.out_dir)
    print(texts[args.format], end="")
    written = [args.out_dir / f"{spec.key}.{ext}" for ext in ("md", "csv", "tex", "png")]
    if spec.mispair_figure:
        from cnet.tools.mispair_figure import write_mispair_figure  # torch and Hydra: only here

        by_id = {str(r["run_id"]): r for r in runs.to_dict("records")}
        rows = [(row.name, by_id[cell.used[0].run_id]) for row, cell in zip(spec.rows, table.cells) if cell.used]
        figure = write_mispair_figure(rows, spec.mispair_figure, args.out_dir / f"{spec.key}_mispairs.png", uri)
        written += [figure] if figure else []
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    if args.log_to_runs:
        run_ids = sorted({used.run_id for cell in table.cells for used in cell.used})
        log_into_runs(uri, run_ids, written)
        print(f"logged them into {len(run_ids)} runs (artifacts report/)", file=sys.stderr)
    return 0


def log_into_runs(tracking_uri: str, run_ids: list[str], files: list[Path]) -> None:
    """Each of ``files`` into each run's artifacts under ``report/`` (a finished run takes artifacts too)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for run_id in run_ids:
        for path in files:
            client.log_artifact(run_id, str(path), "report")


if __name__ == "__main__":
    sys.exit(main())
