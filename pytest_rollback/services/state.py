"""Where the plugin keeps what must outlive a run, and who a run is.

The state directory (``--rollback-state-dir``, default
``$XDG_STATE_HOME/pytest-rollback`` or ``~/.local/state/pytest-rollback``) holds,
per server the plugin rolls back, the lease of the run that holds it and the
journal that puts its data back after a crash, and the records of the servers
the plugin started (so that a later run can end what a killed one left).

It is a directory of the user's own, readable by them alone (mode 0700): a
journal may hold a server's URL with its password, and a copy of its data.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

#: the password of a URL's user information (``scheme://user:password@host``)
_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/pytest-rollback``, else ``~/.local/state/pytest-rollback``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pytest-rollback"


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and its parents) if missing; the last part readable by its owner only."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None where that cannot be read.

    A process id is reused once its process is gone; the pair (pid, start ticks) is not.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


@dataclasses.dataclass(frozen=True)
class RunId:
    """One pytest process: what a lease or a record names as its holder or owner."""

    pid: int
    host: str
    #: wall-clock start, seconds since the epoch (for people: "since 10:02:03")
    started: float
    #: the process's start time in clock ticks (Linux), to tell a reused pid apart
    ticks: int | None = None
    #: the command line, for the line that names the run
    argv: str = ""

    @classmethod
    def current(cls) -> RunId:
        pid = os.getpid()
        argv = _PASSWORD.sub(r"\1***@", " ".join(sys.argv))  # shown to other runs: no password in it
        return cls(pid, socket.gethostname(), time.time(), process_start_ticks(pid), argv[:300])

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunId:
        return cls(
            pid=int(data["pid"]),
            host=str(data.get("host", "")),
            started=float(data.get("started", 0.0)),
            ticks=data.get("ticks"),
            argv=str(data.get("argv", "")),
        )

    def alive(self) -> bool:
        """True while this run's process exists (on another host: assumed alive, it cannot be checked)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        if _zombie(self.pid):
            return False
        ticks = process_start_ticks(self.pid)
        return self.ticks is None or ticks is None or ticks == self.ticks

    def describe(self) -> str:
        """``pid 1234 on host, started 2026-11-29 10:02:03``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a reader sees the old file or the new one), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a half-written file is never seen)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
