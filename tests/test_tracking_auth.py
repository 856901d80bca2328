"""cnet.tracking_auth: passwords stay out of tracking URIs, a server's 401/403 becomes one line naming
the server, the user and what to set. (The real server with users: tests/test_tracking_auth_server.py.)"""

from __future__ import annotations

import configparser
import re
from urllib.parse import urlsplit

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED, UNAUTHENTICATED

from cnet.errors import USER_ERRORS, TrackingAuthError
from cnet.tracking import Tracker, open_store, resolve_tracking_uri
from cnet.tracking_auth import check_uri, explain_refusal, refusals_explained
from tests.servers import ROOT, readme_auth_config, readme_server_command

URL = "http://mlflow.lab:5000"
SECRET = "s3cr3t-Pa55"


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No MLflow login anywhere: neither the environment nor ~/.mlflow/credentials (HOME is empty)."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _refused(status: int) -> MlflowException:
    """What MLflow's REST client raises for the basic-auth app's 401 / 403 answers (text bodies)."""
    code = {401: UNAUTHENTICATED, 403: PERMISSION_DENIED}[status]
    return MlflowException(f"API request failed with error code {status} != 200", error_code=code)


@pytest.mark.parametrize(
    "uri",
    [f"http://alice:{SECRET}@mlflow.lab:5000", f"https://alice:{SECRET}@mlflow.lab/path",
     f"postgresql://mlflow:{SECRET}@dbhost/mlflow"],
)  # fmt: skip
def test_a_uri_holding_a_password_is_refused_without_showing_it(uri):
    with pytest.raises(TrackingAuthError, match="holds a password") as err:
        check_uri(uri)
    message = str(err.value)
    assert SECRET not in message and "\n" not in message
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    bare = urlsplit(uri)._replace(netloc=urlsplit(uri).netloc.split("@")[1]).geturl()
    assert f"use {bare} " in message  # the same address, without the login
    assert ("PGPASSWORD" in message) == uri.startswith("postgresql")


@pytest.mark.parametrize("uri", [URL, "http://alice@mlflow.lab:5000", "sqlite:////tmp/x/mlflow.db", "/tmp/mlruns"])
def test_a_uri_without_a_password_is_kept_as_it_is(uri):
    assert check_uri(uri) == uri


def test_every_way_in_refuses_a_password_in_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@mlflow.lab:5000")
    with pytest.raises(TrackingAuthError):
        resolve_tracking_uri(None)  # train.py and the tools: before anything is built
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(TrackingAuthError):
        resolve_tracking_uri(f"http://alice:{SECRET}@mlflow.lab:5000")  # tracking.uri= in the config
    with pytest.raises(TrackingAuthError):
        open_store(f"http://alice:{SECRET}@mlflow.lab:5000")
    with pytest.raises(TrackingAuthError):
        Tracker(f"http://alice:{SECRET}@127.0.0.1:9", "exp")  # refused before any request
    assert issubclass(TrackingAuthError, USER_ERRORS)  # train.py prints its one line, no traceback


def test_an_anonymous_401_says_to_set_a_login(no_login):
    err = explain_refusal(_refused(401), URL, "read experiment 'cnet'")
    assert err is not None
    assert str(err) == (
        "MLflow server http://mlflow.lab:5000 lets in its users only and no login is set (401 to read "
        "experiment 'cnet'); export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or write them "
        "under [mlflow] in ~/.mlflow/credentials, mode 600) for an account the server's admin created"
    )


def test_a_401_with_a_login_names_the_user_and_where_it_comes_from(no_login, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    err = str(explain_refusal(_refused(401), URL, "read experiment 'cnet'"))
    assert "refused user 'alice' from MLFLOW_TRACKING_USERNAME" in err and "no password is set" in err
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    err = str(explain_refusal(_refused(401), URL, "read experiment 'cnet'"))
    assert "refused user 'alice' from MLFLOW_TRACKING_USERNAME (401 to read experiment 'cnet': wrong" in err
    assert SECRET not in err
    # MLflow's credentials file, when the environment has no login
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    (no_login / ".mlflow").mkdir()
    creds = configparser.ConfigParser()
    creds["mlflow"] = {"mlflow_tracking_username": "bob", "mlflow_tracking_password": SECRET}
    with open(no_login / ".mlflow" / "credentials", "w") as f:
        creds.write(f)
    err = str(explain_refusal(_refused(401), URL, "read experiment 'cnet'"))
    assert "refused user 'bob' from ~/.mlflow/credentials" in err and "wrong user name or password" in err


def test_a_403_names_the_user_the_action_and_the_fix(no_login, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    err = str(explain_refusal(_refused(403), URL, "create a run in experiment 'cnet'"))
    assert err.startswith(
        "MLflow server http://mlflow.lab:5000: user 'bob' may not create a run in experiment 'cnet' (403"
    )
    assert "EDIT permission" in err and "tracking.experiment=" in err and "\n" not in err


def test_other_errors_pass_through_unchanged():
    bad = MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)
    assert explain_refusal(bad, URL, "x") is None and explain_refusal(OSError("disk"), URL, "x") is None
    with pytest.raises(MlflowException, match="bad value"), refusals_explained(URL, "x"):
        raise bad
    with pytest.raises(TrackingAuthError, match="may not log params"), refusals_explained(URL, "log params"):
        raise _refused(403)


def test_the_readme_server_lets_in_its_users_only_and_keeps_passwords_out_of_its_config():
    argv = readme_server_command()
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert urlsplit(argv[argv.index("--backend-store-uri") + 1]).password is None
    ini = configparser.ConfigParser()
    ini.read_string(readme_auth_config())
    auth = ini["mlflow"]
    assert auth["database_uri"].startswith("postgresql://") and urlsplit(auth["database_uri"]).password is None
    assert auth["default_permission"] == "READ" and auth["admin_username"]
    assert "admin_password" not in auth  # it comes from MLFLOW_AUTH_ADMIN_PASSWORD
    assert re.search(r"^export MLFLOW_AUTH_ADMIN_PASSWORD=", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
