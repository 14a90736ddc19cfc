"""The ``docker`` provider: one labelled container per server per run, published on 127.0.0.1 only.

A container is started with the Docker SDK (the ``docker`` package) from a
pinned image, its port published on the loopback address and nowhere else.
Its labels say whose it is:

- ``org.pytest-rollback.project``: a hash of the project's root directory;
- ``org.pytest-rollback.server``: the server's name (``redis``, ``mongo``,
  ``elasticsearch``, or a server declared with :func:`pytest_rollback.server`);
- ``org.pytest-rollback.config``: a hash of the image's id, the command, the
  environment and the port: what must match for a container to be reused;
- ``org.pytest-rollback.run``: the run that started it (``host/pid/ticks``; the
  xdist controller under xdist), so that a later run can tell a dead run's;
- ``org.pytest-rollback.reuse``: ``1`` when it is kept for the next run.

Under pytest-xdist the workers share one container per server (each on its own
database, database name or index prefix): the first worker that needs it starts
it, the controller removes it after every worker. A run killed with SIGKILL
leaves its containers; the next run that uses Docker (or ``--rollback-recover``,
or ``--rollback-docker-prune``) removes the containers of runs that are gone.
No reaper container (Ryuk) is needed: it is one more image a registry-less
engine does not have.

With reuse (``--rollback-docker-reuse``) a container is kept at the end, and the
next run of the same project with the same configuration takes it again: it
checks that it answers and that it is not in use by another run (a lock in the
state directory), empties it, and announces ``reused <container> (started <when>)``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..api import Service, StoreUnavailable
from ..options import StoreSettings
from . import ImageUnavailable
from .state import RunId, ensure_dir

LABEL = "org.pytest-rollback"
#: where the Docker how-to lives (named in the line of an image that cannot be had)
HOW_TO = "the Docker how-to, docker.md in the docs, shows how"

IMAGE_UNAVAILABLE = (
    "image {image} is not on the Docker engine and could not be pulled ({why}); build or load it under that "
    "name ({how}), or pass --rollback-{store}-image"
)
START_FAILED = "pytest-rollback: {server}: container {name} ({image}) did not start: {why}"
REMOVED_DEAD = "pytest-rollback: removed {count} container{s} left by {who}: {names}"


def engine_answers(timeout: float = 2.0) -> str | None:
    """None when a Docker engine answers a ping, else the reason it does not."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine (no DOCKER_HOST and no /var/run/docker.sock)"
    try:
        import docker
    except ImportError:
        return "the docker package is not installed (pip install 'pytest-rollback[docker]')"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        client.close()
    except Exception as exc:
        return f"the Docker engine did not answer ({exc.__class__.__name__})"
    return None


@contextlib.contextmanager
def _client(timeout: float = 60) -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def has_image(image: str) -> bool:
    """True when the engine has ``image`` already (no pull)."""
    import docker

    with _client(10) as client:
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False


def ensure_image(image: str, store: str, out: Any = None) -> str:
    """The id of ``image``, pulled first if the engine lacks it (one updating progress line on ``out``).

    :class:`ImageUnavailable` when it cannot be had (no registry, no such image).
    """
    import docker

    with _client(300) as client:
        try:
            return str(client.images.get(image).id)
        except docker.errors.ImageNotFound:
            pass
        try:
            _pull(client, image, out if out is not None else sys.__stderr__)
            return str(client.images.get(image).id)
        except docker.errors.DockerException as exc:
            why = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
            raise ImageUnavailable(IMAGE_UNAVAILABLE.format(image=image, why=why, store=store, how=HOW_TO)) from None


def _pull(client: Any, image: str, out: Any) -> None:
    """Pull ``image``, showing how far it got on one line that updates itself (at most 5 times a second)."""
    import docker

    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    progress = PullProgress(image)
    shown = 0.0
    for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
        if "error" in event:
            raise docker.errors.APIError(str(event["error"]))
        progress.update(event)
        if out is not None and time.monotonic() - shown > 0.2:
            shown = time.monotonic()
            with contextlib.suppress(Exception):
                out.write("\r" + progress.line())
                out.flush()
    if out is not None and shown:
        with contextlib.suppress(Exception):
            out.write("\r" + progress.line() + "\n")
            out.flush()


