"""The built-in stores, registered through the same hook a third party uses."""

from __future__ import annotations

from .api import Rollbackable, Service
from .options import DEFAULT_IMAGES, StoreSettings
from .registry import Registry, Store


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
        providers={
            "external": external.redis,
            "docker": docker.redis,
            "local": local.redis,
            "embedded": embedded.redis,
        },
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


def mongo_store() -> Store:
    from .services import docker, embedded, external, local

    return Store(
        name="mongo",
        make_adapter=_mongo_adapter,
        providers={
            "external": external.mongo,
            "docker": docker.mongo,
            "local": local.mongo,
            "embedded": embedded.mongo,
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
        providers={
            "external": external.elasticsearch,
            "docker": docker.elasticsearch,
            "local": local.elasticsearch,
            "embedded": embedded.elasticsearch,
        },
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
