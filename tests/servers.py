"""Real tracking back-ends for tests and humans: a private PostgreSQL cluster and an MLflow server.

    python -m tests.servers start --dir /tmp/cnet-mlflow   # PostgreSQL + `mlflow server`; prints the URI
    python -m tests.servers stop --dir /tmp/cnet-mlflow

PostgreSQL comes from Debian's ``postgresql`` package (``initdb``/``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``); the cluster lives in one folder, listens on loopback only,
trusts local connections, and runs as user ``postgres`` when started by root (it refuses root).
The MLflow server is started with the README's command and the README's ``basic_auth.ini``
(``README.md``, section "Tracking"): users log in, the admin's password is a fresh random one.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
INSTALL_HINT = "apt-get install postgresql; pip install 'psycopg[binary]'"
# /health answers in ~30 s on an idle 2-core machine (schema migration + uvicorn start)
HEALTH_TIMEOUT_S = 180


def pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def postgres_available() -> tuple[bool, str]:
    """Whether a PostgreSQL cluster can be started here, and why not."""
    missing = [n for n in ("initdb", "pg_ctl", "createdb") if pg_bin(n) is None]
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser")
    try:
        import psycopg  # noqa: F401 -- SQLAlchemy 2.1's default PostgreSQL driver, used by mlflow server
    except ImportError:
        missing.append("psycopg")
    return (not missing, f"PostgreSQL not usable ({INSTALL_HINT}); missing: {', '.join(missing)}" if missing else "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """A PostgreSQL cluster in ``folder`` with two databases: ``mlflow`` (runs; ``uri``) and
    ``mlflow_auth`` (the tracking server's users and permissions; ``auth_uri``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    @property
    def auth_uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow_auth"

    def _run(self, *cmd: str) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        res = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
        return res.stdout

    def start(self) -> LocalPostgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:  # the server user must reach its folder
            shutil.chown(self.folder, "postgres", "postgres")
            os.chmod(self.folder, 0o700)
        user = ["-U", "postgres"]
        self._run(pg_bin("initdb") or "initdb", "-D", str(self.data), "-A", "trust", *user, "-E", "UTF8")
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        log = str(self.folder / "postgres.log")
        self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", log, "-o", opts, "-w", "-t", "60", "start")
        for name in ("mlflow", "mlflow_auth"):
            self._run(pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(self.port), *user, name)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def readme_server_command() -> list[str]:
    """The ``mlflow server ...`` command of README.md's tracking section, as argv."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^mlflow server .*?(?<!\\)$", text, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no `mlflow server ...` command")
    return shlex.split(match.group(0).replace("\\\n", " "))


def readme_auth_config() -> str:
    """The ``basic_auth.ini`` of README.md's tracking section (the ```ini block holding ``[mlflow]``)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^```ini\n(\[mlflow\]\n.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no ```ini block with the server's [mlflow] auth config")
    return match.group(1)


def write_secret(path: Path, text: str) -> Path:
    """``text`` into ``path``, readable by its owner only (mode 600 from the start, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


class MlflowServer:
    """The README's ``mlflow server`` command, on loopback, with ``backend`` and a local artifact folder.

    Only the values of ``--host``, ``--port``, ``--backend-store-uri`` and ``--artifacts-destination``
    are replaced; every flag is the README's. With the README's ``--app-name basic-auth``, the
    server reads the README's ``basic_auth.ini`` (written to ``folder``, mode 600) with its
    ``database_uri`` replaced by ``auth_backend``; its admin password and its Flask secret key are
    fresh random ones (``MLFLOW_AUTH_ADMIN_PASSWORD``, ``MLFLOW_FLASK_SERVER_SECRET_KEY`` in the
    server's environment, as the README sets them); :meth:`add_user`
    creates the accounts jobs log in with. ``stop()`` then ``start()`` restarts it on the same port.
    """

    def __init__(self, folder: Path, backend: str, auth_backend: str | None = None) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        values = {
            "--host": "127.0.0.1",
            "--port": str(self.port),
            "--backend-store-uri": backend,
            "--artifacts-destination": str(self.folder / "artifacts"),
        }
        argv = readme_server_command()
        missing = sorted(set(values) - set(argv))
        if missing:
            raise AssertionError(f"README's mlflow server command lacks {missing}")
        self.argv = [str(MLFLOW)] + [values.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)][1:]
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        self.admin: tuple[str, str] | None = None  # (username, password) of the server's admin
        self.users: dict[str, str] = {}  # the accounts add_user created: name -> password
        self.auth_config = self.folder / "basic_auth.ini"  # written by start() when the server has users
        self.auth_ini = ""  # its text
        app = argv[argv.index("--app-name") + 1] if "--app-name" in argv else None
        if app == "basic-auth":
            if auth_backend is None:
                raise AssertionError("the README's server has users: give MlflowServer an auth_backend database")
            ini = re.sub(r"^database_uri = .*$", f"database_uri = {auth_backend}", readme_auth_config(), flags=re.M)
            admin = re.search(r"^admin_username = (.+)$", ini, flags=re.MULTILINE)
            if admin is None:
                raise AssertionError("README's basic_auth.ini names no admin_username")
            self.admin = (admin.group(1).strip(), secrets.token_urlsafe(18))
            self.auth_ini = ini
            self.env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),  # signs the UI's CSRF tokens
            }
        # a client's login (the fixture sets one for the jobs) has no place in the server's environment
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
            self.env.pop(key, None)

    def add_user(self, username: str) -> str:
        """Create account ``username`` (as the admin, through MLflow's auth REST API); its new random password."""
        from mlflow.server.auth.routes import CREATE_USER  # the server's modules: only where needed
        from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

        if self.admin is None:
            raise AssertionError("this server has no users (the README's command has no --app-name basic-auth)")
        password = secrets.token_urlsafe(18)
        creds = MlflowHostCreds(self.url, username=self.admin[0], password=self.admin[1])
        resp = http_request(creds, CREATE_USER, "POST", json={"username": username, "password": password})
        verify_rest_response(resp, CREATE_USER)
        self.users[username] = password
        return password

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.admin is not None:
            write_secret(self.auth_config, self.auth_ini)
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # own process group: stop() ends its workers too
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.folder / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server on port {self.port} did not answer /health:\n{tail}")
            time.sleep(1)
        return self

    def kill(self) -> None:
        """The server dies at once (SIGKILL to its process group): an outage, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


JOB_USER = "cnet"  # the account `start` creates for jobs


def credentials_file(username: str, password: str) -> str:
    """The text of MLflow's credentials file (``~/.mlflow/credentials``) for one account."""
    return f"[mlflow]\nmlflow_tracking_username = {username}\nmlflow_tracking_password = {password}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, required=True, help="folder of the database and the server")
    args = parser.parse_args(argv)
    pid_file = args.dir / "mlflow-server.pid"
    if args.action == "start":
        ok, reason = postgres_available()
        if not ok:
            raise SystemExit(reason)
        db = LocalPostgres(args.dir / "postgres").start()
        server = MlflowServer(args.dir / "server", db.uri, db.auth_uri).start()
        assert server.proc is not None and server.admin is not None
        pid_file.write_text(str(server.proc.pid))
        # secrets go to files of mode 600, never to the terminal: the admin's (to add users) and a
        # job account's, in the format of MLflow's credentials file (~/.mlflow/credentials)
        write_secret(args.dir / "admin.credentials", credentials_file(*server.admin))
        user = credentials_file(JOB_USER, server.add_user(JOB_USER))
        print(f"export MLFLOW_TRACKING_URI={server.url}  # backend {db.uri}")
        print(f"# user {JOB_USER}: cp {write_secret(args.dir / 'credentials', user)} ~/.mlflow/credentials")
        return
    if pid_file.exists():
        pgid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(pgid, signal.SIGTERM)
            for _ in range(150):  # uvicorn ends its workers first
                time.sleep(0.1)
                os.killpg(pgid, 0)
        pid_file.unlink()
    db = LocalPostgres(args.dir / "postgres")
    db.stop()


if __name__ == "__main__":
    main()