class PullProgress:
    """How far a pull got, from the engine's progress events: bytes done of bytes known, per layer."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.layers: dict[str, tuple[int, int]] = {}
        self.done_layers: set[str] = set()

    def update(self, event: dict[str, Any]) -> None:
        layer = event.get("id")
        detail = event.get("progressDetail") or {}
        if not layer:
            return
        if detail.get("total"):
            self.layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
        if event.get("status") in ("Pull complete", "Already exists"):
            self.done_layers.add(layer)
            if layer in self.layers:
                self.layers[layer] = (self.layers[layer][1], self.layers[layer][1])

    def line(self) -> str:
        done = sum(current for current, _ in self.layers.values())
        total = sum(size for _, size in self.layers.values())
        share = f" ({100 * done // total}%)" if total else ""
        return (f"pytest-rollback: pulling {self.image}: {done / 1e6:.1f} of {total / 1e6:.1f} MB{share}, "
                f"{len(self.done_layers)} layer(s) done")


# -- who a container belongs to -------------------------------------------------------------------
def project_of(settings: StoreSettings) -> str:
    """A short hash of the project's root directory (the run's rootdir; the working directory without one)."""
    root = getattr(settings.config, "rootpath", None) if settings.config is not None else None
    return project_hash(root or os.getcwd())


def project_hash(root: str | os.PathLike[str]) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:12]


def run_label(run: RunId) -> str:
    return f"{run.host}/{run.pid}/{run.ticks if run.ticks is not None else ''}"


def parse_run(label: str, started: float = 0.0) -> RunId | None:
    host, _, rest = label.rpartition("/")
    host, _, pid = host.rpartition("/")
    try:
        return RunId(int(pid), host, started, int(rest) if rest else None)
    except ValueError:
        return None


def _run_of(settings: StoreSettings) -> RunId:
    from .shared import run_of

    return run_of(settings)


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """What one server's container runs, and how to tell it is ready and to empty it."""

    #: the server's name: ``redis``, ``mongo``, ``elasticsearch``, or a declared server's
    server: str
    #: the store (its option names, its messages)
    store: str
    image: str
    #: the port inside the container
    port: int
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    #: ``ready(host, port, logs) -> version``: waits until the server answers (StoreUnavailable if it never does)
    ready: Callable[[str, int, Callable[[], str]], str] = dataclasses.field(default=lambda h, p, logs: "?",
                                                                           compare=False)
    #: ``reset(host, port)``: empty a reused server (nothing of an earlier run may leak into this one)
    reset: Callable[[str, int], None] = dataclasses.field(default=lambda h, p: None, compare=False)

    def config_hash(self, image_id: str) -> str:
        text = json.dumps([image_id, self.command, sorted(self.env), self.port, self.server])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Started:
    """A container running for this run: the service's address and what to do with it at the end."""

    host: str
    port: int
    version: str
    container: str
    name: str
    reused: str | None  # when it started, for a reused one
    startup_ms: float
    stop: Callable[[], None]


_reaped: set[int] = set()


def reap(client: Any = None, host: str | None = None) -> list[str]:
    """Remove the containers of runs of this host that are gone (not those kept for reuse); one line per run."""
    if client is None:
        if engine_answers() is not None:
            return []
        with _client() as fresh:
            return reap(fresh, host)
    host = host or socket.gethostname()
    runs: dict[str, tuple[RunId, list[str]]] = {}
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.run"}):
        labels = container.labels or {}
        if labels.get(f"{LABEL}.reuse") == "1" and container.status == "running":
            continue  # kept for the next run: --rollback-docker-prune removes it
        run = parse_run(labels.get(f"{LABEL}.run", ""), float(labels.get(f"{LABEL}.started") or 0))
        if run is None or run.host != host or run.alive():
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
            runs.setdefault(run_label(run), (run, []))[1].append(container.name)
    lines = []
    for run, names in runs.values():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)) if run.started else "?"
        lines.append(REMOVED_DEAD.format(count=len(names), s="s" if len(names) != 1 else "",
                                         who=f"an interrupted run (pid {run.pid}, started {when})",
                                         names=", ".join(sorted(names))))
    return lines


