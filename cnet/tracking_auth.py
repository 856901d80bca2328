"""Logging in to a tracking server with users (``mlflow server --app-name basic-auth``, README "Tracking").

A job's credentials are MLflow's own: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, else
``[mlflow]`` in ``~/.mlflow/credentials``; MLflow's REST client reads them at every request. cnet never
holds the password: :func:`check_uri` refuses a tracking URI that carries one (the URI is logged and
recorded with the run), and :func:`explain_refusal` turns the server's 401/403 answers into one-line
errors naming the server, the user and what to set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import read_mlflow_creds

from cnet.errors import TrackingAuthError

CREDENTIALS_FILE = "~/.mlflow/credentials"  # MLflow's credentials file (mlflow.utils.credentials)
_ENV_HINT = (
    f"export {MLFLOW_TRACKING_USERNAME.name} and {MLFLOW_TRACKING_PASSWORD.name} "
    f"(or write them under [mlflow] in {CREDENTIALS_FILE}, mode 600)"
)


def check_uri(uri: str) -> str:
    """``uri`` unchanged, or :class:`TrackingAuthError` when it holds a password (``user:pass@host``).

    A password in the URI would be logged and recorded with every run (``tracking.uri`` is a param);
    the error shows the URI without it.
    """
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # not a URL (a bare path): nothing to hide
        return uri
    if password is None:
        return uri
    host = parts.hostname or ""
    bare = parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
    raise TrackingAuthError(
        f"the tracking URI holds a password ({parts.scheme}://{parts.username}:***@{host}...), which would be "
        f"logged with the run; use {bare} and {_ENV_HINT}"
        + ("; a database's password goes to PGPASSWORD or ~/.pgpass" if parts.scheme.startswith("postgres") else "")
    )


def _login() -> tuple[str | None, str, bool]:
    """The user name MLflow will send, where it comes from, and whether a password is set too."""
    creds = read_mlflow_creds()
    where = MLFLOW_TRACKING_USERNAME.name if os.environ.get(MLFLOW_TRACKING_USERNAME.name) else CREDENTIALS_FILE
    return creds.username, where, bool(creds.password)


def explain_refusal(exc: BaseException, uri: str, action: str) -> TrackingAuthError | None:
    """A one-line :class:`TrackingAuthError` for a 401 (not logged in) or 403 (not allowed) answer
    of the server at ``uri`` to ``action`` (``"create a run in experiment 'cnet'"``); None for any
    other error."""
    if not isinstance(exc, MlflowException):
        return None
    status = exc.get_http_status_code()
    if status not in (401, 403):
        return None
    user, where, has_password = _login()
    if status == 403:
        return TrackingAuthError(
            f"MLflow server {uri}: user {user!r} may not {action} (403 permission denied); ask the experiment's "
            "owner or the server's admin for EDIT permission on it, or choose an experiment of your own "
            "(tracking.experiment=...)"
        )
    if user is None:
        return TrackingAuthError(
            f"MLflow server {uri} lets in its users only and no login is set (401 to {action}); {_ENV_HINT} "
            "for an account the server's admin created"
        )
    why = "wrong user name or password" if has_password else f"no password is set ({MLFLOW_TRACKING_PASSWORD.name})"
    return TrackingAuthError(
        f"MLflow server {uri} refused user {user!r} from {where} (401 to {action}: {why}); {_ENV_HINT} "
        "for an account of that server, or ask its admin to reset the password"
    )


@contextmanager
def refusals_explained(uri: str, action: str) -> Iterator[None]:
    """Raise :func:`explain_refusal`'s one-line error in place of the server's 401/403 inside the block."""
    try:
        yield
    except MlflowException as exc:
        err = explain_refusal(exc, uri, action)
        if err is None:
            raise
        raise err from exc
