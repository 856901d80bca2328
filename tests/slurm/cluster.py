"""A real single-node SLURM cluster (slurmctld + slurmd from Debian's packages) for tests and humans.

Everything (slurm.conf, state, spool, logs, pid files) lives under one folder; the daemons run as
plain background processes and are stopped by the PID in their pid files, never by name.

    python -m tests.slurm.cluster start --dir /tmp/slurm    # prints `export SLURM_CONF=...`
    python -m tests.slurm.cluster status --dir /tmp/slurm
    python -m tests.slurm.cluster stop --dir /tmp/slurm

Authentication is `auth/none` + `cred/none` by default (no munged; nothing outside the folder is
shared, so several clusters can run side by side on their own ports). `auth="munge"` starts a
private munged as user munge instead; its folder must then be reachable by that user.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tests.slurm.processes import alive, free_ports, real_memory_mb, tail, which

Auth = Literal["none", "munge"]

INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge"
SKIP_REASON = f"SLURM not installed ({INSTALL_HINT})"


class SlurmError(RuntimeError):
    """The local cluster did not start (or stop) as expected; the message carries the daemon logs."""


def required_binaries(auth: Auth = "none") -> list[str]:
    names = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel"]
    return [*names, "munged", "runuser"] if auth == "munge" else names


def available(auth: Auth = "none") -> tuple[bool, str]:
    """Whether the SLURM binaries are installed, and a reason to show when they are not."""
    missing = [name for name in required_binaries(auth) if which(name) is None]
    if missing:
        return False, f"{SKIP_REASON}; missing: {', '.join(missing)}"
    return True, "SLURM binaries found"


class LocalSlurm:
    """One slurmctld + one slurmd on this host, configured under `folder`.

    Partitions: `debug` (default, PriorityTier=1, GraceTime=30) and `high` (PriorityTier=10); a job
    in `high` preempts (requeues) jobs in `debug`.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        auth: Auth = "none",
        hostname: str | None = None,
        cpus: int | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.auth: Auth = auth
        self.hostname = hostname or socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.timeout_s = timeout_s

    # --- paths -----------------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def _pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def _log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{daemon}.log"

    @property
    def _munge_dir(self) -> Path:
        return self.folder / "munge"

    @property
    def _munge_socket(self) -> Path:
        return self._munge_dir / "munge.socket"

    # --- public API ------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment variables SLURM clients (sbatch, squeue, submitit) need to find this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def write_conf(self) -> Path:
        for sub in ("state", "spool/slurmd", "log", "run"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = free_ports(2)
        d, host = self.folder, self.hostname
        if self.auth == "munge":
            auth_lines = [
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self._munge_socket},cred_expire=10",
            ]
        else:
            auth_lines = ["AuthType=auth/none", "CredType=cred/none", "AuthInfo=cred_expire=10"]
        lines = [
            "# written by tests/slurm/cluster.py; a private single-node cluster",
            f"ClusterName=cnet{ctld_port}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            *auth_lines,  # cred_expire=10: a requeued job may start again after 10 s, not 120 s
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/slurmd",
            f"SlurmctldPidFile={self._pid_file('slurmctld')}",
            f"SlurmdPidFile={self._pid_file('slurmd')}",
            f"SlurmctldLogFile={self._log_file('slurmctld')}",
            f"SlurmdLogFile={self._log_file('slurmd')}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=10",
            "MinJobAge=600",
            "PreemptType=preempt/partition_prio",
            "PreemptMode=REQUEUE",
            "SlurmctldParameters=preempt_send_user_signal",
            f"NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} Sockets=1 "
            f"CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={real_memory_mb()} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30",
            f"PartitionName=high Nodes={host} Default=NO MaxTime=INFINITE State=UP PriorityTier=10",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")
        return self.conf_path

    def start(self) -> LocalSlurm:
        """Write slurm.conf, start the daemons and wait until the node is idle."""
        ok, reason = available(self.auth)
        if not ok:
            raise SlurmError(reason)
        if self.running():
            raise SlurmError(f"a cluster already runs from {self.folder}; stop it first")
        self.write_conf()
        try:
            if self.auth == "munge":
                self._start_munged()
            self._spawn("slurmctld", [_exe("slurmctld"), "-f", str(self.conf_path)])
            self._wait("slurmctld answers `scontrol ping`", self._ctld_up)
            self._spawn("slurmd", [_exe("slurmd"), "-f", str(self.conf_path), "-N", self.hostname])
            self._wait("the node is idle in `sinfo`", self._node_idle)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, job_wait_s: float = 20.0) -> None:
        """Cancel all jobs, then stop slurmd, slurmctld (and munged) by PID. Safe to call twice."""
        if self._daemon_pid("slurmctld") is not None and self.conf_path.exists():
            self._client(["scancel", "--full", "-u", getpass.getuser()], check=False)
            if self._daemon_pid("slurmd") is not None:
                # slurmstepd outlives slurmd: let the cancelled jobs end before the node goes away
                deadline = time.monotonic() + job_wait_s
                while time.monotonic() < deadline and self._client(["squeue", "-h", "-t", "R,CG"], check=False):
                    time.sleep(0.5)
        for daemon in ("slurmd", "slurmctld", "munged"):
            self._kill(daemon)

    def running(self) -> dict[str, int]:
        """Daemons of this cluster that are alive, by name → PID."""
        out = {}
        for daemon in ("munged", "slurmctld", "slurmd"):
            pid = self._daemon_pid(daemon)
            if pid is not None:
                out[daemon] = pid
        return out

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
        """Run a SLURM client command against this cluster and return its stdout."""
        return self._client(list(args), check=check, timeout=timeout)

    def wait_job(self, job_id: str | int, timeout_s: float = 60.0) -> None:
        """Wait until a job has left squeue's pending/running states."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self._client(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False).strip()
            if state in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
                return
            time.sleep(0.5)
        raise SlurmError(f"job {job_id} did not finish in {timeout_s:.0f} s\n{self.logs()}")

    def logs(self, lines: int = 25) -> str:
        return "\n".join(tail(self._log_file(d), lines) for d in ("slurmctld", "slurmd"))

    # --- internals -------------------------------------------------------------------------------
    def _client(self, args: list[str], *, check: bool = True, timeout: float = 30.0) -> str:
        exe = which(args[0]) or args[0]
        proc = subprocess.run(
            [exe, *args[1:]],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SlurmError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else ""

    def _spawn(self, daemon: str, cmd: list[str], user: str | None = None) -> None:
        """Start a daemon (it forks into the background) and wait for its pid file."""
        if user is not None:
            cmd = [_exe("runuser"), "-u", user, "--", *cmd]
        self._pid_file(daemon).unlink(missing_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        if proc.returncode != 0:
            raise SlurmError(
                f"{daemon} exited with {proc.returncode}: {proc.stderr.strip()}\n{tail(self._log_file(daemon))}"
            )
        self._wait(f"{daemon} writes {self._pid_file(daemon)}", lambda: self._daemon_pid(daemon) is not None)

    def _start_munged(self) -> None:
        import pwd

        munge = pwd.getpwnam("munge")
        self._munge_dir.mkdir(exist_ok=True)
        self._munge_dir.chmod(0o755)  # munged wants its socket's folder reachable by every user
        key = self._munge_dir / "munge.key"
        if not key.exists():
            system_key = Path("/etc/munge/munge.key")
            key.write_bytes(system_key.read_bytes() if system_key.is_file() else secrets.token_bytes(128))
        key.chmod(0o400)
        for path in (self._munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        cmd = [
            _exe("munged"),
            f"--socket={self._munge_socket}",
            f"--key-file={key}",
            f"--pid-file={self._pid_file('munged')}",
            f"--log-file={self._log_file('munged')}",
            f"--seed-file={self._munge_dir / 'munged.seed'}",
        ]
        for path in (self.run_dir, self.log_dir):  # munged writes its pid and log files there
            os.chown(path, munge.pw_uid, munge.pw_gid)
        try:
            self._spawn("munged", cmd, user="munge")
        finally:
            for path in (self.run_dir, self.log_dir):
                os.chown(path, os.getuid(), os.getgid())

    def _ctld_up(self) -> bool:
        self._check_alive("slurmctld")
        return "UP" in self._client(["scontrol", "ping"], check=False, timeout=10)

    def _node_idle(self) -> bool:
        self._check_alive("slurmd")
        states = self._client(["sinfo", "-h", "-o", "%T"], check=False, timeout=10).split()
        bad = [s for s in states if s in ("drained", "draining", "inval")]
        if bad:
            reason = self._client(["sinfo", "-h", "-R"], check=False, timeout=10).strip()
            raise SlurmError(f"the node is {bad[0]} ({reason})\n{self.logs()}")
        return bool(states) and all(s == "idle" for s in states)

    def _check_alive(self, daemon: str) -> None:
        pid = self._read_pid(daemon)
        if pid is not None and not alive(pid):
            raise SlurmError(f"{daemon} (pid {pid}) died during start-up\n{self.logs()}")

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise SlurmError(f"timed out after {self.timeout_s:.0f} s waiting until {what}\n{self.logs()}")

    def _read_pid(self, daemon: str) -> int | None:
        try:
            return int(self._pid_file(daemon).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _daemon_pid(self, daemon: str) -> int | None:
        """The PID from the pid file if that process is alive and is this cluster's `daemon`."""
        pid = self._read_pid(daemon)
        if pid is None or not alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        # guard against a recycled PID: the process must be the daemon started with our files
        if daemon not in cmdline or str(self.folder) not in cmdline:
            return None
        return pid

    def _kill(self, daemon: str, grace_s: float = 10.0) -> None:
        pid = self._daemon_pid(daemon)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                while alive(pid) and time.monotonic() < deadline + 5:
                    time.sleep(0.1)
        self._pid_file(daemon).unlink(missing_ok=True)


def _exe(name: str) -> str:
    path = which(name)
    if path is None:
        raise SlurmError(f"{name} not found ({INSTALL_HINT})")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.slurm.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", required=True, type=Path, help="folder for slurm.conf, state, logs, pid files")
    parser.add_argument("--auth", choices=["none", "munge"], default="none")
    args = parser.parse_args(argv)
    cluster = LocalSlurm(args.dir, auth=args.auth)
    if args.command == "start":
        t0 = time.monotonic()
        try:
            cluster.start()
        except SlurmError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"# cluster up in {time.monotonic() - t0:.1f} s: {cluster.running()}", file=sys.stderr)
        print(f"export SLURM_CONF={cluster.conf_path}")
    elif args.command == "stop":
        t0 = time.monotonic()
        cluster.stop()
        print(f"# stopped in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    else:
        alive = cluster.running()
        print(f"daemons: {alive or 'none running'}")
        if "slurmctld" in alive:
            print(cluster.run(["sinfo"], check=False), end="")
            print(cluster.run(["squeue"], check=False), end="")
            print(f"export SLURM_CONF={cluster.conf_path}")
        return 0 if alive else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