def kept(client: Any = None, project: str | None = None) -> list[dict[str, str]]:
    """The containers kept for reuse (of ``project``, else of every project): id, name, server, status, started,
    image."""
    if client is None:
        with _client() as fresh:
            return kept(fresh, project)
    wanted = [f"{LABEL}.reuse=1", *([f"{LABEL}.project={project}"] if project else [])]
    found = []
    for container in client.containers.list(all=True, filters={"label": wanted}):
        labels = container.labels or {}
        found.append({"id": container.id, "name": container.name, "server": labels.get(f"{LABEL}.server", "?"),
                      "status": container.status, "started": _when(labels.get(f"{LABEL}.started")),
                      "image": labels.get(f"{LABEL}.image", "?")})
    return found


def prune(project: str) -> list[str]:
    """Remove the containers kept for reuse of ``project`` and those of dead runs; one line each, and one
    naming how many other projects' kept containers are left."""
    reason = engine_answers()
    if reason is not None:
        return [f"pytest-rollback: --rollback-docker-prune: {reason}"]
    with _client() as client:
        lines = reap(client)
        for info in kept(client, project):
            with contextlib.suppress(Exception):
                client.containers.get(info["id"]).remove(force=True, v=True)
                lines.append(f"pytest-rollback: removed {info['name']} ({info['server']}, {info['image']}, "
                             f"started {info['started']})")
        if not lines:
            lines.append("pytest-rollback: this project has no container kept for reuse")
        others = len(kept(client))
        if others:
            lines.append(f"pytest-rollback: {others} container(s) of other projects are kept for reuse (docker ps "
                         f"--filter label={LABEL}.reuse=1; run --rollback-docker-prune in their directories)")
    return lines


def _when(started: str | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started or "")))
    except ValueError:
        return "?"


# -- starting (or reusing) a container ------------------------------------------------------------
def _lock_path(settings: StoreSettings, container_id: str) -> Path:
    return ensure_dir(Path(settings.state_dir) / "docker") / f"{container_id[:16]}.lock"


_held: dict[str, Any] = {}


