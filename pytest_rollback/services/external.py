"""The ``external`` provider: a server someone else runs, given by URL."""

from __future__ import annotations

import ipaddress
import socket
import time

from ..api import Service, StoreUnavailable
from ..masking import mask
from ..options import EXAMPLE_URLS, StoreSettings
from .shared import redis_flags_record

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
        raise StoreUnavailable(mask(f"pytest-rollback: redis: bad URL {settings.url!r}: {exc}")) from None
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
    try:
        client = redis_py.Redis.from_url(url, socket_connect_timeout=5)
    except ValueError as exc:  # in the query: db=x, an unknown option...
        raise StoreUnavailable(mask(f"pytest-rollback: redis: bad URL {settings.url!r}: {exc}")) from None
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
        extra={"db": db, "dbs": dbs, "flags_record": redis_flags_record(settings)},
    )


def mongo(settings: StoreSettings) -> Service:
    """Connect to the MongoDB deployment of ``--rollback-mongo-url``.

    ``mongo_db`` is the URL's database (default ``test``). Without xdist the
    rollback covers every database but ``admin``, ``local`` and ``config``, and
    what was there before the session is put back at its end; under xdist each
    worker gets ``<database>_<worker id>`` and its rollback covers only that.
    """
    import pymongo
    from pymongo.errors import InvalidURI, PyMongoError
    from pymongo.uri_parser import parse_uri

    assert settings.url is not None
    try:
        parsed = parse_uri(settings.url)
    except (InvalidURI, ValueError) as exc:
        raise StoreUnavailable(mask(f"pytest-rollback: mongo: bad URL {settings.url!r}: {exc}")) from None
    nodes = parsed.get("nodelist") or []
    for host, _port in nodes:
        check_address(settings, host)
    host, port = nodes[0] if nodes else ("", 0)
    db = parsed.get("database") or "test"
    dbs = None
    if settings.worker is not None:
        db = f"{db}_{settings.worker}"
        dbs = [db]
    start = time.perf_counter()
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(settings.url, serverSelectionTimeoutMS=5000)
    try:
        version = str(client.server_info().get("version", "?"))
    except PyMongoError as exc:
        raise StoreUnavailable(
            f"pytest-rollback: mongo: cannot reach {host}:{port} from the configured URL "
            f"({exc.__class__.__name__}); start the server or fix --rollback-mongo-url"
        ) from None
    finally:
        client.close()
    return Service(
        name="mongo",
        provider="external",
        url=settings.url,
        host=host,
        port=int(port),
        version=version,
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=False,
        extra={"db": db, "dbs": dbs},
    )


def elasticsearch(settings: StoreSettings) -> Service:
    """Connect to the Elasticsearch cluster of ``--rollback-elasticsearch-url``.

    Without xdist the rollback covers every index and template whose name does
    not start with ``.``, and the cluster settings; what was there before the
    session is put back at its end. Under xdist each worker owns only the
    indices and templates named with its prefix (``gw0-``, ...), given in
    ``elasticsearch_service.extra["prefix"]``.
    """
    from urllib.parse import urlsplit

    from ..adapters._http import Http

    assert settings.url is not None
    try:
        parts = urlsplit(settings.url)
        host, port = parts.hostname, parts.port or 9200
    except ValueError as exc:
        raise StoreUnavailable(mask(f"pytest-rollback: elasticsearch: bad URL {settings.url!r}: {exc}")) from None
    if parts.scheme not in ("http", "https") or not host:
        raise StoreUnavailable(
            mask(
                f"pytest-rollback: elasticsearch: bad URL {settings.url!r}: expected http://host:port "
                f"(e.g. {EXAMPLE_URLS['elasticsearch']})"
            )
        )
    check_address(settings, host)
    start = time.perf_counter()
    http = Http(settings.url, timeout=10)
    try:
        info = http("GET", "/")
    except Exception as exc:
        raise StoreUnavailable(
            f"pytest-rollback: elasticsearch: cannot reach {host}:{port} from the configured URL "
            f"({exc.__class__.__name__}); start the server or fix --rollback-elasticsearch-url"
        ) from None
    finally:
        http.close()
    prefix = f"{settings.worker}-" if settings.worker is not None else ""
    return Service(
        name="elasticsearch",
        provider="external",
        url=settings.url,
        host=host,
        port=int(port),
        version=str((info.get("version") or {}).get("number", "?")) if isinstance(info, dict) else "?",
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=False,
        extra={"prefix": prefix},
    )

