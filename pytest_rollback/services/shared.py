"""One server for all pytest-xdist workers, each with its own database on it.

MongoDB (and Elasticsearch) take long to start, so under xdist the first
worker that needs the server starts it and writes where it is to a file in a
directory the controller made for this run (``rollback_shared_dir`` in the
workers' input); the others read that file. The server belongs to the
controller (see :mod:`.orphans`): its watchdog ends it if the controller dies,
and the controller ends it, with whatever else of its run is left, when the
session ends.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ..api import Service
from ..options import StoreSettings
from . import orphans
from .state import RunId, read_json

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
    if settings.extra.get("server") and settings.extra["server"] != settings.store:  # a declared server's own
        key = f"{settings.extra['server']}-{key}"
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
                extra={"pid": data["pid"], "started_by": data["started_by"], "container": data.get("container")},
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
                        "started_by": settings.worker,
                        # a container: the controller removes it after every worker (unless it is kept)
                        "container": service.extra.get("container"),
                        "kept": bool(service.extra.get("kept")),
                    }
                )
            )
            service.stop = lambda: None  # the controller stops it after every worker is done
    service.extra.update(db=db, dbs=[db])
    return service


def make_dir() -> str:
    """The controller's directory for this run's shared servers; it names the run, for the servers' records."""
    return orphans.make_run_dir()


def run_of(settings: StoreSettings) -> RunId:
    """The run a server started here belongs to: in an xdist worker the controller, else this process."""
    return orphans.run_of(_shared_dir(settings))


def stop_all(where: str, state_dir: str) -> list[str]:
    """After every worker: end the servers of this run still recorded (the shared ones, and those of a worker
    that crashed), and remove the shared directory; return problems."""
    orphans.end_run(state_dir, orphans.this_process())
    problems = []
    for info in sorted(Path(where).glob("*.json")):
        data = read_json(info)
        if isinstance(data, dict) and data.get("container") and not data.get("kept"):
            try:
                from . import docker

                docker.remove(str(data["container"]))
            except Exception as exc:
                problems.append(f"pytest-rollback: {data.get('name')}: removing its container failed: {exc!r}")
    shutil.rmtree(where, ignore_errors=True)
    return problems