def _take(settings: StoreSettings, container_id: str) -> bool:
    """Lock a kept container for this process (False: another run uses it now)."""
    import fcntl

    fh = open(_lock_path(settings, container_id), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return False
    _held[container_id] = fh
    return True


def _release(container_id: str) -> None:
    fh = _held.pop(container_id, None)
    if fh is not None:
        fh.close()


def _published(container: Any, port: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        bound = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp")
        if bound:
            return int(bound[0]["HostPort"])
        if container.status == "exited" or time.monotonic() > deadline:
            raise StoreUnavailable(f"the container's port {port} was not published")
        time.sleep(0.05)


def _logs(container: Any) -> Callable[[], str]:
    """A function that returns the container's output so far (for start-up errors)."""

    def logs() -> str:
        with contextlib.suppress(Exception):
            return str(container.logs(tail=20).decode(errors="replace"))
        return ""

    return logs


def _exited(container: Any) -> Callable[[], int | None]:
    def exited() -> int | None:
        with contextlib.suppress(Exception):
            container.reload()
            if container.status in ("exited", "dead"):
                return int(container.attrs.get("State", {}).get("ExitCode", -1))
        return None

    return exited


def _tail(logs: Callable[[], str], lines: int = 5) -> str:
    tail = [line for line in logs().strip().splitlines() if line.strip()][-lines:]
    return f"; last log lines: {' | '.join(tail)}" if tail else ""


def start(settings: StoreSettings, spec: ContainerSpec) -> Started:
    """Run ``spec`` (or, with reuse, take a kept container of the same configuration); StoreUnavailable if not."""
    reason = engine_answers()
    if reason is not None:
        raise StoreUnavailable(reason)
    try:
        import docker  # noqa: F401
    except ImportError:
        raise StoreUnavailable("the docker package is not installed (pip install 'pytest-rollback[docker]')") from None
    begin = time.perf_counter()
    image_id = ensure_image(spec.image, spec.store)
    with _client() as client:
        if os.getpid() not in _reaped:
            _reaped.add(os.getpid())
            settings.extra.setdefault("notes", []).extend(reap(client))
        config = spec.config_hash(image_id)
        project = project_of(settings)
        reuse = bool(settings.extra.get("reuse"))
        if reuse:
            found = _reusable(client, settings, spec, project, config, begin)
            if found is not None:
                return found
        run = _run_of(settings)
        labels = {
            f"{LABEL}.project": project, f"{LABEL}.server": spec.server, f"{LABEL}.config": config,
            f"{LABEL}.run": run_label(run), f"{LABEL}.reuse": "1" if reuse else "0",
            f"{LABEL}.started": f"{time.time():.0f}", f"{LABEL}.image": spec.image,
        }
        name = f"pytest-rollback-{spec.server}-{project[:6]}-{uuid.uuid4().hex[:6]}"
        container = client.containers.run(
            spec.image, list(spec.command) if spec.command is not None else None, name=name, detach=True,
            environment=dict(spec.env), labels=labels, ports={f"{spec.port}/tcp": ("127.0.0.1", None)},
        )
        if reuse:
            _take(settings, container.id)
            stop = _keep(container.id)
        else:  # removed at the end; or by its watchdog, once the run has ended without removing it
            stop = _remover(container.id, _watch(container.id, run))
        logs = _logs(container)
        try:
            port = _published(container, spec.port)
            version = spec.ready("127.0.0.1", port, _with_exit(logs, _exited(container)))
        except BaseException as exc:
            why = str(exc) if isinstance(exc, StoreUnavailable) else repr(exc)
            tail = "" if "last log lines" in why else _tail(logs)
            with contextlib.suppress(Exception):
                _remover(container.id)() if reuse else stop()
                _release(container.id)
            if isinstance(exc, Exception):
                raise StoreUnavailable(START_FAILED.format(server=spec.server, name=name, image=spec.image,
                                                           why=why + tail)) from None
            raise
        return Started("127.0.0.1", port, version, container.id, name, None,
                       (time.perf_counter() - begin) * 1000, stop)


def _with_exit(logs: Callable[[], str], exited: Callable[[], int | None]) -> Callable[[], str]:
    logs.exited = exited  # type: ignore[attr-defined]
    return logs


def _reusable(
    client: Any, settings: StoreSettings, spec: ContainerSpec, project: str, config: str, begin: float
) -> Started | None:
    """A kept container of this project and configuration that answers and no other run uses, emptied.

    Kept containers of this project and server with another configuration (an image rebuilt or re-tagged,
    other arguments) can never be reused: those no run uses are removed.
    """
    stale = {"label": [f"{LABEL}.project={project}", f"{LABEL}.server={spec.server}", f"{LABEL}.reuse=1"]}
    for container in client.containers.list(all=True, filters=stale):
        if (container.labels or {}).get(f"{LABEL}.config") != config and _take(settings, container.id):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
            _release(container.id)
    filters = {"label": [f"{LABEL}.project={project}", f"{LABEL}.server={spec.server}", f"{LABEL}.config={config}",
                         f"{LABEL}.reuse=1"], "status": "running"}
    for container in client.containers.list(filters=filters):
        if not _take(settings, container.id):
            continue  # another run has it
        try:
            port = _published(container, spec.port, timeout=1)
            version = spec.ready("127.0.0.1", port, _logs(container))
            spec.reset("127.0.0.1", port)
        except Exception:  # it does not answer (or cannot be emptied): not reused, and not kept
            _release(container.id)
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
            continue
        when = _when((container.labels or {}).get(f"{LABEL}.started"))
        return Started("127.0.0.1", port, version, container.id, container.name, when,
                       (time.perf_counter() - begin) * 1000, _keep(container.id))
    return None


def _watch(container_id: str, run: RunId) -> subprocess.Popen[bytes] | None:
    """Start the watchdog that removes the container once the run ends (see :mod:`.container_watchdog`)."""
    from . import container_watchdog

    spec = {"container": container_id, "owners": [[run.pid, run.ticks]],
            "docker_host": os.environ.get("DOCKER_HOST", "")}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", container_watchdog.__file__, json.dumps(spec)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
            start_new_session=True,  # a terminal's Ctrl-C to pytest does not reach it
        )
    except OSError:  # the next run removes the container if this one is killed
        return None
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    _watchdogs.append(proc)
    return proc


#: the watchdogs this process started (kept referenced: a worker's outlive their Popen's use)
_watchdogs: list[subprocess.Popen[bytes]] = []


def _remover(container_id: str, watchdog: subprocess.Popen[bytes] | None = None) -> Callable[[], None]:
    def stop() -> None:
        remove(container_id)
        if watchdog is not None and watchdog.poll() is None:
            watchdog.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(5)

    return stop


def _keep(container_id: str) -> Callable[[], None]:
    def stop() -> None:
        _release(container_id)

    return stop


def remove(container_id: str) -> None:
    """Remove a container (and its anonymous volumes); gone already is fine."""
    import docker

    with _client() as client:
        try:
            client.containers.get(container_id).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass


def serve(
    settings: StoreSettings, spec: ContainerSpec, url: Callable[[str, int], str], extra: dict[str, Any]
) -> Service:
    """Start (or reuse) ``spec``'s container, shared by every xdist worker of the run; its Service."""
    from .shared import shared

    def make() -> Service:
        started = start(settings, spec)
        detail = (f"reused {started.name} (started {started.reused})" if started.reused is not None
                  else f"container {started.name}")
        return Service(
            name=spec.server, provider="docker", url=url(started.host, started.port), host=started.host,
            port=started.port, version=started.version, startup_ms=started.startup_ms, owned=True,
            extra={**extra, "image": spec.image, "container": started.container, "container_name": started.name,
                   "detail": detail, "kept": started.reused is not None or bool(settings.extra.get("reuse")),
                   "notes": settings.extra.pop("notes", [])},
            stop=started.stop,
        )

    return shared(settings, f"{spec.server}-docker", make)


# -- the three stores -----------------------------------------------------------------------------
def _image(settings: StoreSettings) -> str:
    return str(settings.extra.get("image") or settings.image)


def _server(settings: StoreSettings) -> str:
    return str(settings.extra.get("server") or settings.store)


def _args(settings: StoreSettings) -> tuple[str, ...]:
    return tuple(settings.extra.get("args") or ())


def _env(settings: StoreSettings, base: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**base, **(settings.extra.get("env") or {})}.items()))


