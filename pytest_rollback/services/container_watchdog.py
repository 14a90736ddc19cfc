"""Removes a container once the pytest processes that own it have ended, however they ended (SIGKILL included).

Run beside each container the plugin starts (not the ones kept for reuse) as
``python container_watchdog.py SPEC``, in a session of its own, at the lowest
CPU priority. SPEC is JSON: ``{"container": id, "owners": [[pid, ticks], ...],
"docker_host": DOCKER_HOST or ""}``. It looks every half second whether an
owner is still the process it was given (pid and start time); once one is not,
it asks the engine to remove the container (``DELETE /containers/<id>?force=1&v=1``)
and exits. A normal end of the run removes the container itself and ends the
watchdog. No reaper image (Ryuk) is needed.

Like :mod:`.watchdog`, a program of the standard library alone, run by its
path, so that it starts in milliseconds and imports neither pytest nor docker.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: seconds between two looks at the owners
POLL_INTERVAL = 0.5


def running(pid: int, ticks: int | None) -> bool:
    """True while ``pid`` is the process that started at ``ticks`` (and is no zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # no /proc: the pid exists
    if fields[0] == b"Z":
        return False
    return ticks is None or int(fields[19]) == ticks


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def connection(docker_host: str, timeout: float = 30) -> http.client.HTTPConnection:
    """A connection to the engine of ``docker_host`` (``unix://...``, ``tcp://host:port``; empty: the default)."""
    if not docker_host or docker_host.startswith("unix://"):
        return _UnixConnection(docker_host[len("unix://"):] if docker_host else "/var/run/docker.sock", timeout)
    hostport = docker_host.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return http.client.HTTPConnection(host or hostport, int(port or 2375), timeout=timeout)


def remove(container: str, docker_host: str) -> int:
    """Ask the engine to remove ``container`` with its anonymous volumes; the HTTP status (404: gone already)."""
    conn = connection(docker_host)
    try:
        conn.request("DELETE", f"/containers/{container}?force=1&v=1")
        return conn.getresponse().status
    finally:
        conn.close()


def guard(spec: dict[str, Any]) -> None:
    owners = [(int(pid), ticks) for pid, ticks in spec["owners"]]
    while all(running(pid, ticks) for pid, ticks in owners):
        time.sleep(POLL_INTERVAL)
    for _ in range(3):
        try:
            remove(str(spec["container"]), str(spec.get("docker_host") or ""))
            return
        except OSError:
            time.sleep(1)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: container_watchdog.py SPEC\n")
        return 2
    guard(json.loads(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
