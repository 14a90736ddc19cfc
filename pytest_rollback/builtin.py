"""The built-in stores, registered through the same hook a third party uses."""

from __future__ import annotations

from .api import Rollbackable, Service
from .faults import require
from .options import DEFAULT_IMAGES, StoreSettings
from .registry import ProviderFn, Registry, Store


def _needs(store: str, package: str, extra: str, provider: ProviderFn) -> ProviderFn:
    """``provider``, once ``package`` imports: else one line with the install command, and nothing started."""

    def checked(settings: StoreSettings) -> Service:
        require(store, package, extra)
        return provider(settings)

    checked.__doc__ = provider.__doc__
    return checked


def _needs_all(store: str, package: str, extra: str, providers: dict[str, ProviderFn]) -> dict[str, ProviderFn]:
    return {name: _needs(store, package, extra, provider) for name, provider in providers.items()}


def _redis_adapter(service: Service, settings: StoreSettings) -> Rollbackable:
    from .adapters.redis import RedisAdapter

    return RedisAdapter(
        service.url,
        dbs=service.extra.get("dbs"),
        flags_record=service.extra.get("flags_record"),
        timeout=settings.timeout,
    )


def redis_store() -> Store:
    from .services import docker, embedded, external, local

    return Store(
        name="redis",
        make_adapter=_redis_adapter,
        providers=_needs_all(
            "redis",
            "redis",
            "redis",
            {"external": external.redis, "docker": docker.redis, "local": local.redis, "embedded": embedded.redis},
        ),
        default_image=DEFAULT_IMAGES["redis"],
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

    return MongoAdapter(service.url, dbs=service.extra.get("dbs"), timeout=settings.timeout)


def _mongo_embedded(embedded: ProviderFn) -> ProviderFn:
    """The embedded MongoDB provider: pymongo is needed unless mongomock was chosen (it has no use for it)."""
    checked = _needs("mongo", "pymongo", "mongo", embedded)

    def provider(settings: StoreSettings) -> Service:
        return (embedded if settings.extra.get("embedded") == "mongomock" else checked)(settings)

    provider.__doc__ = embedded.__doc__
    return provider


def mongo_store() -> Store:
    from .services import docker, embedded, external, local

    return Store(
        name="mongo",
        make_adapter=_mongo_adapter,
        providers={
            **_needs_all("mongo", "pymongo", "mongo", {"external": external.mongo, "docker": docker.mongo}),
            "local": _needs("mongo", "pymongo", "mongo", local.mongo),
            "embedded": _mongo_embedded(embedded.mongo),
        },
        default_image=DEFAULT_IMAGES["mongo"],
        how_to_get=(
            "pip install 'pytest-rollback[all]' (mongomock, in process) or 'pytest-rollback[secantusdb]' "
            "(a MongoDB-compatible server), or put mongod on PATH, or pass --rollback-mongo-url"
        ),
    )


def _elasticsearch_adapter(service: Service, settings: StoreSettings) -> Rollbackable:
    from .adapters.elasticsearch import ElasticsearchAdapter

    return ElasticsearchAdapter(service.url, prefix=str(service.extra.get("prefix") or ""), timeout=settings.timeout)


def elasticsearch_store() -> Store:
    from .services import docker, embedded, external, local

    return Store(
        name="elasticsearch",
        make_adapter=_elasticsearch_adapter,
        providers=_needs_all(
            "elasticsearch",
            "elasticsearch",
            "elasticsearch",
            {
                "external": external.elasticsearch,
                "docker": docker.elasticsearch,
                "local": local.elasticsearch,
                "embedded": embedded.elasticsearch,
            },
        ),
        default_image=DEFAULT_IMAGES["elasticsearch"],
        how_to_get=(
            "pip install 'pytest-rollback[all]' (noida-db, an Elasticsearch-compatible server), "
            "or put elasticsearch on PATH, or pass --rollback-elasticsearch-url"
        ),
    )


def pytest_rollback_register(registry: Registry) -> None:
    registry.add_store(redis_store())
    registry.add_store(mongo_store())
    registry.add_store(elasticsearch_store())