def redis(settings: StoreSettings) -> Service:
    """A Redis container (``settings.image``, pinned in options), shared by the xdist workers.

    Each worker gets its own database number (its index), and rollback covers
    only that database.
    """
    from ..adapters._resp3 import Resp3Connection, info
    from . import wait_until

    def ready(host: str, port: int, logs: Callable[[], str]) -> str:
        version: list[str] = []

        def answers() -> bool:
            if not _alive(logs):
                return False
            conn = Resp3Connection(host, port, timeout=min(1.0, settings.timeout))
            try:
                version.append(info(conn, "server").get("redis_version", "?"))
            finally:
                conn.close()
            return True

        wait_until(answers, 60, f"redis container {_image(settings)}", logs)
        return version[-1]

    def reset(host: str, port: int) -> None:
        conn = Resp3Connection(host, port, timeout=settings.timeout)
        try:
            conn.call("FLUSHALL")
            conn.call("SCRIPT", "FLUSH")
            conn.call("CONFIG", "SET", "notify-keyspace-events", "KA")  # as started
        finally:
            conn.close()

    spec = ContainerSpec(
        server=_server(settings), store="redis", image=_image(settings), port=6379,
        # keyspace events on from the start: no worker sharing it has to switch them on (a CONFIG SET the
        # others would have to restore fully after)
        command=("redis-server", "--save", "", "--appendonly", "no", "--notify-keyspace-events", "KA",
                 *_args(settings)),
        env=_env(settings, {}), ready=ready, reset=reset,
    )
    service = serve(settings, spec, lambda host, port: f"redis://{host}:{port}/0", {})
    db = settings.worker_index if settings.worker is not None else 0
    service.url = f"redis://{service.host}:{service.port}/{db}"
    service.extra.update(
        db=db,
        dbs=None if settings.worker is None else [db],
        others=None if settings.worker is None else [i for i in range(settings.worker_count) if i != db],
    )
    return service


def _alive(logs: Callable[[], str]) -> bool:
    """Raise StoreUnavailable when the container of ``logs`` exited (waiting longer cannot help)."""
    exited = getattr(logs, "exited", None)
    code = exited() if exited is not None else None
    if code is not None:
        raise StoreUnavailable(f"the container exited with code {code}")
    return True


