"""The paper's Tables 4-6 as a table model: specs, the cell-selection rule, built tables.

No MLflow here: the runs arrive as one pandas DataFrame shaped like ``mlflow.search_runs``'s
(``tags.*``, ``params.*``, ``metrics.*``; read by :mod:`cnet.tools.report`, rendered by
:mod:`cnet.tools.report_render`).

The rows, their configurations and the paper's numbers are data: ``experiments/<table>.yaml``.
Each table cell is chosen from the runs by this rule (see :func:`select_cell`):

1. candidates: runs whose tags equal the row's ``config`` (``matching``, ``adaption``,
   ``mask_head`` -- absent on a run means ``"none"``); a row with ``epochs`` (Table 6) also needs
   ``params.schedule.epochs`` equal to it;
2. per seed (``params.seed``), runs are ordered by ``start_time``; the value comes from the
   latest FINISHED run of that seed;
3. several seeds: mean ± sample std (ddof=1) over seeds, with n;
4. the cell's state is never hidden: ``not run`` (no candidate), ``running e/E`` (the latest run
   of a seed is RUNNING; e = last epoch of its ``train_total`` history, E = its schedule),
   ``failed`` (runs exist, none FINISHED), ``partial e/E`` (a used FINISHED run trained fewer
   epochs than its ``params.schedule.epochs``), ``ok``.

Our numbers are ``metrics.<metric>_*`` x 100 (percent, like the paper); ``metric`` is the spec's
``bbox`` (default) or ``segm`` (Table 3: mask AP). COCO reports -1 for an
area range without objects: such a figure is shown as ``n/a``, never as a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cnet.resources import EXPERIMENTS_DIR

METRICS = ("AP", "AP50", "AP75", "APS", "APM", "APL")  # the paper's columns, metrics.bbox_<name>
TAG_DEFAULTS = {"mask_head": "none"}  # a run without this tag was trained without that part
TERMINAL_FAILED = ("FAILED", "KILLED")
NOT_RUN, FAILED, RUNNING, PARTIAL, OK = "not run", "failed", "running", "partial", "ok"


@dataclass(frozen=True)
class RowSpec:
    """One row of a paper table: the tags that identify its runs and the paper's numbers (%)."""

    name: str
    config: dict[str, str]
    paper: dict[str, float]
    epochs: int | None = None  # Table 6: params.schedule.epochs a run must have
    note: str = ""
    run_epochs: int | None = None  # a shorter schedule standing in for the paper's (see remap_epochs)


@dataclass(frozen=True)
class TableSpec:
    """A paper table as read from ``experiments/<key>.yaml``."""

    key: str
    title: str
    experiment: str
    setting: dict[str, Any]
    rows: tuple[RowSpec, ...]
    extra_metrics: tuple[str, ...] = ()  # ours-only columns, logged as metrics.<name>
    metric: str = "bbox"  # our columns are metrics.<metric>_<AP...>: bbox, or segm for mask AP
    mispair_figure: str | None = None  # a split (e.g. crowd_bbox): draw its mispairs per row

    def paper_epochs(self, row: RowSpec) -> int:
        """The schedule length (epochs) the paper used for ``row``."""
        return int(row.epochs if row.epochs is not None else self.setting["epochs"])

    def epoch_label(self, row: RowSpec) -> str:
        """``"110"``, or ``"110 (ours 6)"`` when a shorter schedule stands in (``remap_epochs``)."""
        ours = "" if row.run_epochs is None else f" (ours {row.run_epochs})"
        return f"{self.paper_epochs(row)}{ours}"


@dataclass(frozen=True)
class RunRef:
    """Provenance of one MLflow run."""

    run_id: str
    seed: str
    status: str
    data: str
    backbone: str
    schedule: str
    epochs: int | None  # params.schedule.epochs
    trained: int | None  # last step (1-based epoch) of the train_total history


