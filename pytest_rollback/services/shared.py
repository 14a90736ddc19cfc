"""One server for all pytest-xdist workers, each with its own database on it.

MongoDB (and Elasticsearch) take long to start, so under xdist the first
worker that needs the server starts it and writes where it is to a file in a
directory the controller made for this run (``rollback_shared_dir`` in the
workers' input); the others read that file. The controller stops every shared
server, by the process id recorded there, when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..api import Service
from ..options import StoreSettings

#: the key in ``workerinput`` under which the controller passes the directory
WORKER_INPUT_KEY = "rollback_shared_dir"


def _shared_dir(settings: StoreSettings) -> Path | None:
    workerinput = getattr(settings.config, "workerinput", None) if settings.config is not None else None
    where = workerinput.get(WORKER_INPUT_KEY) if workerinput else None
    return Path(where) if where else None


def worker_database(settings: StoreSettings, base: str = "test") -> str:
    """``base`` outside xdist, ``base_gw0`` (and so on) in a worker."""
    return base if settings.worker is None else f"{base}_{settings.worker}"


def shared(settings: StoreSettings, key: str, start: Callable[[], Service]) -> Service:
    """Start a server with ``start``, or, in an xdist worker, join the one a sibling started.

    The service gets ``extra["db"]`` (this worker's database) and, in a worker,
    ``extra["dbs"]`` (the databases its rollback owns: only its own).
    """
    where = _shared_dir(settings)
    db = worker_database(settings)
    if settings.worker is None or where is None:
        service = start()
        service.extra.update(db=db, dbs=None if settings.worker is None else [db])
        return service
    import fcntl  # POSIX, imported here so that the plugin loads where it is missing

    info = where / f"{key}.json"
    with open(where / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if info.exists():
            data = json.loads(info.read_text())
            service = Service(
                name=data["name"],
                provider=data["provider"],
                url=data["url"],
                host=data["host"],
                port=data["port"],
                version=data["version"],
                startup_ms=0.0,
                owned=False,
                extra={"pid": data["pid"], "started_by": data["started_by"]},
            )
        else:
            service = start()
            info.write_text(
                json.dumps(
                    {
                        "name": service.name,
                        "provider": service.provider,
                        "url": service.url,
                        "host": service.host,
                        "port": service.port,
                        "version": service.version,
                        "pid": service.extra.get("pid"),
                        "workdir": service.extra.get("workdir"),
                        "started_by": settings.worker,
                    }
                )
            )
            service.stop = lambda: None  # the controller stops it after every worker is done
    service.extra.update(db=db, dbs=[db])
    return service


def make_dir() -> str:
    """The controller's directory for this run's shared servers."""
    return tempfile.mkdtemp(prefix="pytest-rollback-shared-")


def watch(settings: StoreSettings, pid: int, program: str) -> Callable[[], None]:
    """In an xdist worker, record a server it started for itself, so the controller can end it.

    A worker that crashes never stops its servers; the controller ends those
    still recorded when the run is over (checking that the process is still
    ``program``). Returns the function that drops the record, for a normal stop.
    """
    where = _shared_dir(settings)
    if settings.worker is None or where is None:
        return lambda: None
    record = where / f"{settings.worker}-{pid}.worker-server"
    record.write_text(json.dumps({"pid": pid, "program": program}))
    return lambda: record.unlink(missing_ok=True)


def stop_all(where: str) -> list[str]:
    """Stop the servers the workers started (by their recorded process id); return problems."""
    problems: list[str] = []
    for info in sorted(Path(where).glob("*.json")):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"pytest-rollback: {info.name}: unreadable ({exc})")
            continue
        pid = data.get("pid")
        if isinstance(pid, int):
            _stop(pid)
        if data.get("workdir"):
            shutil.rmtree(data["workdir"], ignore_errors=True)
    for record in sorted(Path(where).glob("*.worker-server")):  # left by a worker that crashed
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(record.read_text())
            pid, program = data.get("pid"), str(data.get("program") or "")
            if isinstance(pid, int) and program and program in _command_line(pid):
                _stop(pid)
    shutil.rmtree(where, ignore_errors=True)
    return problems


def _stop(pid: int) -> None:
    """SIGTERM, a moment to exit, then SIGKILL for what is left of its process group (launch() makes one)."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # a launcher's server outliving it
    if _alive(pid):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads, else the process alone."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child of a worker that has exited is reparented; it is gone once it stops being a zombie
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
