"""Ends a server the plugin started once the pytest process that owns it has ended, however it ended.

One watchdog runs beside each started server, in a session of its own (a
terminal's Ctrl-C to pytest does not reach it), as ``python watchdog.py SPEC``
(see :class:`pytest_rollback.services.orphans.Guard`). It waits, without
polling on Linux (``pidfd_open`` and ``poll``), for the first of:

- an owner ends (the pytest process that started the server, and the run's
  top process: the pytest-xdist controller): it ends the server's process
  group if that is still the process it was given (pid, start time, and
  program in its command line), removes the server's work directory and its
  record, and exits;
- the server ends (a normal stop): it exits, leaving the clean-up to the
  owner that stopped it.

It is a program of the standard library alone, run by its path (importing
the package would import pytest: ~150 ms of a CPU next to every server start;
as it is, ~10 ms), and what :mod:`~pytest_rollback.services.orphans` uses to
end a recorded server. It reads ``/proc/<pid>/stat`` itself for the same
reason (``state.py`` imports dataclasses).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing itself is not imported: the watchdog's start stays short
if TYPE_CHECKING:
    from typing import Any

#: work directories of started servers are named so (tempfile prefix): nothing else is ever removed
WORKDIR_PREFIX = "pytest-rollback-"
#: how long to wait for a server's group to be gone after SIGKILL, before its work directory is removed
GRACE = 5.0
#: where a process cannot be waited for through a pidfd (not Linux), how often it is looked at
POLL_INTERVAL = 0.2


def command_line(pid: int) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time in clock ticks since boot) of process ``pid``; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[19])  # fields 3 and 22 of stat
    except (OSError, IndexError, ValueError):
        return None


def running(pid: int, ticks: int | None) -> bool:
    """True while process ``pid`` exists, is not a zombie and (where ``ticks`` is known) started at ``ticks``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists (and is not ours, which the start ticks tell)
    stat = _stat(pid)
    if stat is None:  # no /proc: existing is all that can be told
        return True
    return stat[0] != b"Z" and (ticks is None or stat[1] == ticks)


def is_ours(pid: int, ticks: int | None, program: str) -> bool | None:
    """Whether ``pid`` is still the server that was started: True, False (gone or another process), or
    None when it exists but that cannot be checked (no ``/proc``: not Linux)."""
    if not running(pid, ticks):
        return False
    line = command_line(pid)
    if line is None or ticks is None or _stat(pid) is None:
        return None
    return program in line


def end_group(pid: int, ticks: int | None, program: str) -> bool:
    """End the process group that server ``pid`` leads, if ``pid`` is still ours; True when it was ended.

    SIGKILL to the group at once: a started server keeps everything in its work
    directory, which is removed next, so a graceful shutdown would only write
    what is thrown away. The group was checked through its leader; while any
    member is left its id cannot be given to another process.
    """
    if not is_ours(pid, ticks, program):
        return False
    try:
        group = os.getpgid(pid) == pid  # launched in a session of its own: it leads its group
    except ProcessLookupError:
        return False
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and running(pid, ticks):  # (its work directory is removed after)
        time.sleep(0.02)
    return True


def remove_workdir(path: str) -> None:
    """Remove a server's work directory; only one named like the plugin's own (a bad record removes nothing else)."""
    if os.path.basename(path).startswith(WORKDIR_PREFIX) and os.path.isdir(path) and not os.path.islink(path):
        import shutil  # only on this path: it costs the watchdog's start ~5 ms

        shutil.rmtree(path, ignore_errors=True)


def _pidfd(pid: int, ticks: int | None) -> int | None:
    """A pidfd of ``pid`` if it is still the process started at ``ticks``; None if it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if running(pid, ticks):  # checked after opening: the pidfd is of the process checked
        return fd
    os.close(fd)
    return None


def wait_first(server: tuple[int, int | None], owners: list[tuple[int, int | None]]) -> bool:
    """Wait until the server or an owner ends; True when an owner ended (the server is left to end)."""
    if hasattr(os, "pidfd_open"):
        try:
            return _wait_pidfds(server, owners)
        except OSError:  # pidfd_open exists but the kernel has none (Linux < 5.3)
            pass
    while True:
        if not all(running(pid, ticks) for pid, ticks in owners):
            return True
        if not running(*server):
            return False
        time.sleep(POLL_INTERVAL)


def _wait_pidfds(server: tuple[int, int | None], owners: list[tuple[int, int | None]]) -> bool:
    fds: dict[int, bool] = {}  # pidfd -> is an owner's
    try:
        for (pid, ticks), owner in [(p, True) for p in owners] + [(server, False)]:
            fd = _pidfd(pid, ticks)
            if fd is None:
                return owner
            fds[fd] = owner
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        while True:
            ready = poller.poll()
            if ready:
                return any(fds[fd] for fd, _ in ready)
    finally:
        for fd in fds:
            os.close(fd)


def guard(spec: dict[str, Any]) -> None:
    """Watch the server ``spec`` describes (see ``orphans.Guard``); end it and its traces when an owner ends."""
    server = (int(spec["pid"]), spec.get("ticks"))
    owners = [(int(owner), owner_ticks) for owner, owner_ticks in spec["owners"]]
    if not wait_first(server, owners):
        return  # stopped by its owner, who cleans up
    end_group(server[0], server[1], str(spec["program"]))
    if spec.get("workdir"):
        remove_workdir(str(spec["workdir"]))
    if spec.get("record"):
        try:
            os.unlink(spec["record"])
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python watchdog.py SPEC (JSON; see orphans.Guard)\n")
        return 2
    guard(json.loads(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
