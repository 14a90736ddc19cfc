"""The ``external`` provider: a server someone else runs, given by URL.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit, urlunsplit

from .. import faults
from ..api import Service, StoreUnavailable
from ..masking import mask
from ..options import EXAMPLE_URLS, StoreSettings

#: The server refused the connection: nothing listens at the URL's address.
CANNOT_REACH = (
    "pytest-rollback: {store}: cannot reach {where} from the configured URL ({reason}); "
    "start the server or fix {option}"
)
REMOTE_REFUSED = (
    "pytest-rollback: {store}: refusing {host!r} from the configured URL: it is not this machine nor a "
    "CI or compose service (a name without dots on a private network), and pytest-rollback rolls back "
    "(rewrites) the data of the servers it uses; pass --rollback-allow-remote if that is intended"
)


#: the private networks CI and compose services live on (RFC 1918 and IPv6 unique local addresses)
_SERVICE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` names ([] when it does not resolve); no traffic is sent to it."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return []
    return [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (no traffic is sent)."""
    if host == "localhost":
        return True
    found = _addresses(host)
    return bool(found) and all(a.is_loopback for a in found)


def is_service_name(host: str) -> bool:
    """True for a CI or compose service: a name without dots whose every address is private.

    GitLab and GitHub Actions services and docker-compose services are reached
    by a short name (``redis``, ``mongo``) on a private network. A name with
    dots (``db.prod.example.com``) or an address written out (even a private
    one: production servers live on private networks too) is not one.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
        return False
    except ValueError:
        pass
    if not host or "." in host:
        return False
    found = _addresses(host)
    return bool(found) and all(any(a in net for net in _SERVICE_NETWORKS if a.version == net.version) for a in found)


def check_address(settings: StoreSettings, host: str) -> None:
    """Refuse a configured host that is neither this machine nor a CI/compose service, unless allowed."""
    if settings.allow_remote or is_loopback(host) or is_service_name(host):
        return
    raise StoreUnavailable(REMOTE_REFUSED.format(store=settings.store, host=host))


def redis(settings: StoreSettings) -> Service:
    """Connect to the Redis server of ``--rollback-redis-url``.

    Under pytest-xdist every worker gets its own database number: the URL's
    database plus the worker's index, and rollback covers only that database.
    The server is asked once (``HELLO``, on the adapter's own connection):
    redis-py is not imported for it, so a suite whose tests do not ask for
    ``redis_client`` never pays for that import.
    """
    from ..adapters._resp3 import ConnectionLost, ReplyError, Resp3Connection
    from ..adapters.redis import auth_reason, is_auth_error, parse_url

    assert settings.url is not None
    try:
        params = parse_url(settings.url)
    except ValueError as exc:
        raise StoreUnavailable(mask(f"pytest-rollback: redis: bad URL {settings.url!r}: {exc}")) from None
    check_address(settings, params["host"])
    start = time.perf_counter()
    db = params["db"] or 0
    dbs = None
    others = None
    url = settings.url
    if settings.worker is not None:
        others = [db + i for i in range(settings.worker_count) if i != settings.worker_index]
        db += settings.worker_index
        dbs = [db]
        parts = urlsplit(url)
        url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))  # the query's db= would win over it
    where = f"{params['host']}:{params['port']}"
    try:
        conn = Resp3Connection(
            params["host"], params["port"], username=params["username"], password=params["password"],
            timeout=settings.timeout,
        )
    except ReplyError as exc:
        if is_auth_error(exc):
            raise StoreUnavailable(str(faults.auth_failed("redis", where, auth_reason(exc)))) from None
        why = f"it refused HELLO 3 ({exc}); Redis 6 or newer is needed"
        raise StoreUnavailable(_cannot_reach("redis", where, why)) from None
    except (ConnectionLost, OSError) as exc:
        if isinstance(exc, TimeoutError) or getattr(exc, "timed_out", False):
            raise StoreUnavailable(str(faults.not_answering("redis", where, settings.timeout))) from None
        raise StoreUnavailable(_cannot_reach("redis", where, exc)) from None
    info = conn.server_info
    conn.close()
    version = info.get(b"version", b"?") if isinstance(info, dict) else b"?"
    return Service(
        name="redis",
        provider="external",
        url=url,
        host=params["host"],
        port=params["port"],
        version=version.decode() if isinstance(version, bytes) else str(version),
        startup_ms=(time.perf_counter() - start) * 1000,
        owned=False,
        extra={"db": db, "dbs": dbs, "others": others},
    )


def mongo(settings: StoreSettings) -> Service:
    """Connect to the MongoDB deployment of ``--rollback-mongo-url``.

    ``mongo_db`` is the URL's database (default ``test``). Without xdist the
    rollback covers every database but ``admin``, ``local`` and ``config``, and
    what was there before the session is put back at its end; under xdist each
    worker gets ``<database>_<worker id>`` and its rollback covers only that.
    """
    import pymongo
    from pymongo.errors import InvalidURI, NetworkTimeout, OperationFailure, PyMongoError
    from pymongo.uri_parser import parse_uri

    from ..adapters.mongo import SERVER_SELECTION_LIMIT, auth_reason

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
    others = None
    if settings.worker is not None:
        others = [f"{db}_gw{i}" for i in range(settings.worker_count) if i != settings.worker_index]
        db = f"{db}_{settings.worker}"
        dbs = [db]
    start = time.perf_counter()
    ms = int(settings.timeout * 1000)
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        settings.url,
        serverSelectionTimeoutMS=int(min(settings.timeout, SERVER_SELECTION_LIMIT) * 1000),
        connectTimeoutMS=ms,
        socketTimeoutMS=ms,
    )
    where = f"{host}:{port}"
    try:
        version = str(client.server_info().get("version", "?"))
        client.list_database_names()  # what the adapter reads first: a server that wants credentials refuses it
    except PyMongoError as exc:
        refused = auth_reason(exc)
        if refused is not None:
            raise StoreUnavailable(str(faults.auth_failed("mongo", where, refused))) from None
        if isinstance(exc, OperationFailure):
            raise StoreUnavailable(_cannot_reach("mongo", where, exc)) from None
        if isinstance(exc, NetworkTimeout) or "timed out" in str(exc):
            raise StoreUnavailable(str(faults.not_answering("mongo", where, settings.timeout))) from None
        raise StoreUnavailable(_cannot_reach("mongo", where, exc.__class__.__name__)) from None
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
        extra={"db": db, "dbs": dbs, "others": others},
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

    from ..adapters._http import ConnectionFailed, Http, HttpError

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
    http = Http(settings.url, timeout=settings.timeout)
    where = f"{host}:{port}"
    try:
        info = http("GET", "/")
    except HttpError as exc:
        if exc.status != 401:
            raise StoreUnavailable(_cannot_reach("elasticsearch", where, exc)) from None
        answer = faults.reason(exc).split(" answered ", 1)[-1]  # "401: missing authentication credentials ..."
        raise StoreUnavailable(str(faults.auth_failed("elasticsearch", where, answer))) from None
    except ConnectionFailed as exc:
        if exc.timed_out:
            raise StoreUnavailable(str(faults.not_answering("elasticsearch", where, settings.timeout))) from None
        raise StoreUnavailable(_cannot_reach("elasticsearch", where, exc)) from None
    except Exception as exc:
        raise StoreUnavailable(_cannot_reach("elasticsearch", where, exc.__class__.__name__)) from None
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


def _cannot_reach(store: str, where: str, why: BaseException | str) -> str:
    """The line of a configured URL whose server cannot be reached at session start."""
    reason = why if isinstance(why, str) else faults.reason(why)
    return mask(CANNOT_REACH.format(store=store, where=where, reason=reason, option=faults.url_option(store)))
