"""Who listens on a loopback port: the server that answers must be the process the plugin started.

A free port can be taken between choosing it and the server binding it. The
server then fails to bind (or retries), and whatever took the port answers in
its place: another run's server, a user's own. Its data is not ours to roll
back, so a started server counts as ready only when every socket listening on
its port belongs to its process group (Linux: the socket inodes of
``/proc/net/tcp`` against ``/proc/<pid>/fd``). Elsewhere this cannot be told
and the answer is ``None``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

#: TCP state LISTEN in /proc/net/tcp
_LISTEN = "0A"
#: addresses a connection to 127.0.0.1 can reach: 127.0.0.1 and 0.0.0.0, also as IPv4-mapped IPv6, and ::
_REACHES_LOOPBACK = {
    "0100007F", "00000000",
    "0000000000000000FFFF00000100007F", "0000000000000000FFFF000000000000", "00000000000000000000000000000000",
}


def listening_sockets(port: int) -> set[int] | None:
    """The inodes of the sockets listening on ``port`` that 127.0.0.1 reaches; None where that cannot be read."""
    found: set[int] = set()
    readable = False
    needle = f":{port:04X} "  # a local address ends so; the tables are long (every connection of the machine)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                text = fh.read()
        except OSError:
            continue
        readable = True
        for line in text.splitlines()[1:]:
            if needle not in line:
                continue
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and address in _REACHES_LOOPBACK:
                found.add(int(fields[9]))
    return found if readable else None


def _sockets_of(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and int(fields[2]) == pgid:  # field 5 of stat: the process group
                members.append(int(entry.name))
    return members


def listener(port: int, pgid: int) -> Literal["none", "ours", "other"] | None:
    """Who listens on ``port``: ``"none"``, ``"ours"`` (every listening socket belongs to process group
    ``pgid``), ``"other"`` (some socket does not); ``None`` where it cannot be told (no ``/proc``)."""
    listening = listening_sockets(port)
    if listening is None:
        return None
    if not listening:
        return "none"
    if listening <= _sockets_of(pgid):  # the usual case: the group's leader is the server
        return "ours"
    held: set[int] = set()
    for pid in _group_members(pgid):  # a launcher whose child serves (noida-db)
        held |= _sockets_of(pid)
    return "ours" if listening <= held else "other"
