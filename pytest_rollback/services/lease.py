"""One run per server, and the journal that puts a server back after a run that could not.

Every server the plugin rolls back but did not start (a configured URL, or a
service a ``pytest_rollback_make_service`` hook returns with ``owned=False``) is
*held* by one pytest run at a time. The hold is a lock on a file of the state
directory (``held/<store>@<host>_<port>/lock``): the kernel releases it when the
process ends, however it ends, so a run that finds the lock free knows the last
holder is gone.

While it holds a server, a run keeps a *journal* next to the lock: a record of
the run (``run.json``) and what the store's adapter needs to put the server back
to where it was before the run (the store's files). The journal is written
before any test can write, and removed once the server is back at the end of
the run. A run that finds a journal when it takes the lock found a run that
ended without putting the server back: it puts it back first (``recovery.py``).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from ..api import StoreUnavailable
from .state import RunId, ensure_dir, read_json, write_json

IN_USE = (
    "pytest-rollback: {store} at {where} is held by another pytest run ({holder}: {argv}); "
    "wait for it to end, or give this run another server (--rollback-{store}-url)"
)
HELD_DIR = "held"
RUN_FILE = "run.json"


def canonical_host(host: str) -> str:
    """One name for one address: ``localhost`` and ``127.0.0.1`` are the same server."""
    host = host.strip("[]")
    if host in ("", "localhost"):
        return "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return host.lower()
    return str(infos[0][4][0]) if infos else host.lower()


def server_key(store: str, host: str, port: int) -> str:
    """The name of a server's directory in the state directory: ``redis@127.0.0.1_6379``."""
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in canonical_host(host))
    return f"{store}@{safe}_{port}"


class Lease:
    """A run's hold on one server, and its journal there.

    :param state_dir: the state directory (``--rollback-state-dir``).
    :param store: the store's name (``redis``, ``mongo``, ...).
    :param host: the server's host, as configured.
    :param port: the server's port.
    """

    def __init__(self, state_dir: str | os.PathLike[str], store: str, host: str, port: int) -> None:
        self.store, self.host, self.port = store, host, port
        self.where = f"{host}:{port}"
        self.dir = Path(state_dir) / HELD_DIR / server_key(store, host, port)
        #: the journal of the run that holds the server (or of one that ended without putting it back)
        self.journal = self.dir / "journal"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run: RunId) -> None:
        """Take the server for ``run``; StoreUnavailable naming the holder when another live run has it."""
        ensure_dir(self.dir)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(fd):
            os.close(fd)
            self._refuse()
        holder = read_json(self.dir / "holder.json") or {}
        if not _HAS_FLOCK and "run" in holder and RunId.from_json(holder["run"]).alive():
            os.close(fd)  # no file locks here: the holder's record, checked for a live process, is all there is
            self._refuse()
        self._fd = fd
        write_json(self.dir / "holder.json", {"run": run.to_json()})

    def _refuse(self) -> None:
        holder = read_json(self.dir / "holder.json") or {}
        who = RunId.from_json(holder["run"]) if "run" in holder else None
        raise StoreUnavailable(
            IN_USE.format(
                store=self.store,
                where=self.where,
                holder=who.describe() if who else "a run that has not said who it is yet",
                argv=(who.argv if who else "") or "pytest",
            )
        )

    def in_use(self) -> bool:
        """True while a live run holds the server (this process's own hold does not count)."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR)
        except OSError:
            return False
        try:
            if not _lock(fd):
                return True
            holder = read_json(self.dir / "holder.json") or {}
            return not _HAS_FLOCK and "run" in holder and RunId.from_json(holder["run"]).alive()
        finally:
            os.close(fd)  # closing it drops the lock just taken

    def pending(self) -> dict[str, Any] | None:
        """The record of a journal left by a run that ended without putting the server back, if any."""
        data = read_json(self.journal / RUN_FILE)
        return data if isinstance(data, dict) else None

    def open_journal(self, run: RunId, url: str, extra: dict[str, Any] | None = None) -> Path:
        """Start this run's journal (any old one must have been recovered first); return its directory."""
        if self.journal.exists():
            shutil.rmtree(self.journal)
        ensure_dir(self.journal)
        record = {"store": self.store, "where": self.where, "url": url, "run": run.to_json(), "complete": False}
        record.update(extra or {})
        write_json(self.journal / RUN_FILE, record)
        return self.journal

    def complete_journal(self) -> None:
        """Mark the journal complete: it holds the whole state from before the run."""
        record = self.pending() or {}
        record["complete"] = True
        write_json(self.journal / RUN_FILE, record)

    def close_journal(self) -> None:
        """The server is back: drop the journal."""
        shutil.rmtree(self.journal, ignore_errors=True)

    def release(self) -> None:
        """Let the server go (the journal stays if it was not closed: the next run completes it)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.dir / "holder.json").unlink()
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None


try:
    import fcntl

    _HAS_FLOCK = True
except ImportError:  # not POSIX
    _HAS_FLOCK = False


def _lock(fd: int) -> bool:
    """Lock ``fd`` for this process (released by the kernel when it ends); False when another process has it."""
    if not _HAS_FLOCK:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def pending_journals(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Every server directory of the state directory with a journal that no live run holds (a dead run's)."""
    root = Path(state_dir) / HELD_DIR
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not (path / "journal" / RUN_FILE).exists():
            continue
        lease = Lease.__new__(Lease)
        lease.dir, lease._fd = path, None
        if not lease.in_use():
            found.append(path)
    return found
