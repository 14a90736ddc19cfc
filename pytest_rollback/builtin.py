"""The built-in stores, registered through the same hook a third party uses.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path

from .api import Rollbackable, Service
from .faults import require
from .options import DEFAULT_IMAGES, StoreSettings
from .registry import ProviderFn, Registry, Store

#: the modules of ``pytest_rollback.services`` that hold the built-in providers, by provider name
PROVIDER_MODULES = ("external", "docker", "local", "embedded")


def _needs(store: str, package: str, extra: str, provider: ProviderFn) -> ProviderFn:
    """``provider``, once ``package`` imports: else one line with the install command, and nothing started."""

    def checked(settings: StoreSettings) -> Service:
        require(store, package, extra)
        return provider(settings)

    checked.__doc__ = provider.__doc__
    return checked


def _lazy(module: str, name: str) -> ProviderFn:
    """The provider ``name`` of ``services.<module>``, imported when it is first called.

    A run imports only the provider modules it uses (the Docker one alone is
    700 lines and the docker SDK): loading the plugin stays cheap.
    """

    def provider(settings: StoreSettings) -> Service:
        found: ProviderFn = getattr(importlib.import_module(f".services.{module}", __package__), name)
        return found(settings)

    provider.__doc__ = f"The {module} provider of {name} (pytest_rollback.services.{module}.{name})."
    return provider


def _providers(store: str) -> dict[str, ProviderFn]:
    """The four built-in providers of ``store``, each imported when first used."""
    return {name: _lazy(name, store) for name in PROVIDER_MODULES}


def _needs_all(store: str, package: str, extra: str, providers: dict[str, ProviderFn]) -> dict[str, ProviderFn]:
    return {name: _needs(store, package, extra, provider) for name, provider in providers.items()}


def _journal_file(service: Service, name: str) -> str | None:
    """A file of the crash journal of the server (held by this run, or by the xdist controller)."""
    journal = service.extra.get("journal")
    return os.path.join(journal, name) if journal else None


def _redis_adapter(service: Service, settings: StoreSettings) -> Rollbackable:
    from .adapters.redis import RedisAdapter
    from .adapters.redis_journal import FLAGS_FILE

    if "fakeredis" in service.extra and not settings.extra.get("controller"):
        from .adapters.redis_inprocess import InProcessRedisAdapter

        # fakeredis in this process: a journal on its own databases (no events to read)
        return InProcessRedisAdapter(
            service.url, service.extra["fakeredis"], dbs=service.extra.get("dbs"), timeout=settings.timeout
        )
    # the xdist controller keeps the whole server: a full copy, compared at the end (it reads no events)
    strategy = "snapshot" if settings.extra.get("controller") else "auto"
    return RedisAdapter(
        service.url,
        dbs=service.extra.get("dbs"),
        strategy=strategy,
        flags_record=_journal_file(service, FLAGS_FILE),
        others=service.extra.get("others"),
        timeout=settings.timeout,
    )


def _recover_redis(path: Path, url: str, restore_data: bool, timeout: float) -> str:
    from .adapters.redis_journal import recover

    return recover(path, url, restore_data, timeout)


def redis_store() -> Store:
    return Store(
        name="redis",
        make_adapter=_redis_adapter,
        providers=_needs_all(
            "redis",
            "redis",
            "redis",
            _providers("redis"),
        ),
        default_image=DEFAULT_IMAGES["redis"],
        recover=_recover_redis,
        how_to_get=(
            "pip install 'pytest-rollback[all]' (ships a redis-server and fakeredis), "
            "or apt-get install redis-server, or pass --rollback-redis-url"
        ),
    )


def _mongo_adapter(service: Service, settings: StoreSettings) -> Rollbackable:
    if "mongomock" in service.extra:
        from .adapters.mongomock import MongomockAdapter

        return MongomockAdapter(service.extra["mongomock"], dbs=service.extra.get("dbs"))
    from .adapters.mongo import MongoAdapter

    # the xdist controller keeps the whole server: it reads no change stream, write counters tell it what moved
    strategy = "counters" if settings.extra.get("controller") else "auto"
    extra = service.extra
    return MongoAdapter(
        service.url, dbs=extra.get("dbs"), strategy=strategy, others=extra.get("others"), timeout=settings.timeout
    )


def _recover_mongo(path: Path, url: str, restore_data: bool, timeout: float) -> str:
    from .adapters.mongo_journal import recover

    return recover(path, url, restore_data, timeout)


def _mongo_embedded(embedded: ProviderFn) -> ProviderFn:
    """The embedded MongoDB provider: pymongo is needed unless mongomock was chosen (it has no use for it)."""
    checked = _needs("mongo", "pymongo", "mongo", embedded)

    def provider(settings: StoreSettings) -> Service:
        return (embedded if settings.extra.get("embedded") == "mongomock" else checked)(settings)

    provider.__doc__ = embedded.__doc__
    return provider


def mongo_store() -> Store:
    lazy = _providers("mongo")
    return Store(
        name="mongo",
        make_adapter=_mongo_adapter,
        providers={
            **_needs_all("mongo", "pymongo", "mongo", {"external": lazy["external"], "docker": lazy["docker"]}),
            "local": _needs("mongo", "pymongo", "mongo", lazy["local"]),
            "embedded": _mongo_embedded(lazy["embedded"]),
        },
        default_image=DEFAULT_IMAGES["mongo"],
        recover=_recover_mongo,
        how_to_get=(
            "pip install 'pytest-rollback[all]' (mongomock, in process) or 'pytest-rollback[secantusdb]' "
            "(a MongoDB-compatible server), or put mongod on PATH, or pass --rollback-mongo-url"
        ),
    )


def _elasticsearch_adapter(service: Service, settings: StoreSettings) -> Rollbackable:
    from .adapters.elasticsearch import ElasticsearchAdapter

    ident = None
    journal = service.extra.get("journal")
    if journal:  # its id names its snapshots: on disk before it makes any
        from .adapters.elasticsearch_journal import write_ident

        ident = uuid.uuid4().hex[:8]
        who = settings.worker or ("controller" if settings.extra.get("controller") else "run")
        write_ident(Path(journal), ident, who)
    prefix = str(service.extra.get("prefix") or "")
    return ElasticsearchAdapter(service.url, prefix=prefix, ident=ident, timeout=settings.timeout)


def _recover_elasticsearch(path: Path, url: str, restore_data: bool, timeout: float) -> str:
    from .adapters.elasticsearch_journal import recover

    return recover(path, url, restore_data, timeout)


def elasticsearch_store() -> Store:
    return Store(
        name="elasticsearch",
        make_adapter=_elasticsearch_adapter,
        providers=_needs_all(
            "elasticsearch",
            "elasticsearch",
            "elasticsearch",
            _providers("elasticsearch"),
        ),
        default_image=DEFAULT_IMAGES["elasticsearch"],
        recover=_recover_elasticsearch,
        how_to_get=(
            "pip install 'pytest-rollback[all]' (noida-db, an Elasticsearch-compatible server), "
            "or put elasticsearch on PATH, or pass --rollback-elasticsearch-url"
        ),
    )


def pytest_rollback_register(registry: Registry) -> None:
    registry.add_store(redis_store())
    registry.add_store(mongo_store())
    registry.add_store(elasticsearch_store())