@dataclass
class Cell:
    """Our side of one table row: state, mean/std per metric (percent) and the runs behind it."""

    state: str
    n: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    used: list[RunRef] = field(default_factory=list)
    running: list[RunRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)  # metrics no used run logged at all

    @property
    def label(self) -> str:
        """State as printed: ``ok``, ``ok, n=3``, ``partial 2/5``, ``running 3/110``, ``failed``..."""
        if self.state == RUNNING:
            return "running " + ", ".join(progress(r) for r in self.running)
        if self.state == PARTIAL:
            return "partial " + ", ".join(progress(r) for r in self.used if is_partial(r))
        if self.state == OK and self.n > 1:
            return f"ok, n={self.n}"
        return self.state


@dataclass(frozen=True)
class RowInterval:
    """A row's bootstrap intervals (percent, ``--ci``; :mod:`cnet.tools.report_ci`): of our AP, and
    of its difference ``diff`` to the base row (the first); None where the row has no paired runs."""

    ap: tuple[float, float] | None
    diff: float | None
    diff_ci: tuple[float, float] | None
    note: str = ""  # runs left out, and why


@dataclass(frozen=True)
class TableIntervals:
    """The intervals of a table: ``resamples`` resamples (seed ``seed``) of its ``images``
    evaluation images, one :class:`RowInterval` per row, and the sentence on the paper's orderings."""

    resamples: int
    images: int
    seed: int
    rows: list[RowInterval]
    orderings: str


@dataclass
class Table:
    """A built table: the spec, one cell per row, and the title (flagged if not the paper's setting);
    with ``--ci`` also the bootstrap intervals."""

    spec: TableSpec
    cells: list[Cell]
    title: str
    intervals: TableIntervals | None = None

    @property
    def extra_metrics(self) -> tuple[str, ...]:
        """The spec's ours-only metrics that at least one used run logged."""
        return tuple(x for x in self.spec.extra_metrics if any(c.n and x not in c.absent for c in self.cells))

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric with an 'ours' column: the paper's six, then the ours-only extras present."""
        return METRICS + self.extra_metrics


# ---------------------------------------------------------------- table specs


def available_tables(experiments_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    """Names of the table files in ``experiments_dir`` (``table4``, ...)."""
    return sorted(p.stem for p in Path(experiments_dir).glob("table*.yaml"))


def load_spec(table: str, experiments_dir: Path = EXPERIMENTS_DIR) -> TableSpec:
    """Read and check ``<experiments_dir>/<table>.yaml``; errors name the file and the key."""
    path = Path(experiments_dir) / f"{table}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no table spec {path} (available: {available_tables(experiments_dir)})")
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("title", "experiment", "setting", "rows") if k not in raw]
    missing += [] if missing or "epochs" in raw["setting"] else ["setting.epochs"]
    if missing:
        raise KeyError(f"{path}: missing key {missing[0]!r}")
    rows = []
    for i, row in enumerate(raw["rows"]):
        where = f"{path}: rows[{i}]"
        for key in ("name", "config", "paper"):
            if key not in row:
                raise KeyError(f"{where}: missing key {key!r}")
        paper = row["paper"]
        if sorted(paper) != sorted(METRICS):
            raise ValueError(f"{where}.paper must have exactly {list(METRICS)}, got {list(paper)}")
        config = {str(k): str(v) for k, v in row["config"].items() if k != "epochs"}
        epochs = row["config"].get("epochs")
        rows.append(
            RowSpec(
                name=str(row["name"]),
                config=config,
                paper={m: float(paper[m]) for m in METRICS},
                epochs=None if epochs is None else int(epochs),
                note=str(row.get("note", "")),
            )
        )
    return TableSpec(
        key=table,
        title=" ".join(str(raw["title"]).split()),
        experiment=str(raw["experiment"]),
        setting=dict(raw["setting"]),
        rows=tuple(rows),
        extra_metrics=tuple(str(m) for m in raw.get("extra_metrics", ())),
        metric=_metric_kind(path, raw.get("metric", "bbox")),
        mispair_figure=None if raw.get("mispair_figure") is None else str(raw["mispair_figure"]),
    )


def _metric_kind(path: Path, kind: object) -> str:
    if kind not in ("bbox", "segm"):
        raise ValueError(f"{path}: metric must be 'bbox' or 'segm', got {kind!r}")
    return str(kind)


