"""The public fixtures: services, clients and the ``rollback`` handle.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Hashable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .api import Changes, RollbackError, Service, StoreBroken, StoreFault, StoreUnavailable
from .engine import USES_BROKEN_STORE, Checkpoint, Engine
from .markers import parse_rollback_marker

if TYPE_CHECKING:
    import elasticsearch
    import pymongo
    import pymongo.database
    import redis
    import redis.asyncio

    from .explore import Exploration
    from .plugin import RollbackSession


def _session(request: pytest.FixtureRequest) -> RollbackSession:
    from .plugin import get_session

    return get_session(request.config)


def _service(request: pytest.FixtureRequest, store: str) -> Service:
    try:
        return _session(request).service(store)
    except StoreUnavailable as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no "During handling of ..." chain


@pytest.fixture(scope="session")
def redis_service(request: pytest.FixtureRequest) -> Service:
    """The session's Redis server: ``.provider``, ``.url``, ``.host``, ``.port``, ``.version``.

    Started on first use (Docker, else a local ``redis-server``, else fakeredis in
    process) or taken from ``--rollback-redis-url``. Every test that runs after it
    started is rolled back, whether it asked for a Redis fixture or not.
    """
    return _service(request, "redis")


@pytest.fixture(scope="session")
def redis_client(redis_service: Service) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` client on this worker's database of the session's server.

    Session-scoped, so fixtures of every scope can seed data with it: what a
    session fixture writes is there for every test, what a test writes is gone
    after it.
    """
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_service.url)
    yield client
    client.close()


@pytest.fixture
def async_redis_client(redis_service: Service) -> Iterator[redis.asyncio.Redis]:
    """A ``redis.asyncio.Redis`` client on the same server and database as ``redis_client``.

    Function-scoped, so its connections belong to the test's event loop (use it
    from ``async def`` tests run by pytest-asyncio or anyio).
    """
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_service.url)
    yield client
    # The test's event loop is gone by now: drop the connections without awaiting.
    for conn in list(getattr(client.connection_pool, "_available_connections", [])) + list(
        getattr(client.connection_pool, "_in_use_connections", [])
    ):
        with contextlib.suppress(Exception):
            conn._close()


@pytest.fixture(scope="session")
def mongo_service(request: pytest.FixtureRequest) -> Service:
    """The session's MongoDB server: ``.provider``, ``.url``, ``.host``, ``.port``, ``.version``.

    Started on first use (Docker as a single-node replica set, else a local
    ``mongod`` as one, else the embedded default: SecantusDB if installed, else
    mongomock in process) or taken from ``--rollback-mongo-url``. ``.extra["db"]``
    is this worker's database. Every test that runs after it started is rolled back.
    """
    return _service(request, "mongo")


def mongo_client_of(service: Any, adapter: Any = None) -> Any:
    """A ``pymongo.MongoClient`` of ``service`` (a ``mongomock.MongoClient`` of its store on mongomock),
    whose updates ``adapter`` notes when it has a ``listener()``."""
    if "mongomock" in service.extra:
        import mongomock

        return mongomock.MongoClient(_store=service.extra["mongomock"]._store)
    import pymongo

    listener = getattr(adapter, "listener", None)
    return pymongo.MongoClient(service.url, event_listeners=[listener()] if listener is not None else [])


