"""The ``embedded`` provider: a server inside this process (no binary, no Docker)."""

from __future__ import annotations

import threading
import time

from ..api import Service, StoreUnavailable
from ..options import StoreSettings


def redis(settings: StoreSettings) -> Service:
    """fakeredis served over TCP on 127.0.0.1 from a thread of this process.

    Code under test reaches it by URL like a real server. fakeredis has no
    keyspace-event counters, so the adapter uses the snapshot strategy: exact,
    but each checkpoint and rollback costs time proportional to the data.
    """
    try:
        import fakeredis
        from fakeredis import TcpFakeServer
    except ImportError:
        raise StoreUnavailable("fakeredis is not installed (pip install 'pytest-rollback[all]')") from None
    start = time.perf_counter()
    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="pytest-rollback-fakeredis", daemon=True)
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
        extra={"db": 0, "dbs": list(range(16))},
        stop=stop,
    )