# ---------------------------------------------------------------- cell selection


def _column(runs: pd.DataFrame, name: str, default: str | None = None) -> pd.Series:
    if name in runs.columns:
        col = runs[name].astype(object)
        return col.where(col.notna(), default)
    return pd.Series([default] * len(runs), index=runs.index, dtype=object)


def _to_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def match_row(runs: pd.DataFrame, row: RowSpec) -> pd.DataFrame:
    """The runs whose tags equal ``row.config`` (and, for a row with epochs, whose schedule has them)."""
    keep = pd.Series(True, index=runs.index)
    for key, value in row.config.items():
        keep &= _column(runs, f"tags.{key}", TAG_DEFAULTS.get(key)) == value
    want = row.run_epochs if row.run_epochs is not None else row.epochs
    if want is not None:
        epochs = _column(runs, "params.schedule.epochs").combine_first(_column(runs, "tags.schedule_epochs"))
        keep &= epochs.map(_to_int) == want
    return runs[keep]


def remap_epochs(spec: TableSpec, mapping: dict[int, int]) -> TableSpec:
    """Fill the rows the paper trained for ``E`` epochs with runs of ``mapping[E]`` epochs.

    Table 6 tells its rows apart by schedule length (110 vs 210 epochs); a CPU or synthetic sweep
    runs shorter schedules in the same ratio (e.g. ``{110: 6, 210: 12}``). The paper's epochs stay
    the reference, so the title says the table is off the paper's schedule.
    """
    used = {spec.paper_epochs(r) for r in spec.rows}
    unknown = sorted(set(mapping) - used)
    if unknown:
        raise ValueError(f"--epochs: table {spec.key} has rows of {sorted(used)} epochs, not {unknown}")
    rows = tuple(dataclasses.replace(r, run_epochs=mapping.get(spec.paper_epochs(r))) for r in spec.rows)
    return dataclasses.replace(spec, rows=rows)


def parse_epoch_map(text: str) -> dict[int, int]:
    """``"110=6,210=12"`` -> ``{110: 6, 210: 12}`` (one-line error on anything else)."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        mapping = {int(paper): int(ours) for paper, ours in pairs}
    except ValueError as err:
        raise ValueError(f"--epochs {text!r}: expected PAPER=OURS[,PAPER=OURS], e.g. 110=6,210=12") from err
    if not mapping or min(mapping.values()) < 1:
        raise ValueError(f"--epochs {text!r}: expected PAPER=OURS[,PAPER=OURS] with OURS >= 1")
    return mapping


def _run_ref(run: pd.Series, last_epoch: Callable[[str], int | None]) -> RunRef:
    def get(name: str, default: str = "?") -> str:
        value = run.get(name)
        return default if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    epochs = _to_int(run.get("params.schedule.epochs"))
    epochs = _to_int(run.get("tags.schedule_epochs")) if epochs is None else epochs
    return RunRef(
        run_id=str(run["run_id"]),
        seed=get("params.seed"),
        status=str(run["status"]),
        data=get("tags.data"),
        backbone=get("tags.backbone"),
        schedule=get("tags.schedule"),
        epochs=epochs,
        trained=last_epoch(str(run["run_id"])),
    )


def is_partial(ref: RunRef) -> bool:
    """True if the run trained fewer epochs than its schedule (or either is unknown)."""
    return ref.epochs is None or ref.trained is None or ref.trained < ref.epochs


def progress(ref: RunRef) -> str:
    """``trained/epochs`` of a run (``?`` where unknown)."""
    return f"{'?' if ref.trained is None else ref.trained}/{'?' if ref.epochs is None else ref.epochs}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _percent(value: Any) -> float:
    """A logged COCO figure in [0, 1] as percent; -1 (no objects in that range) and missing -> NaN."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value * 100.0 if math.isfinite(value) and value >= 0 else math.nan


