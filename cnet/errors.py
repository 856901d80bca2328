"""Errors that mean "the input is wrong", reported to the user as one line by train.py."""

from __future__ import annotations


class ResumeError(RuntimeError):
    """A checkpoint or MLflow run to resume from is unusable; the message says how to start fresh."""


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be opened or read; the message names it and says what to do."""


class TrackingAuthError(TrackingStoreError):
    """The tracking server does not let this job in (no login, a wrong password, no permission), or its
    URI holds a password; the one-line message names the server and the user and says what to set."""


class DataError(ValueError):
    """An annotation file (or an image it lists) is unusable: the one-line message names the file,
    the item (image, annotation or category id, or the missing key) and the fix. A ValueError, so
    code that already catches ValueError for bad input keeps doing so."""


class UnsafeFileError(ValueError):
    """A weights file that could only be read by running code it names (a pickled function or class
    outside the allow-list of :mod:`cnet.mmdet_weights`): refused, nothing in it ran; the one-line
    message names the file and the object."""


class InitError(ValueError):
    """``init_from``'s weights do not fit the configured model (or lack what ``init_classes`` needs):
    the one-line message names the source, the share of tensors that fit and the fix."""


# exceptions whose message alone tells the user what to fix (no traceback needed)
USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    DataError,
    FloatingPointError,
    ResumeError,
    TrackingStoreError,
    TrackingAuthError,
    UnsafeFileError,
    InitError,
)
