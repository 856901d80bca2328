"""MLflow tracking through :class:`mlflow.tracking.MlflowClient`.

The client API is used instead of the fluent ``mlflow.start_run`` so no global "active run"
exists: several jobs in one process (a Hydra multirun with the basic launcher) never collide.
The default store is a SQLite file at the project root; its artifacts go to ``mlartifacts/``
next to the database rather than under Hydra's per-job working directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from cnet.errors import ResumeError, TrackingStoreError
from cnet.files import write_text_atomic
from cnet.outbox import Outbox, OutboxTimeout
from cnet.tracking_auth import check_uri, refusals_explained

MAX_PARAM_VALUE_LENGTH = 6000  # MLflow's limit on a param value (characters)
_BATCH_PARAMS = 100  # MLflow's per-request limits of log_batch
_BATCH_METRICS = 1000
_TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
_LOCK_RETRIES = 5
_LOCK_SLEEP_S = 0.5

T = TypeVar("T")


def resolve_tracking_uri(configured: str | None, project_root: Path | None = None) -> str:
    """Pick the tracking URI: env ``MLFLOW_TRACKING_URI`` > ``configured`` > project SQLite file.

    The fallback is ``sqlite:///<absolute project_root>/mlflow.db`` (default: the current
    folder, where the tools are started) so Hydra's change of the working directory does not
    create a second database per job. A URI holding a password is refused
    (:func:`cnet.tracking_auth.check_uri`): logins come from MLflow's environment variables.
    """
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env_uri:
        return check_uri(env_uri)
    if configured and configured.strip():
        return check_uri(configured.strip())
    return f"sqlite:///{Path(project_root or Path.cwd()).resolve() / 'mlflow.db'}"


def yaml_value(value: Any) -> str:
    """``value`` spelled as in a YAML file, on one line: ``false``, ``null``, ``[8, 9]``, ``0.1``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params with dotted keys.

    ``{"model": {"backbone": {"num_stacks": 2}}, "lr": [1, 2]}`` becomes
    ``{"model.backbone.num_stacks": "2", "lr.0": "1", "lr.1": "2"}``. Values are spelled as in YAML
    (``true``, ``null``; others ``str()``'d) and cut to MLflow's 6000-character limit; empty
    dicts/lists are kept as ``"{}"``/``"[]"``.
    """
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        elif isinstance(value, (list, tuple)) and value:
            flat.update(flatten_params({str(i): v for i, v in enumerate(value)}, name))
        else:
            flat[name] = yaml_value(value)[:MAX_PARAM_VALUE_LENGTH]
    return flat


def _retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying a few times while SQLite reports "database is locked".

    MLflow already sets a 20 s SQLite busy timeout per session; this covers contention that
    outlasts it (several processes of a multirun creating the schema or writing at once).
    """
    for attempt in range(_LOCK_RETRIES - 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc):
                raise
            time.sleep(_LOCK_SLEEP_S * (attempt + 1))
    return fn(*args, **kwargs)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for servers and in-memory stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(db_path).resolve() if db_path and db_path != ":memory:" else None


def open_store(tracking_uri: str) -> MlflowClient:
    """A client of ``tracking_uri`` whose store exists and is readable.

    A SQLite store is created (schema and migrations) by one process at a time, under an
    exclusive lock on ``<db>.lock``: parallel jobs of a sweep that start on a fresh store
    otherwise race on MLflow's migration tables and leave it unreadable. A store that cannot be
    read raises :class:`TrackingStoreError` naming the file and what to do. A URI holding a
    password raises :class:`~cnet.errors.TrackingAuthError`.
    """
    db = sqlite_path(check_uri(tracking_uri))
    if db is None:
        return MlflowClient(tracking_uri=tracking_uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            _retry_locked(client.search_experiments, max_results=1)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise TrackingStoreError(
                f"MLflow store {db} is unreadable ({first}); move it aside (mv {db} {db}.bad) to start a new one, "
                "or point tracking.uri / MLFLOW_TRACKING_URI at another store"
            ) from exc
    return client


def _sqlite_artifact_location(tracking_uri: str) -> str | None:
    """``file://`` URI of ``mlartifacts/`` next to a SQLite database; ``None`` for other stores."""
    db = sqlite_path(tracking_uri)  # a relative path is relative to the cwd, as SQLAlchemy opens it
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def run_status(tracking_uri: str, run_id: str) -> str | None:
    """Status of ``run_id`` in the store (None when it is not there or is deleted; a server that does
    not let this job read it raises :class:`~cnet.errors.TrackingAuthError`)."""
    try:
        with refusals_explained(tracking_uri, f"read run {run_id}"):
            run = _retry_locked(open_store(tracking_uri).get_run, run_id)
    except MlflowException:
        return None
    return None if run.info.lifecycle_stage == "deleted" else str(run.info.status)


class Tracker:
    """One MLflow run, new or resumed, logged through an explicit client.

    Args:
        tracking_uri: MLflow tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name; created if missing (SQLite stores get their artifacts in
            ``<db folder>/mlartifacts``).
        run_id: resume this run (its status goes back to RUNNING) instead of creating one.
        run_name: display name of a new run (renames a resumed run if given).
        tags: tags set on the run, new or resumed.
        flush_timeout_s: how long :meth:`finish` waits for an unreachable store to come back.

    Opening the run and :meth:`log_params` talk to the store directly (a store that is down at the
    start stops the job before it trains). Everything logged afterwards (metrics, tags, the dataset,
    artifacts, the run's end) goes through an :class:`~cnet.outbox.Outbox`: a tracking server that
    goes away mid-run does not stop training; its calls are buffered and sent, in order, when it is
    back. Use as a context manager to end the run FINISHED, FAILED on an exception, or KILLED on
    Ctrl-C; the exception propagates.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        flush_timeout_s: float = 1800.0,
    ) -> None:
        self._client = open_store(tracking_uri)
        self._tracking_uri = tracking_uri
        self._flush_timeout_s = float(flush_timeout_s)
        self._experiment_id = self._get_or_create_experiment(experiment)
        self._finished = False
        if run_id is None:
            with refusals_explained(tracking_uri, f"create a run in experiment {experiment!r}"):
                run = _retry_locked(
                    self._client.create_run,
                    self._experiment_id,
                    tags={str(k): str(v) for k, v in (tags or {}).items()},
                    run_name=run_name,
                )
            self._run_id: str = run.info.run_id
        else:
            with refusals_explained(tracking_uri, f"resume run {run_id} in experiment {experiment!r}"):
                self._run_id = self._resume(run_id, experiment, run_name)
        self._outbox = Outbox(tracking_uri)
        if run_id is not None and tags:
            self.set_tags(tags)

    def _get_or_create_experiment(self, name: str) -> str:
        # the first request: a server that does not let this job in says so here, before any run exists
        with refusals_explained(self._tracking_uri, f"read experiment {name!r}"):
            exp = _retry_locked(self._client.get_experiment_by_name, name)
        if exp is None:
            try:
                with refusals_explained(self._tracking_uri, f"create experiment {name!r}"):
                    return _retry_locked(
                        self._client.create_experiment,
                        name,
                        artifact_location=_sqlite_artifact_location(self._tracking_uri),
                    )
            except MlflowException as exc:
                # Another process created it between our get and create: use theirs.
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                exp = _retry_locked(self._client.get_experiment_by_name, name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise ResumeError(
                f"MLflow experiment {name!r} is deleted in {self._tracking_uri}; restore it "
                "(mlflow experiments restore) or choose another experiment name"
            )
        return exp.experiment_id

    def _resume(self, run_id: str, experiment: str, run_name: str | None) -> str:
        fresh_hint = "to start fresh, delete the checkpoint (or the run's output folder) that stores this run id"
        try:
            run = _retry_locked(self._client.get_run, run_id)
        except MlflowException as exc:
            if exc.get_http_status_code() in (401, 403):  # not let in: said as such by the caller
                raise
            raise ResumeError(
                f"cannot resume MLflow run {run_id}: not found in {self._tracking_uri}; {fresh_hint}"
            ) from exc
        if run.info.lifecycle_stage == "deleted":
            raise ResumeError(f"cannot resume MLflow run {run_id}: it is deleted; {fresh_hint}")
        if run.info.experiment_id != self._experiment_id:
            raise ResumeError(
                f"cannot resume MLflow run {run_id}: it belongs to experiment id "
                f"{run.info.experiment_id}, not {experiment!r}; {fresh_hint}"
            )
        _retry_locked(self._client.update_run, run_id, status="RUNNING", name=run_name)
        return run_id

    @property
    def run_id(self) -> str:
        """The MLflow run id (store it in the checkpoint to resume)."""
        return self._run_id

    @property
    def experiment_id(self) -> str:
        """The MLflow experiment id."""
        return self._experiment_id

    def log_params(self, params: dict[str, str]) -> None:
        """Log params (values ``str()``'d and truncated to 6000 chars).

        MLflow params are write-once: keys already on the run with the same value are skipped,
        a different value raises ``ValueError`` naming the key (a resumed run must keep its
        config).
        """
        values = {str(k): str(v)[:MAX_PARAM_VALUE_LENGTH] for k, v in params.items()}
        with refusals_explained(self._tracking_uri, f"log params to run {self._run_id}"):
            self._log_params(values)

    def _log_params(self, values: dict[str, str]) -> None:
        existing = _retry_locked(self._client.get_run, self._run_id).data.params
        changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
        if changed:
            key = changed[0]
            raise ValueError(
                f"MLflow run {self._run_id} already has param {key}={existing[key]!r}, cannot change "
                f"it to {values[key]!r} ({len(changed)} changed: {changed[:5]}); resume with the "
                "original config, or delete the checkpoint to start a fresh run"
            )
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        for i in range(0, len(new), _BATCH_PARAMS):
            _retry_locked(self._client.log_batch, self._run_id, params=new[i : i + _BATCH_PARAMS])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set (or overwrite) run tags; values are ``str()``'d."""
        run_tags = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for i in range(0, len(run_tags), _BATCH_PARAMS):
            self._outbox.put(self._client.log_batch, self._run_id, tags=run_tags[i : i + _BATCH_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` in one batch; NaN/inf values are skipped with a warning.

        Values may be Python/numpy numbers or 0-d tensors (anything ``float()`` accepts).
        """
        timestamp_ms = int(time.time() * 1000)
        batch: list[Metric] = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                warnings.warn(f"metric {key!r} is {value} at step {step}; not logged to MLflow", stacklevel=2)
                continue
            batch.append(Metric(str(key), value, timestamp_ms, int(step)))
        for i in range(0, len(batch), _BATCH_METRICS):
            self._outbox.put(self._client.log_batch, self._run_id, metrics=batch[i : i + _BATCH_METRICS])

    def log_dataset(self, name: str, annotation_file: Path, context: str = "train") -> None:
        """Record the dataset as a run input (the runs table's Dataset column): its name and a
        digest of its annotation file, so runs on different data never look alike."""
        digest = hashlib.sha256(annotation_file.read_bytes()).hexdigest()[:12]
        source = json.dumps({"uri": str(annotation_file.resolve())})
        dataset = Dataset(name=name, digest=digest, source_type="local", source=source)
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self._outbox.put(self._client.log_inputs, self._run_id, datasets=[DatasetInput(dataset, tags)])

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything logged so far is in the store (False: still unreachable)."""
        return self._outbox.flush(self._flush_timeout_s if timeout_s is None else timeout_s)

    def status(self) -> str:
        """The run's status in the store (RUNNING, FINISHED, FAILED, KILLED), after a flush."""
        self.flush()
        return str(_retry_locked(self._client.get_run, self._run_id).info.status)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one local file into the run's artifacts (under ``artifact_path`` if given)."""
        self._outbox.put(self._client.log_artifact, self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str, local_dir: str | Path) -> None:
        """Write ``text`` to ``local_dir/artifact_file`` (atomic) and log it as that artifact
        (``provenance/packages.txt``). The file stays: the call may be sent after the store is back."""
        path = write_text_atomic(Path(local_dir) / artifact_file, text)
        self.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """A picture (PIL image) under ``key`` at ``step``: MLflow's logged images, which the run's
        metrics tab shows with a slider over the steps (stored under ``images/`` in the artifacts)."""
        self._outbox.put(self._client.log_image, self._run_id, image, key=key, step=int(step), synchronous=True)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local folder's contents into the run's artifacts (under ``artifact_path``)."""
        self._outbox.put(self._client.log_artifacts, self._run_id, str(local_dir), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED) once everything buffered is sent;
        later calls do nothing. A run that ends FINISHED waits ``flush_timeout_s`` for an unreachable
        store, one that failed at most a minute; then :class:`TrackingStoreError` says what was lost."""
        if status not in _TERMINAL_STATUSES:
            raise ValueError(f"Tracker.finish: status must be one of {_TERMINAL_STATUSES}, got {status!r}")
        if self._finished:
            return
        self._finished = True
        self._outbox.put(self._client.set_terminated, self._run_id, status=status)
        timeout_s = self._flush_timeout_s if status == "FINISHED" else min(60.0, self._flush_timeout_s)
        try:
            self._outbox.close(timeout_s)
        except OutboxTimeout as exc:
            raise TrackingStoreError(
                f"MLflow run {self._run_id} not ended {status}: {exc}; the run stays RUNNING in the store "
                "and its checkpoint is kept: launch the same command again once the store answers"
            ) from exc

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish("FINISHED")
            return
        try:  # the exception that ended the run is the one to report
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        except Exception as err:
            warnings.warn(f"{err}", stacklevel=2)
