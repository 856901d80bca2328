"""Errors that mean "the input is wrong", reported to the user as one line by train.py."""

from __future__ import annotations


class ResumeError(RuntimeError):
    """A checkpoint or MLflow run to resume from is unusable; the message says how to start fresh."""


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be opened or read; the message names it and says what to do."""


# exceptions whose message alone tells the user what to fix (no traceback needed)
USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    FloatingPointError,
    ResumeError,
    TrackingStoreError,
)
