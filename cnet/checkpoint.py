"""Atomic training checkpoints and the random-number-generator state they carry.

A checkpoint is a plain ``dict`` saved with :func:`torch.save`. What the trainer stores is
:class:`cnet.trainer.TrainState` as a dict (``epoch``, ``step``, ``model``, ``optimizer``,
``scheduler``, ``rng`` from :func:`rng_state`, ``mlflow_run_id``, ``metrics``); this module does
not enforce a schema beyond "a dict".
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnet.errors import ResumeError

_RNG_KEYS = ("python", "numpy", "torch")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    The data goes to a temporary file in the same folder (so :func:`os.replace` is a rename on
    one file system), is fsync'ed, then replaces ``path`` in one step: an interruption at any
    point leaves either the previous checkpoint or the new one, never a truncated file.
    Parent folders are created as needed.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint({path}): state must be a dict, got {type(state).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: a Ctrl-C mid-save must not leave the temp file behind either.
        Path(tmp_name).unlink(missing_ok=True)
        raise
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with every tensor on the CPU.

    ``weights_only=False`` because the RNG state holds numpy arrays and Python tuples; only load
    checkpoints you wrote yourself. Raises ``FileNotFoundError`` if ``path`` is missing and
    ``RuntimeError`` naming the file if it is corrupt or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad files
        raise ResumeError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
            "delete it or point the checkpoint path elsewhere to start fresh"
        ) from exc
    if not isinstance(state, dict):
        raise ResumeError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict; "
            "delete it or point the checkpoint path elsewhere to start fresh"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Capture the global RNG states: Python ``random``, numpy, torch CPU and every CUDA device.

    Returns ``{"python": tuple, "numpy": tuple, "torch": ByteTensor, "cuda": list[ByteTensor]}``;
    ``"cuda"`` is present only when CUDA is available.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
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
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
