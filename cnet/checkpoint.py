"""Atomic training checkpoints and the random-number-generator state they carry.

A checkpoint is a plain ``dict`` saved with :func:`torch.save`. What the trainer stores is a
:class:`TrainState` as a dict (``epoch``, ``step``, ``model``, ``optimizer``, ``scheduler``, ``rng``
from :func:`rng_state`, ``mlflow_run_id``, ``metrics``, ``class_names``, ...); the file functions do
not enforce a schema beyond "a dict".

Saving keeps the previous checkpoint beside the last (``last.prev.pt``): a truncated or corrupt
last checkpoint resumes from the previous one with a warning, and a write that fails (full disk)
leaves both intact. Loading uses ``weights_only=True``: a checkpoint file cannot run code.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cnet.errors import ResumeError

_RNG_KEYS = ("python", "numpy", "torch")
log = logging.getLogger(__name__)


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``last.pt`` -> ``last.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces as the previous one.

    The data goes to a temporary file in the same folder, is fsync'ed, then the current file
    becomes ``<stem>.prev<suffix>`` and the new one takes its name (two renames on one file
    system): an interruption at any point leaves a complete checkpoint under one of the two
    names. A failed write (e.g. a full disk) removes the temporary file, leaves both checkpoints
    untouched and raises ``OSError`` saying so. Parent folders are created as needed.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint({path}): state must be a dict, got {type(state).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed with SIGKILL
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        # BaseException: a Ctrl-C mid-save must not leave the temp file behind either.
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                exc.errno,
                f"no space left to write checkpoint {path}; the previous checkpoint is intact: "
                "free some space and run the same command again to resume",
            ) from exc
        raise
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp_name, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened for fsync on Windows."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ResumeError(
            f"checkpoint {path} is corrupt, truncated or not a cnet checkpoint ({type(exc).__name__}: {first}); "
            "delete it or point the checkpoint path elsewhere to start fresh"
        ) from exc
    if not isinstance(state, dict):
        raise ResumeError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict; "
            "delete it or point the checkpoint path elsewhere to start fresh"
        )
    return state


def checkpoint_exists(path: str | Path) -> bool:
    """Whether there is something to resume from: the checkpoint or the one before it."""
    path = Path(path)
    return path.is_file() or previous_path(path).is_file()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, every tensor on the CPU (``weights_only``).

    When ``path`` is missing or unreadable but the previous checkpoint is fine, that one is loaded
    with a warning. Raises ``FileNotFoundError`` if neither exists and ``ResumeError`` naming the
    file if it is corrupt (and no previous one can stand in).
    """
    path = Path(path)
    prev = previous_path(path)
    if not path.is_file():
        if prev.is_file():
            log.warning("checkpoint %s is missing; resuming from the previous one, %s", path, prev)
            return _read(prev)
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return _read(path)
    except ResumeError as err:
        if not prev.is_file():
            raise
        log.warning("%s; resuming from the previous checkpoint, %s", err, prev)
        return _read(prev)


def rng_state() -> dict[str, Any]:
    """Capture the global RNG states: Python ``random``, numpy, torch CPU and every CUDA device.

    Returns ``{"python": tuple, "numpy": tuple, "torch": ByteTensor, "cuda": list[ByteTensor]}``
    with the numpy key table as a tensor (so ``weights_only`` loading accepts it); ``"cuda"`` is
    present only when CUDA is available.
    """
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state`.

    CUDA states are restored for as many devices as both the checkpoint and this machine have, so
    a checkpoint moves between machines with different GPU counts (or to a CPU-only one).
    """
    missing = [k for k in _RNG_KEYS if k not in state]
    if missing:
        raise ValueError(f"rng state is missing keys {missing}; it must come from cnet.checkpoint.rng_state()")
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples where a round trip through some loaders gives lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass
class TrainState:
    """Everything a run needs to continue: the checkpoint's keys, one to one.

    epoch: completed epochs; step: optimizer steps taken; batch_in_epoch: micro-batches of epoch
    ``epoch`` already trained (mid-epoch checkpoint; 0 at an epoch boundary); epoch_sums: the
    running loss sums of that partial epoch; model/optimizer/scheduler: state dicts; rng:
    :func:`cnet.checkpoint.rng_state` (rank 0's; ``rank_rng``: every rank's, in a group);
    mlflow_run_id: the run to continue logging into; metrics: the latest evaluation figures;
    class_names: the model's classes in label order (the rows of its class layers), which
    ``init_classes=by_name`` matches when another run starts from these weights.
    """

    epoch: int
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    batch_in_epoch: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    rank_rng: list[dict[str, Any]] = field(default_factory=list)  # every rank's ``rng``, in rank order
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """The state saved at ``path`` (see :func:`cnet.checkpoint.load_checkpoint` for errors)."""
        raw = load_checkpoint(path)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known.setdefault("step", 0)
        return cls(**known)

    def save(self, path: Path) -> None:
        save_checkpoint(path, asdict(self))