def mongo(settings: StoreSettings) -> Service:
    """A MongoDB container as a single-node replica set (change streams need one), shared by the xdist workers.

    Ready means elected primary, not merely answering a ping. Each worker gets
    its own database (``test_gw0``, ...).
    """
    import pymongo

    from .local import initiate_replica_set
    from .shared import worker_database

    def client_of(host: str, port: int) -> pymongo.MongoClient[dict[str, Any]]:
        return pymongo.MongoClient(f"mongodb://{host}:{port}/?directConnection=true", serverSelectionTimeoutMS=500,
                                   socketTimeoutMS=int(settings.timeout * 1000))

    def ready(host: str, port: int, logs: Callable[[], str]) -> str:
        client = client_of(host, port)
        try:
            # the member's address as the container sees itself; clients use directConnection
            return initiate_replica_set(client, "127.0.0.1:27017", f"mongo container {_image(settings)}", logs,
                                        getattr(logs, "exited", lambda: None))
        finally:
            client.close()

    def reset(host: str, port: int) -> None:
        client = client_of(host, port)
        try:
            for name in client.list_database_names():
                if name not in ("admin", "local", "config"):
                    client.drop_database(name)
        finally:
            client.close()

    spec = ContainerSpec(
        server=_server(settings), store="mongo", image=_image(settings), port=27017,
        command=("--replSet", "rs0", "--bind_ip_all", "--port", "27017", "--quiet", "--wiredTigerCacheSizeGB", "0.25",
                 *_args(settings)),
        env=_env(settings, {}), ready=ready, reset=reset,
    )
    service = serve(settings, spec, lambda host, port: f"mongodb://{host}:{port}/?directConnection=true", {})
    service.extra.setdefault("db", worker_database(settings))
    return service


def elasticsearch_image(settings: StoreSettings) -> str:
    """The configured image; when left at the default, one the installed client can talk to."""
    from ..options import DEFAULT_IMAGES, ELASTICSEARCH_9_IMAGE

    image = _image(settings)
    if image != DEFAULT_IMAGES["elasticsearch"]:
        return image
    try:
        from importlib.metadata import version

        major = int(version("elasticsearch").split(".")[0])
    except Exception:
        return image
    return ELASTICSEARCH_9_IMAGE if major >= 9 else image


def elasticsearch(settings: StoreSettings) -> Service:
    """A single Elasticsearch node (security off, a 512 MB heap), shared by the xdist workers.

    Ready when the cluster's health is yellow or green. Each worker owns the
    indices named with its prefix (``gw0-``, ...), as on a shared external server.
    """
    from ..adapters._http import Http
    from .local import wait_for_elasticsearch

    image = elasticsearch_image(settings)

    def ready(host: str, port: int, logs: Callable[[], str]) -> str:
        return wait_for_elasticsearch(f"http://{host}:{port}", f"elasticsearch container {image}", logs,
                                      getattr(logs, "exited", lambda: None), timeout=180)

    def reset(host: str, port: int) -> None:
        http = Http(f"http://{host}:{port}", timeout=settings.timeout)
        names = [name for name in http("GET", "/*", expand_wildcards="all") or {}
                 if not name.startswith(".") or name.startswith(".pytest-rollback-")]
        if names:
            http("DELETE", "/" + ",".join(names), expand_wildcards="all", ok=(404,))
        for kind, key in (("_index_template", "index_templates"), ("_component_template", "component_templates")):
            found = http("GET", f"/{kind}", ok=(404,))
            for item in found.get(key, []) if isinstance(found, dict) else []:
                http("DELETE", f"/{kind}/{item['name']}", ok=(404,))
        legacy = http("GET", "/_template", ok=(404,))
        for name in legacy if isinstance(legacy, dict) else []:
            http("DELETE", f"/_template/{name}", ok=(404,))
        current = http("GET", "/_cluster/settings", flat_settings="true")
        cleared = {kind: dict.fromkeys(current.get(kind) or {}) for kind in ("persistent", "transient")}
        if any(cleared.values()):
            http("PUT", "/_cluster/settings", cleared)

    env = {
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
        "stack.templates.enabled": "false",
        "ingest.geoip.downloader.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    spec = ContainerSpec(
        server=_server(settings), store="elasticsearch", image=image, port=9200,
        command=_args(settings) or None, env=_env(settings, env), ready=ready, reset=reset,
    )
    service = serve(settings, spec, lambda host, port: f"http://{host}:{port}", {})
    service.extra["prefix"] = f"{settings.worker}-" if settings.worker is not None else ""
    return service