def select_cell(runs: pd.DataFrame, columns: dict[str, str], last_epoch: Callable[[str], int | None]) -> Cell:
    """Apply the documented rule (this module's docstring) to the candidate ``runs`` of one row.

    Args:
        runs: candidate runs (columns ``run_id``, ``status``, ``start_time``, ``params.seed``,
            the metric columns, provenance tags); any order.
        columns: display name -> DataFrame column (``{"AP": "metrics.bbox_AP", ...}``).
        last_epoch: ``run_id -> last train_total step`` (called only for the runs shown).
    """
    if runs.empty:
        return Cell(NOT_RUN)
    runs = runs.assign(_seed=_column(runs, "params.seed", "?").astype(str)).sort_values("start_time", kind="stable")
    used: list[pd.Series] = []
    running: list[RunRef] = []
    notes: list[str] = []
    for seed, group in runs.groupby("_seed", sort=True):
        latest = group.iloc[-1]
        finished = group[group["status"] == "FINISHED"]
        if len(finished):
            used.append(finished.iloc[-1])
        if latest["status"] not in ("FINISHED", *TERMINAL_FAILED):  # RUNNING (or SCHEDULED)
            running.append(_run_ref(latest, last_epoch))
        elif latest["status"] in TERMINAL_FAILED:
            earlier = "; value from an earlier FINISHED run" if len(finished) else ""
            notes.append(f"seed {seed}: latest run {latest['run_id'][:8]} is {latest['status']}{earlier}")
    refs = [_run_ref(run, last_epoch) for run in used]
    cell = Cell(OK, n=len(used), used=refs, running=running, notes=notes)
    # training logs every COCO figure of an evaluation but the -1s (no object of that size): one
    # missing beside its evaluation's AP is such a -1 (n/a), not a metric never logged
    ap = columns.get("AP")
    ap_logged = ap is not None and all(not _missing(run.get(ap)) for run in used)
    for name, column in columns.items():
        logged = [run.get(column) for run in used]
        if used and all(_missing(v) for v in logged) and not (name in METRICS and ap_logged):
            cell.absent.add(name)
        values = np.array([_percent(v) for v in logged], dtype=float)
        values = values[np.isfinite(values)]
        cell.mean[name] = float(values.mean()) if len(values) else math.nan
        cell.std[name] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    if running:
        cell.state = RUNNING
    elif not used:
        cell.state = FAILED
    elif any(is_partial(r) for r in refs):
        cell.state = PARTIAL
    return cell


# ---------------------------------------------------------------- tables


def flagged_title(spec: TableSpec, cells: list[Cell]) -> str:
    """The table title; says so when a used run is off the paper's data, backbone or schedule."""
    data, backbones, epochs = set(), set(), set()
    for row, cell in zip(spec.rows, cells):
        for ref in cell.used:
            if ref.data != spec.setting["data"]:
                data.add(ref.data)
            if ref.backbone != spec.setting["backbone"]:
                backbones.add(ref.backbone)
            if ref.epochs != spec.paper_epochs(row):
                epochs.add("?" if ref.epochs is None else str(ref.epochs))
    parts = []
    if data:
        parts.append(f"on {'/'.join(sorted(d.upper() for d in data))} data")
    if backbones:
        parts.append(f"{'/'.join(sorted(backbones))} backbone")
    if epochs:
        parts.append(f"{'/'.join(sorted(epochs, key=lambda e: (len(e), e)))}-epoch schedule")
    if not parts:
        return spec.title
    verdict = f"not a {str(spec.setting['data']).upper()} reproduction" if data else "not the paper's setting"
    return f"{spec.title} — ours {'' if data else 'with '}{', '.join(parts)}: {verdict}"


def build_table(spec: TableSpec, runs: pd.DataFrame, last_epoch: Callable[[str], int | None]) -> Table:
    """One cell per row of ``spec`` from ``runs`` (a ``mlflow.search_runs`` frame)."""
    # display name -> MLflow column: the paper's six are metrics.<bbox|segm>_*, the extras as named
    columns = {m: f"metrics.{spec.metric}_{m}" for m in METRICS} | {x: f"metrics.{x}" for x in spec.extra_metrics}
    cells = [select_cell(match_row(runs, row), columns, last_epoch) for row in spec.rows]
    return Table(spec=spec, cells=cells, title=flagged_title(spec, cells))
