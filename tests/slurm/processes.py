"""Process and host helpers of the local SLURM cluster (tests.slurm.cluster): binaries on the
daemons' path, free ports, the node's memory, liveness by PID, log tails."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

MEMORY_MARGIN_MB = 1024  # kept free of the node's RealMemory so slurmd never finds less than configured


def which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which is not on every PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def real_memory_mb() -> int:
    """MemTotal from /proc/meminfo in MB, minus a margin so slurmd never finds less than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_mb = int(line.split()[1]) // 1024
            return max(256, total_mb - max(MEMORY_MARGIN_MB, total_mb // 20))
    return 1024


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path}: (no log)"
    return f"--- {path} (last {min(lines, len(text))} lines):\n" + "\n".join(text[-lines:])
