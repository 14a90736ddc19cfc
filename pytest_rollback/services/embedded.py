"""The ``embedded`` provider: a server inside this process (no binary, no Docker).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..api import Service, StoreUnavailable
from ..options import StoreSettings
from . import wait_until
from .local import ServerProcess, launch


def redis(settings: StoreSettings) -> Service:
    """fakeredis served over TCP on 127.0.0.1 from a thread of this process.

    Code under test reaches it by URL like a real server. fakeredis has no
    keyspace events; the server object (``extra["fakeredis"]``) lets the adapter
    keep a write journal on its databases instead (see ``adapters.redis_inprocess``).
    """
    try:
        import fakeredis
        from fakeredis import TcpFakeServer
    except ImportError:
        raise StoreUnavailable("fakeredis is not installed (pip install 'pytest-rollback[all]')") from None

    class Server(TcpFakeServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            # fakeredis writes a reply in several small sends: with Nagle's algorithm the
            # client's delayed ACK held each pipelined round trip for about 40 ms
            conn, address = super().get_request()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, address

    start = time.perf_counter()
    server = Server(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    # shutdown() waits for the loop's next poll: 0.5 s by default, at the end of every session
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="pytest-rollback-fakeredis", daemon=True
    )
    thread.start()
    port = int(server.server_address[1])

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return Service(
        name="redis",
        provider="embedded",
        url=f"redis://127.0.0.1:{port}/0",
        host="127.0.0.1",
        port=port,
        version=f"fakeredis {getattr(fakeredis, '__version__', '?')}",
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"db": 0, "dbs": list(range(16)), "fakeredis": server.fake_server},
        stop=stop,
    )


def mongo(settings: StoreSettings) -> Service:
    """MongoDB without Docker or mongod: SecantusDB if installed, else mongomock in process.

    ``--rollback-mongo-embedded`` picks one (``auto``, ``secantusdb``, ``mongomock``).
    SecantusDB is a wire-compatible server in a separate process: code under test
    reaches it by URL, change streams and transactions work, and rollback tracks
    documents. mongomock lives in this process: only the clients of the
    ``mongo_client`` fixture (or ones sharing its store) see its data.
    """
    choice = str(settings.extra.get("embedded", "auto"))
    if choice in ("auto", "secantusdb"):
        try:
            return secantusdb(settings)
        except StoreUnavailable:
            if choice == "secantusdb":
                raise
    return mongomock(settings)


def mongomock(settings: StoreSettings) -> Service:
    """mongomock in this process: no server, no URL; the ``mongo_client`` fixture shares its store."""
    try:
        import mongomock as mm
    except ImportError:
        raise StoreUnavailable(
            "neither SecantusDB nor mongomock is installed (pip install 'pytest-rollback[all]')"
        ) from None
    start = time.perf_counter()
    client: Any = mm.MongoClient()
    return Service(
        name="mongo",
        provider="embedded",
        url="mongomock://in-process",
        host="",
        port=0,
        version=f"mongomock {getattr(mm, '__version__', '?')}",
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"mongomock": client, "db": "test" if settings.worker is None else f"test_{settings.worker}"},
    )


def version_of_secantusdb() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secantusdb")
    except PackageNotFoundError:
        return "?"


def find_secantusd() -> str | None:
    """``secantusd-py`` (the SecantusDB server of the ``secantusdb`` package) on PATH or beside Python."""
    found = shutil.which("secantusd-py")
    if found:
        return found
    beside = Path(sys.executable).with_name("secantusd-py")
    return str(beside) if beside.exists() else None


def secantusdb(settings: StoreSettings) -> Service:
    """Start SecantusDB (a MongoDB-compatible replica set of one) on 127.0.0.1, in memory.

    Under pytest-xdist the workers share one server, each with its own database. Its URL turns
    retryable writes off (``retryWrites=false``) for every client made from it: SecantusDB's
    bookkeeping of them costs each retryable write time in proportion to those of the last 30
    minutes, and a server of one on the loopback has no failover for a retry to ride out.
    """
    from .shared import shared

    exe = find_secantusd()
    if exe is None:
        raise StoreUnavailable("SecantusDB is not installed (pip install 'pytest-rollback[secantusdb]')")
    return shared(settings, "mongo-secantusdb", lambda: _start_secantusdb(exe, settings))


def _start_secantusdb(exe: str, settings: StoreSettings) -> Service:
    import pymongo

    start = time.perf_counter()

    def ready(handle: ServerProcess) -> str:
        url = f"mongodb://127.0.0.1:{handle.port}/?directConnection=true"
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=500, socketTimeoutMS=int(settings.timeout * 1000)
        )

        def answers() -> bool:
            handle.check()
            client.admin.command("ping")
            return True

        try:
            wait_until(answers, 30, f"SecantusDB ({exe}) on port {handle.port}", handle.logs)
            return str(client.server_info().get("version", "?"))
        finally:
            client.close()

    handle, version = launch(
        "secantusdb",
        lambda port, workdir, log: [
            exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:", "--log-level", "WARNING"
        ],
        ready,
        settings,
        for_run=True,  # under xdist every worker uses it: it ends with the controller
    )
    return Service(
        name="mongo",
        provider="embedded",
        # without retryable writes: SecantusDB keeps a reply per retryable write for 30 minutes and scans
        # them all on each one (past 10,000 it sorts them), so a long run's writes grew slower and slower
        url=f"mongodb://127.0.0.1:{handle.port}/?directConnection=true&retryWrites=false",
        host="127.0.0.1",
        port=handle.port,
        version=f"SecantusDB {version_of_secantusdb()} (as MongoDB {version})",
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"pid": handle.pid, "workdir": handle.workdir},
        stop=handle.stop,
    )


def find_noida() -> str | None:
    """``noida-db`` (an Elasticsearch-compatible server from the ``noida-db`` package) on PATH or beside Python."""
    beside = Path(sys.executable).with_name("noida-db")
    if beside.exists():
        return str(beside)
    return shutil.which("noida-db")


def elasticsearch(settings: StoreSettings) -> Service:
    """Start noida-db, an Elasticsearch-compatible server from a pip package, on 127.0.0.1.

    It answers the Elasticsearch 8 REST API (index, bulk, search,
    delete_by_query, clone, settings, aliases, templates, stats). Each
    pytest-xdist worker starts its own (it starts in tens of milliseconds).
    """
    from importlib.metadata import PackageNotFoundError, version

    from .local import wait_for_elasticsearch

    exe = find_noida()
    if exe is None:
        raise StoreUnavailable("noida-db is not installed (pip install 'pytest-rollback[all]')")
    try:
        package = version("noida-db")
    except PackageNotFoundError:
        package = "?"
    start = time.perf_counter()

    def ready(handle: ServerProcess) -> str:
        return wait_for_elasticsearch(f"http://127.0.0.1:{handle.port}", f"noida-db ({exe}) on port {handle.port}",
                                      handle.logs, handle.check, 30)

    handle, number = launch(
        "noida",
        lambda port, workdir, log: [
            exe, "start", "--data-dir", str(workdir / "data"), "--only", "elasticsearch",
            "--host", "127.0.0.1", "--elasticsearch-port", str(port),
        ],
        ready,
        settings,
    )
    return Service(
        name="elasticsearch",
        provider="embedded",
        url=f"http://127.0.0.1:{handle.port}",
        host="127.0.0.1",
        port=handle.port,
        version=f"noida-db {package} (as Elasticsearch {number})",
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=True,
        extra={"prefix": "", "pid": handle.pid, "workdir": handle.workdir},
        stop=handle.stop,
    )
