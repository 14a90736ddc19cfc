"""The ``external`` provider: a server someone else runs, given by URL."""

from __future__ import annotations

import ipaddress
import socket
import time

from ..api import Service, StoreUnavailable
from ..options import StoreSettings

REMOTE_REFUSED = (
    "pytest-rollback: {store}: refusing {host!r} from the configured URL: it is not a loopback "
    "address, and pytest-rollback rolls back (rewrites) the data of the servers it uses; pass "
    "--rollback-allow-remote if that is intended"
)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (no traffic is sent)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_address(settings: StoreSettings, host: str) -> None:
    if not settings.allow_remote and not is_loopback(host):
        raise StoreUnavailable(REMOTE_REFUSED.format(store=settings.store, host=host))


def redis(settings: StoreSettings) -> Service:
    """Connect to the Redis server of ``--rollback-redis-url``.

    Under pytest-xdist every worker gets its own database number: the URL's
    database plus the worker's index, and rollback covers only that database.
    """
    import redis as redis_py

    from ..adapters.redis import parse_url

    assert settings.url is not None
    try:
        params = parse_url(settings.url)
    except ValueError as exc:
        raise StoreUnavailable(f"pytest-rollback: redis: bad URL {settings.url!r}: {exc}") from None
    check_address(settings, params["host"])
    start = time.perf_counter()
    db = params["db"] or 0
    dbs = None
    url = settings.url
    if settings.worker is not None:
        db += settings.worker_index
        dbs = [db]
        base = url.split("?")[0].rstrip("/")
        if params["db"] is not None:
            base = base.rsplit("/", 1)[0]
        url = f"{base}/{db}"
    client = redis_py.Redis.from_url(url, socket_connect_timeout=5)
    try:
        version = str(client.info("server").get("redis_version", "?"))
    except redis_py.RedisError as exc:
        raise StoreUnavailable(
            f"pytest-rollback: redis: cannot reach {params['host']}:{params['port']} from the configured URL "
            f"({exc}); start the server or fix --rollback-redis-url"
        ) from None
    finally:
        client.close()
    return Service(
        name="redis",
        provider="external",
        url=url,
        host=params["host"],
        port=params["port"],
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=False,
        extra={"db": db, "dbs": dbs},
    )
