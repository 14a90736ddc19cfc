"""Additional servers: a second Redis, MongoDB or Elasticsearch declared in one line of a conftest.py.

::

    # conftest.py
    import pytest_rollback

    pytest_rollback.server("redis", name="redis_modules", image="redis/redis-stack-server:7.4.0-v1")

gives the session fixtures ``redis_modules_service`` and ``redis_modules_client``
(MongoDB: ``<name>_service``, ``<name>_client``, ``<name>_db``; Elasticsearch:
``<name>_service``, ``<name>_client``). The server is a store of its own,
named ``name``: started on first use by the same providers as the built-in one
(Docker runs ``image`` with ``args`` and ``env``; ``local`` and ``embedded``
start a second server of the same kind; ``url`` makes it external), checkpointed
and rolled back around every test once started, selectable in markers
(``@pytest.mark.rollback("redis_modules")``), with its own service line.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import keyword
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .api import Service
    from .options import StoreSettings
    from .registry import Store

#: the stores a server can be declared of
STORES = ("redis", "mongo", "elasticsearch")

BAD_SERVER = "pytest-rollback: server({store!r}, name={name!r}): {what}"


@dataclasses.dataclass(frozen=True)
class Server:
    """A declared server: what :func:`server` returns."""

    store: str
    name: str
    image: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None

    @property
    def fixtures(self) -> tuple[str, ...]:
        """The names of its fixtures: ``<name>_service``, ``<name>_client`` (and ``<name>_db`` for MongoDB)."""
        extra = ("db",) if self.store == "mongo" else ()
        return tuple(f"{self.name}_{kind}" for kind in ("service", "client", *extra))

    def settings_extra(self) -> dict[str, Any]:
        """What the providers read from ``StoreSettings.extra`` for it."""
        extra: dict[str, Any] = {"server": self.name, "args": self.args, "env": dict(self.env)}
        if self.image:
            extra["image"] = self.image
        return extra

    def store_spec(self, base: Store) -> Store:
        """The registry's store for it: the built-in store's providers and adapter, under its own name."""
        from .registry import Store

        name = self.name

        def make_adapter(service: Service, settings: StoreSettings) -> Any:
            adapter = base.make_adapter(service, settings)
            adapter.name = name  # its own store in the engine, markers and reports
            return adapter

        def named(provider: Any) -> Any:
            def provide(settings: StoreSettings) -> Service:
                service: Service = provider(settings)
                service.name = name
                return service

            provide.__doc__ = provider.__doc__
            return provide

        return Store(
            name=name, make_adapter=make_adapter, providers={k: named(p) for k, p in base.providers.items()},
            default_image=self.image or base.default_image, how_to_get=base.how_to_get, recover=base.recover,
        )


def server(
    store: str,
    name: str,
    *,
    image: str | None = None,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    url: str | None = None,
) -> Server:
    """Declare another server of ``store`` (``"redis"``, ``"mongo"`` or ``"elasticsearch"``) named ``name``.

    Call it at the top level of a ``conftest.py`` (or a test module): its
    fixtures are added to that module. ``image``, ``args`` and ``env`` are what
    the Docker provider runs (``args`` are appended to the server's command line:
    ``redis-server``'s, ``mongod``'s); ``url`` points it at a running server
    instead (the external provider, as ``--rollback-<store>-url`` does).
    """
    if store not in STORES:
        raise pytest.UsageError(BAD_SERVER.format(store=store, name=name, what=f"the store must be one of {STORES}"))
    if not name.isidentifier() or keyword.iskeyword(name) or name in STORES:
        raise pytest.UsageError(BAD_SERVER.format(
            store=store, name=name, what="the name must be a Python identifier other than a built-in store's"))
    declared = Server(store, name, image, tuple(str(a) for a in args), tuple(sorted((env or {}).items())), url)
    module = sys._getframe(1).f_globals
    for fixture in _fixtures(declared):
        module[fixture.__name__] = fixture
    return declared


def _fixtures(declared: Server) -> list[Any]:
    """The fixture functions of ``declared``, each named as its fixture."""
    service_name, client_name, *rest = declared.fixtures

    def service(request: pytest.FixtureRequest) -> Service:
        from .fixtures import _service
        from .plugin import get_session

        get_session(request.config).declare(declared)
        return _service(request, declared.name)

    service.__doc__ = f"The {declared.store} server {declared.name!r} declared with pytest_rollback.server()."
    fixtures = [_named(service, service_name)]
    if declared.store == "redis":
        fixtures.append(_named(_redis_client(service_name), client_name))
    elif declared.store == "mongo":
        fixtures.append(_named(_mongo_client(service_name), client_name))
        fixtures.append(_named(_mongo_db(service_name, client_name), rest[0]))
    else:
        fixtures.append(_named(_es_client(service_name), client_name))
    return fixtures


def _named(func: Any, name: str) -> Any:
    func.__name__ = name
    return pytest.fixture(scope="session", name=name)(func)


def _redis_client(service_name: str) -> Any:
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A ``redis.Redis`` client of the declared server (this worker's database)."""
        import redis as redis_py

        service = request.getfixturevalue(service_name)
        made = redis_py.Redis.from_url(service.url)
        yield made
        made.close()

    return client


def _mongo_client(service_name: str) -> Any:
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A ``pymongo.MongoClient`` of the declared server."""
        from .fixtures import mongo_client_of

        made = mongo_client_of(request.getfixturevalue(service_name))
        yield made
        made.close()

    return client


def _mongo_db(service_name: str, client_name: str) -> Any:
    def db(request: pytest.FixtureRequest) -> Any:
        """This worker's database on the declared server."""
        service = request.getfixturevalue(service_name)
        return request.getfixturevalue(client_name)[service.extra.get("db") or "test"]

    return db


def _es_client(service_name: str) -> Any:
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        """An ``elasticsearch.Elasticsearch`` client of the declared server."""
        from elasticsearch import Elasticsearch

        service = request.getfixturevalue(service_name)
        made = Elasticsearch(service.url, request_timeout=60)
        yield made
        made.close()

    return client