@pytest.fixture(scope="session")
def mongo_client(request: pytest.FixtureRequest, mongo_service: Service) -> Iterator[pymongo.MongoClient[Any]]:
    """A ``pymongo.MongoClient`` of the session's server (a ``mongomock.MongoClient`` on mongomock).

    Session-scoped, so fixtures of every scope can seed data with it. The adapter
    notes the updates this client sends: a test whose updates all went through it
    to collections that existed costs no list of collections at its rollback (see
    "MongoDB" in How it works).
    """
    client = mongo_client_of(mongo_service, _session(request).engine.adapters.get("mongo"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def mongo_db(mongo_client: pymongo.MongoClient[Any], mongo_service: Service) -> pymongo.database.Database[Any]:
    """This worker's database: ``test`` by default (the URL's database if one is configured).

    Under pytest-xdist each worker gets its own (``test_gw0``, ``test_gw1``, ...)
    on a shared server, and rollback covers only that database.
    """
    return mongo_client[mongo_service.extra.get("db") or "test"]


@pytest.fixture
def async_mongo_client(mongo_service: Service) -> Iterator[pymongo.AsyncMongoClient[Any]]:
    """A ``pymongo.AsyncMongoClient`` of the same server as ``mongo_client``.

    Function-scoped: the client binds to the event loop of the test that uses
    it (pytest-asyncio or anyio) and is closed on that loop afterwards. Not
    available on mongomock, which has no asyncio client.
    """
    if "mongomock" in mongo_service.extra:
        pytest.fail(
            "pytest-rollback: async_mongo_client needs a MongoDB server, and mongomock has no asyncio client; "
            "install 'pytest-rollback[secantusdb]' or pass --rollback-mongo-url",
            pytrace=False,
        )

    import pymongo as pm

    client: pm.AsyncMongoClient[Any] = pm.AsyncMongoClient(mongo_service.url)
    yield client
    _close_on_its_loop(getattr(client, "_loop", None), client.close)


def _close_on_its_loop(loop: Any, close: Any) -> None:
    """Run ``close()`` on the event loop the client was used on (a fresh one if it never was)."""
    import asyncio

    with contextlib.suppress(Exception):
        if loop is None:  # never used: nothing is bound to a loop yet
            asyncio.run(close())
        elif not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(close())


@pytest.fixture(scope="session")
def elasticsearch_service(request: pytest.FixtureRequest) -> Service:
    """The session's Elasticsearch server: ``.provider``, ``.url``, ``.host``, ``.port``, ``.version``.

    Started on first use (Docker, else a local ``elasticsearch``, else noida-db,
    an Elasticsearch-compatible server from a pip package) or taken from
    ``--rollback-elasticsearch-url``. ``.extra["prefix"]`` is the index-name
    prefix this worker owns on a server the xdist workers share (an external
    one, or the run's container), ``""`` otherwise. Every test that runs after it started is rolled back.
    """
    return _service(request, "elasticsearch")


@pytest.fixture(scope="session")
def es_client(request: pytest.FixtureRequest, elasticsearch_service: Service) -> Iterator[elasticsearch.Elasticsearch]:
    """An ``elasticsearch.Elasticsearch`` client of the session's server (elasticsearch-py 8 or 9).

    Session-scoped, so fixtures of every scope can create indices and seed
    documents with it. The adapter reads the answers to its writes (each names
    the document and its sequence number): an index written only through this
    client is put back document by document where that costs less than a clone
    of it (see "Elasticsearch" in How it works).
    """
    from elasticsearch import Elasticsearch

    adapter = _session(request).engine.adapters.get("elasticsearch")
    node_class = getattr(adapter, "node_class", None)
    extra: dict[str, Any] = {"node_class": node_class()} if node_class is not None else {}
    client = Elasticsearch(elasticsearch_service.url, request_timeout=60, **extra)
    yield client
    client.close()


@pytest.fixture
def async_es_client(elasticsearch_service: Service) -> Iterator[elasticsearch.AsyncElasticsearch]:
    """An ``elasticsearch.AsyncElasticsearch`` client of the same server as ``es_client``.

    Function-scoped: its connections belong to the event loop of the test that
    uses it (pytest-asyncio or anyio), and are closed on that loop afterwards.
    Needs aiohttp (in ``pytest-rollback[all]``).
    """
    from elasticsearch import AsyncElasticsearch

    try:
        import aiohttp  # noqa: F401
    except ImportError:
        pytest.fail(
            "pytest-rollback: async_es_client needs aiohttp (pip install 'pytest-rollback[all]' or aiohttp)",
            pytrace=False,
        )
    client = AsyncElasticsearch(elasticsearch_service.url, request_timeout=60)
    yield client
    _close_on_its_loop(_loop_of(client), client.close)


def _loop_of(client: Any) -> Any:
    """The event loop an async Elasticsearch client's connections were opened on (None if unused)."""
    pool = getattr(getattr(client, "transport", None), "node_pool", None)
    for node in pool.all() if pool is not None else []:
        loop = getattr(node, "_loop", None) or getattr(getattr(node, "session", None), "_loop", None)
        if loop is not None:
            return loop
    return None


NO_SUBTESTS = (
    "pytest-rollback: rollback.branch(subtest=True) needs pytest's subtests fixture: "
    "use pytest>=9 or install pytest-subtests"
)


class RollbackHandle:
    """What the ``rollback`` fixture gives a test: checkpoints, restores, branches, changes and exploration."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._session = _session(request)
        self._engine = self._session.engine
        self._test_level: Checkpoint | None = getattr(request.node, "_rollback_checkpoint", None)

    @property
    def stores(self) -> list[str]:
        """Names of the stores being rolled back right now."""
        return list(self._engine.adapters)

    def checkpoint(self, label: str | None = None) -> Checkpoint:
        """Mark the current state of every active store; ``restore`` brings it back."""
        self._require_enabled()
        with broken_fails():
            cp = self._engine.push(label or "checkpoint", "checkpoint")
        return cp

    def restore(self, checkpoint: Checkpoint) -> None:
        """Roll every store back to ``checkpoint``; it stays usable, later checkpoints are dropped."""
        self._require_enabled()
        with broken_fails():
            problems = self._engine.restore(checkpoint)
        if problems:
            raise RollbackError("; ".join(problems))

    @contextlib.contextmanager
    def branch(self, label: str | None = None, *, subtest: bool = False) -> Generator[Checkpoint, None, None]:
        """``with rollback.branch():`` — whatever the block writes is undone when it exits.

        With ``subtest=True`` the block is also a subtest of pytest's ``subtests``
        fixture (pytest 9, or the pytest-subtests plugin): a failure inside it is
        reported as that subtest's, named by ``label``, and the test goes on with
        its next branch, from the same state.
        """
        if not subtest:
            with self._branch(label) as cp:
                yield cp
            return
        with self._subtests().test(msg=label), self._branch(label) as cp:
            yield cp

    @contextlib.contextmanager
    def _branch(self, label: str | None) -> Generator[Checkpoint, None, None]:
        cp = self.checkpoint(label or "branch")
        try:
            yield cp
        finally:
            if cp.alive:
                with broken_fails():
                    problems = self._engine.pop(cp)
                if problems:
                    raise RollbackError("; ".join(problems))

    def _subtests(self) -> Any:
        try:
            return self._request.getfixturevalue("subtests")
        except pytest.FixtureLookupError:
            pass
        pytest.fail(NO_SUBTESTS, pytrace=False)  # outside the except: no "During handling of ..." chain

    def changes(self, since: Checkpoint | None = None) -> dict[str, Changes]:
        """Per store: what was added, modified and removed since ``since`` (default: the test's start)."""
        self._require_enabled()
        base = since or self._test_level
        if base is None:
            raise RollbackError("pytest-rollback: this test has no checkpoint (rollback is disabled for it)")
        return self._engine.changes(base)

    def explore(
        self,
        actions: Any,
        invariants: Any = (),
        *,
        max_depth: int = 5,
        budget: int | None = None,
        key: Callable[[], Hashable] | None = None,
        observe: bool = True,
    ) -> Exploration:
        """Run every sequence of up to ``max_depth`` actions from the current state, checking the invariants.

        ``actions``: callables (or ``pytest_rollback.Action(fn, when=..., name=...)``,
        enabled only while ``when()`` is true). ``invariants``: callables that raise
        ``AssertionError`` or return ``False`` when violated. Breadth first, every
        state reached is checkpointed and the stores are rolled back to it before the
        next action; a state seen before (same ``observe()`` of every store, and same
        ``key()``) is not explored again. Stops after ``max_depth`` actions, or
        ``budget`` sequences tried. Returns the counts (:class:`Exploration`); raises
        :class:`InvariantViolated` (an ``AssertionError``) with a shortest violating
        sequence, what each step changed per store and a snippet that replays it.
        The stores are back at the state they had before it either way.
        """
        from .explore import Explorer, check_arguments, parse_actions, terminal_writer

        self._require_enabled()
        try:
            steps = parse_actions(actions)
            checks = check_arguments(invariants, max_depth, budget, key, observe)
        except ValueError as exc:
            message = str(exc)
        else:
            node = self._request.node
            explorer = Explorer(
                self._engine, steps, checks, max_depth=max_depth, budget=budget, key=key, observe=observe,
                label=f"explore {node.nodeid}", write=terminal_writer(node.config, self._session._write_line),
                test=node.nodeid,
            )
            with broken_fails():
                return explorer.run()
        pytest.fail(message, pytrace=False)  # outside the except: no "During handling of ..." chain

    def _require_enabled(self) -> None:
        if not self._engine.enabled:
            raise RollbackError("pytest-rollback: rollback is disabled (--no-rollback); checkpoints are not available")


@pytest.fixture
def rollback(request: pytest.FixtureRequest) -> RollbackHandle:
    """Control rollback from inside a test.

    ``rollback.checkpoint(label=None)`` marks the state of every active store,
    ``rollback.restore(checkpoint)`` goes back to it, ``with rollback.branch(): ...``
    undoes the block's writes on exit (``branch(label, subtest=True)`` also
    reports the block as a subtest), and ``rollback.changes(since=None)`` tells
    per store what was added, modified or removed since the test began.
    ``rollback.explore(actions, invariants, max_depth=5)`` runs every sequence of
    actions from the current state and reports a shortest one that breaks an invariant.
    """
    return RollbackHandle(request)


def begin_test(session: RollbackSession, item: pytest.Item) -> None:
    """Checkpoint every active store before the test's own fixtures; roll back after them.

    Called by the session's hooks when the first fixture of function scope of ``item`` is set up
    (every fixture of a wider scope is set up by then), or after its set-up when it has none. The
    rollback is the first finalizer registered on the item, so it runs after every fixture of the
    test has ended. Not an autouse fixture: pytest's cost of one made about two thirds of what the
    plugin cost a test that touches no store.
    """
    engine = session.engine
    if not engine.enabled:
        session.branches.start(item)
        return
    session.register()
    marker = parse_rollback_marker(item, session.registry.names())
    if engine.broken:
        _refuse_broken_stores(item, engine, marker.stores)
    session.branches.start(item)  # a branch that cannot start fails or skips here
    if not marker.enabled or marker.stores:
        _hold_module_level(session, item, engine)
    if not marker.enabled:
        engine.forget_kept()  # its writes stay: the last test's state is not this one's
        return
    verify = marker.verify or session.options.verify
    with session.shown.one_line():
        cp = engine.push(f"test {item.nodeid}", "test", verify=verify, reuse=True)
    item._rollback_checkpoint = cp  # type: ignore[attr-defined]
    item._rollback_stores = marker.stores  # type: ignore[attr-defined]  # the stores it rolls back (empty: all)

    def end() -> None:
        with session.shown.one_line():
            problems = session.branches.end(item, cp, marker.stores)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)

    item.addfinalizer(end)


def uses_store(item: pytest.Item, store: str, marked: tuple[str, ...] = ()) -> bool:
    """Whether ``item`` uses ``store``: its fixtures include ``<store>_service`` (every client
    fixture is built on it), or its ``rollback`` marker names the store."""
    return f"{store}_service" in getattr(item, "fixturenames", ()) or store in marked


def _refuse_broken_stores(item: pytest.Item, engine: Engine, marked: tuple[str, ...]) -> None:
    """Fail the test at set-up with one line when it uses a store marked broken."""
    for store, reason in engine.broken.items():
        if uses_store(item, store, marked):
            pytest.fail(USES_BROKEN_STORE.format(store=store, reason=reason), pytrace=False)


@contextlib.contextmanager
def broken_fails() -> Iterator[None]:
    """Turn ``StoreBroken`` and ``StoreFault`` into a one-line failure of the test (the line says it all)."""
    try:
        yield
    except (StoreBroken, StoreFault) as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None  # no "During handling of ..." chain


def _hold_module_level(session: RollbackSession, item: pytest.Item, engine: Engine) -> None:
    """Give the test's module a level of its own, restored when the module ends.

    A test that keeps writes (``enabled=False``, or stores left out of
    ``rollback("name")``) leaves them in the level below it; without a level for
    its module they would outlive the module when the module has no fixture of
    its own.
    """
    module = item.getparent(pytest.Module)
    if module is None:
        return
    held: Checkpoint | None = getattr(module, "_rollback_module_level", None)
    if held is not None and held.alive:
        return
    shown = session.shown
    with shown.one_line():
        cp = engine.push(f"module {module.nodeid} (kept writes)", "module")
    module._rollback_module_level = cp  # type: ignore[attr-defined]

    def pop() -> None:
        problems: list[str] = []
        with shown.one_line(repeat=False):
            problems = engine.pop(cp)
        if problems:
            raise RollbackError("; ".join(problems))

    module.addfinalizer(pop)
