"""The built-in adapters pass the conformance suite (``pytest_rollback.testing``) on real servers.

One store driver per kind of store writes the suite's keys as the code under
test would (a Redis string, a Mongo document, an Elasticsearch document) and
reads the whole visible state back. Then two inner runs show what an adapter
author sees: a correct adapter passes every test, a broken one fails with the
guarantee it broke and what differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import INNER, _settings, clear_elasticsearch, clear_mongo

from pytest_rollback.adapters.memory import DictAdapter
from pytest_rollback.api import Service
from pytest_rollback.testing import AdapterConformance, MappingStore

# -- store drivers ----------------------------------------------------------------


class RedisStore:
    """Strings in database 0; the state is every key of every database (type, value, expiry)."""

    def __init__(self, url: str) -> None:
        from pytest_rollback.adapters.redis import parse_url

        p = parse_url(url)
        self.host, self.port = p["host"], p["port"]
        self.clients: dict[int, Any] = {}
        self.users: set[str] = set()

    def client(self, db: int) -> Any:
        import redis

        if db not in self.clients:
            self.clients[db] = redis.Redis(host=self.host, port=self.port, db=db)
        return self.clients[db]

    def write(self, key: str, value: str) -> None:
        self.client(0).set(key, value)

    def delete(self, key: str) -> None:
        self.client(0).delete(key)

    def read_all(self) -> dict[Any, Any]:
        from pytest_rollback.adapters.redis import redis_state, server_objects

        state: dict[Any, Any] = redis_state(self.client)  # every database that has keys (INFO keyspace)
        state.update(server_objects(self.client(0)))  # ACL users, functions
        return state

    def change_name(self, key: str) -> str:
        return f"0:{key}"

    def write_rewritable(self, key: str) -> None:
        """A HyperLogLog: PFADD leaves its cached count invalid."""
        self.client(0).pfadd(key, *range(100))

    def read_rewriting(self, key: str) -> None:
        """PFCOUNT writes the count it computed into the HyperLogLog's bytes (no keyspace event)."""
        self.client(0).pfcount(key)

    def write_object(self, name: str, value: str) -> None:
        """An ACL user (kept beside the data, shown by ACL LIST); close() deletes it."""
        self.users.add(name)
        rules = ("on", "resetpass", f">{value}", "resetkeys", f"~{value.encode().hex()}:*")
        self.client(0).execute_command("ACL", "SETUSER", name, *rules)

    def delete_object(self, name: str) -> None:
        self.client(0).execute_command("ACL", "DELUSER", name)

    def close(self) -> None:
        if self.users:  # the server is the session's: the next test starts with its users only
            self.client(0).execute_command("ACL", "DELUSER", *sorted(self.users))
        for client in self.clients.values():
            client.close()


class FakeRedisStore(RedisStore):
    """fakeredis keeps ACL users, but its ACL SETUSER ignores resetpass: they cannot be put back there."""

    write_object = None  # type: ignore[assignment]
    delete_object = None  # type: ignore[assignment]


class MongoStore:
    """Documents ``{_id: key, value}`` in ``<db>.items`` (``conformance.items`` unless told another
    database); the state is every user collection."""

    COLL = "items"
    HIDDEN = ("admin", "local", "config", "__pytest_rollback__")

    def __init__(self, client: Any, db: str = "conformance") -> None:
        self.client = client
        self.DB = db
        self.items = client[self.DB][self.COLL]

    def write(self, key: str, value: str) -> None:
        self.items.replace_one({"_id": key}, {"_id": key, "value": value}, upsert=True)

    def delete(self, key: str) -> None:
        self.items.delete_one({"_id": key})

    def read_all(self) -> dict[Any, Any]:
        state: dict[Any, Any] = {}
        for db in self.client.list_database_names():
            if db in self.HIDDEN:
                continue
            for name in self.client[db].list_collection_names():
                coll = self.client[db][name]
                options = self._options(db, name)
                state[("collection", db, name)] = (
                    repr(options),
                    sorted(repr(sorted(i.items())) for i in coll.list_indexes()) if "viewOn" not in options else [],
                )
                if "viewOn" in options:
                    continue
                docs = list(coll.find({}))
                if options.get("capped"):
                    state[("order", db, name)] = [repr(doc["_id"]) for doc in docs]
                for doc in docs:
                    state[("doc", db, name, repr(doc["_id"]))] = {k: v for k, v in doc.items() if k != "_id"}
        return state

    def _options(self, db: str, name: str) -> dict[str, Any]:
        return dict(next(iter(self.client[db].list_collections(filter={"name": name})), {}).get("options", {}))

    def change_name(self, key: str) -> str:
        return f"{self.DB}.{self.COLL}:{key!r}"

    # the optional capabilities of pytest_rollback.testing (MongoDB, issue 12)
    def make_empty_container(self, name: str) -> None:
        """SecantusDB makes the collection of an update that matches nothing, in no change event."""
        self.client[self.DB][name].update_one({"_id": "no such document"}, {"$set": {"x": 1}})
        assert name in self.client[self.DB].list_collection_names(), "the server no longer does this"

    def drop_container(self, name: str) -> None:
        self.client[self.DB].drop_collection(name)

    def make_bounded(self, name: str, limit: int) -> None:
        self.client[self.DB].create_collection(name, capped=True, size=1 << 20, max=limit)

    def append(self, name: str, value: str) -> None:
        self.client[self.DB][name].insert_one({"value": value})

    def make_view(self, name: str, definition: str) -> None:
        self.client[self.DB].create_collection(name, viewOn=self.COLL, pipeline=[{"$match": {"value": definition}}])


class MongomockStore(MongoStore):
    """mongomock has no capped collections, no views and no list_collections options: none of those cases."""

    make_empty_container = drop_container = make_bounded = append = make_view = None  # type: ignore[assignment]

    def _options(self, db: str, name: str) -> dict[str, Any]:
        return {}


class ElasticsearchStore:
    """Documents ``{value}`` in the index ``conformance``; the state is every visible index and document."""

    INDEX = "conformance"

    def __init__(self, client: Any) -> None:
        self.client = client

    def write(self, key: str, value: str) -> None:
        self.client.index(index=self.INDEX, id=key, document={"value": value})

    def delete(self, key: str) -> None:
        self.client.delete(index=self.INDEX, id=key)

    def read_all(self) -> dict[Any, Any]:
        state: dict[Any, Any] = {}
        indices = self.client.indices.get(index="*", expand_wildcards="open,closed", flat_settings=True)
        indices = {n: body for n, body in indices.items() if not n.startswith(".")}  # noida-db: hidden ones too
        metadata = self.client.cluster.state(metric="metadata")["metadata"]["indices"]
        opened = [n for n in indices if metadata[n]["state"] == "open"]
        for name, body in indices.items():  # what code under test sees: no hidden index
            settings = {k: v for k, v in body["settings"].items() if k not in ("index.uuid", "index.creation_date")}
            state[("index", name)] = (body.get("mappings"), body.get("aliases"), settings, metadata[name]["state"])
        if opened:
            self.client.indices.refresh(index=",".join(opened))
            hits = self.client.search(index=",".join(opened), size=10_000, sort=["_doc"])["hits"]["hits"]
            for hit in hits:
                state[("doc", hit["_index"], hit["_id"])] = hit["_source"]
        for item in self.client.indices.get_index_template().get("index_templates", []):
            state[("template", item["name"])] = item["index_template"]
        return state

    def define(self, name: str, value: str | None) -> None:
        """An index template named ``name`` (its ``_meta`` holds ``value``)."""
        if value is None:
            self.client.indices.delete_index_template(name=name)
        else:
            self.client.indices.put_index_template(name=name, index_patterns=[f"{name}-*"], meta={"value": value})

    def close(self, key: str) -> None:
        self.client.indices.close(index=self.INDEX)

    def reopen(self, key: str) -> None:
        self.client.indices.open(index=self.INDEX)

    def change_name(self, key: str) -> str:
        return f"{self.INDEX}/{key}"


# -- the built-in adapters -------------------------------------------------------------


class TestDictAdapter(AdapterConformance):
    # DictAdapter has neither release() nor close() (nothing to free): those checks do not apply,
    # rather than being skipped in this suite, whose skips mean "no such server here".
    test_release = None  # type: ignore[assignment]
    test_close = None  # type: ignore[assignment]

    @pytest.fixture
    def data(self) -> dict[Any, Any]:
        return {}

    @pytest.fixture
    def store(self, data: dict[Any, Any]) -> MappingStore:
        return MappingStore(data)

    @pytest.fixture
    def adapter(self, data: dict[Any, Any]) -> DictAdapter:
        return DictAdapter("memory", data)


@pytest.fixture(scope="module")
def fake_redis() -> Iterator[Service]:
    """fakeredis over TCP, as the ``embedded`` provider serves it (the adapter then snapshots)."""
    from pytest_rollback.services import embedded

    service = embedded.redis(_settings())
    yield service
    service.stop()


class TestRedisAdapter(AdapterConformance):
    """Tracking (keyspace events) and snapshot on redis-server; snapshot and the in-process journal on fakeredis."""

    @pytest.fixture(params=["tracking", "snapshot", "fakeredis", "fakeredis-journal"])
    def server(self, request: pytest.FixtureRequest) -> tuple[str, str]:
        if request.param.startswith("fakeredis"):
            url = request.getfixturevalue("fake_redis").url
            import redis

            with redis.Redis.from_url(url) as client:
                client.flushall()
            return url, "auto" if request.param == "fakeredis" else "journal"
        return request.getfixturevalue("redis_url"), request.param

    @pytest.fixture
    def store(self, server: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[RedisStore]:
        fake = request.node.callspec.params["server"].startswith("fakeredis")
        driver = (FakeRedisStore if fake else RedisStore)(server[0])
        yield driver
        driver.close()

    @pytest.fixture
    def adapter(self, server: tuple[str, str], store: RedisStore, request: pytest.FixtureRequest) -> Iterator[Any]:
        from pytest_rollback.adapters.redis import RedisAdapter
        from pytest_rollback.adapters.redis_inprocess import InProcessRedisAdapter

        if server[1] == "journal":  # what the embedded provider's adapter is
            fake = request.getfixturevalue("fake_redis")
            adapter: Any = InProcessRedisAdapter(server[0], fake.extra["fakeredis"])
            yield adapter
            adapter.close()
            return
        adapter = RedisAdapter(server[0], strategy=server[1])
        if server[1] == "auto":
            assert adapter.strategy == "snapshot", "fakeredis has no keyspace events: the adapter snapshots"
        yield adapter
        adapter.close()


#: a database name per Mongo conformance test (see TestMongoAdapter.store)
_MONGO_DBS = itertools.count()


class TestMongoAdapter(AdapterConformance):
    """Both strategies on SecantusDB (a MongoDB-compatible server)."""

    @pytest.fixture(params=["tracking", "counters"])
    def strategy(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def store(self, secantus: Service) -> Iterator[MongoStore]:
        import pymongo

        client: Any = pymongo.MongoClient(secantus.url)
        clear_mongo(client)
        # A database no earlier test used: ``top`` keeps a namespace's counters after its database is
        # dropped, so what the counters strategy sees must not hang on which tests ran before on this
        # server (under xdist, any of them or none)
        yield MongoStore(client, f"conformance{next(_MONGO_DBS)}")
        clear_mongo(client)
        client.close()

    @pytest.fixture
    def adapter(self, secantus: Service, store: MongoStore, strategy: str) -> Iterator[Any]:
        from pytest_rollback.adapters.mongo import MongoAdapter

        adapter = MongoAdapter(secantus.url, strategy=strategy)
        yield adapter
        adapter.close()


class TestMongomockAdapter(AdapterConformance):
    @pytest.fixture
    def store(self) -> MongoStore:
        import mongomock

        return MongomockStore(mongomock.MongoClient())

    @pytest.fixture
    def adapter(self, store: MongoStore) -> Any:
        from pytest_rollback.adapters.mongomock import MongomockAdapter

        adapter = MongomockAdapter(store.client)
        yield adapter
        adapter.close()


class TestElasticsearchAdapter(AdapterConformance):
    """On noida-db (an Elasticsearch-compatible server); one HTTP request per write."""

    many_writes = 500

    @pytest.fixture
    def store(self, noida: Service) -> Iterator[ElasticsearchStore]:
        from elasticsearch import Elasticsearch

        client = Elasticsearch(noida.url, request_timeout=60)
        clear_elasticsearch(client)
        yield ElasticsearchStore(client)
        clear_elasticsearch(client)
        client.close()

    @pytest.fixture
    def adapter(self, noida: Service, store: ElasticsearchStore) -> Iterator[Any]:
        from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter

        adapter = ElasticsearchAdapter(noida.url)
        yield adapter
        adapter.close()


# -- what an adapter author sees ----------------------------------------------------------

#: An in-memory adapter with every optional method, as an author would write it.
MEMORY_ADAPTER = '''
import copy

import pytest

from pytest_rollback import Changes, Observation, RollbackError
from pytest_rollback.testing import AdapterConformance, MappingStore


class Memory:
    def __init__(self, name, data):
        self.name = name
        self.data = data
        self.closed = False

    def checkpoint(self, label):
        return {"state": copy.deepcopy(self.data)}

    def rollback(self, token):
        self.data.clear()
        self.data.update(copy.deepcopy(token["state"]))

    def release(self, token):
        token.clear()

    def observe(self):
        return Observation(self.name, copy.deepcopy(self.data))

    def changes(self, token):
        then, now = token["state"], self.data
        return Changes(
            self.name,
            added=frozenset(now.keys() - then.keys()),
            modified=frozenset(k for k in now.keys() & then.keys() if now[k] != then[k]),
            removed=frozenset(then.keys() - now.keys()),
        )

    def close(self):
        self.closed = True


class Broken(Memory):
    pass  # BROKEN


class TestMemory(AdapterConformance):
    @pytest.fixture
    def store(self):
        return MappingStore({})

    @pytest.fixture
    def adapter(self, store):
        return Broken("memory", store.data)
'''

def run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Run the inner module ``source`` (``test_memory.py``) with pytest in this process."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_memory=source)
    return pytester.runpytest(*INNER, *args)


SUITE_SIZE = len([name for name in dir(AdapterConformance) if name.startswith("test_")])
#: tests that need an optional StoreDriver capability the MappingStore of the inner runs lacks: skipped for it
DRIVER_ONLY = len([n for n in dir(AdapterConformance) if getattr(getattr(AdapterConformance, n), "driver_needs", ())])
DRIVER_OPTIONAL = ("test_a_read_that_rewrites_a_value_is_undone", "test_objects_beside_the_data_are_put_back")
SKIPPED_FOR_MAPPINGS = DRIVER_ONLY + len(DRIVER_OPTIONAL)


def test_a_correct_adapter_passes_every_test(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, MEMORY_ADAPTER, "-rs")
    assert SUITE_SIZE - SKIPPED_FOR_MAPPINGS == 19
    result.assert_outcomes(passed=SUITE_SIZE - SKIPPED_FOR_MAPPINGS, skipped=SKIPPED_FOR_MAPPINGS)
    result.stdout.fnmatch_lines(["SKIPPED * the store driver has no write_rewritable(), read_rewriting() *"])


def test_only_what_the_adapter_has_is_checked(pytester: pytest.Pytester) -> None:
    """An adapter with only the required members: the optional methods' tests are skipped, saying why."""
    minimal = MEMORY_ADAPTER.replace("    pass  # BROKEN", "    release = observe = changes = close = None")
    result = run_inner(pytester, minimal, "-rs")
    skipped = 5 + SKIPPED_FOR_MAPPINGS  # observe() is needed by two tests
    result.assert_outcomes(passed=SUITE_SIZE - skipped, skipped=skipped)
    result.stdout.fnmatch_lines(["SKIPPED * the adapter has no changes()"])


BROKEN = {
    "rollback forgets what was added": (
        """
    def rollback(self, token):
        self.data.update(copy.deepcopy(token["state"]))
        """,
        ["test_exact_restore", "test_exact_restore_of_the_initial_state", "test_many_writes"],
        [
            "*exact restore: after rollback(token) the store differs from the checkpoint (2 differences):",
            "*  key 'newtesta': absent at checkpoint, now 'added by test'",
            "*  key 'newtestb': absent at checkpoint, now ''",
        ],
    ),
    "checkpoint keeps the live dict, not a copy": (
        """
    def checkpoint(self, label):
        return {"state": self.data}
        """,
        ["test_untouched_restore", "test_exact_restore", "test_same_token_again_and_again"],
        [
            "*untouched store: rollback(token) after no writes changed the store (12 differences):",
            "*  key 'k000': 'value 0' at checkpoint, now absent",
            "*  key 'k002': 'värde ☃' at checkpoint, now absent",
            "*  ... and 2 more",
        ],
    ),
    "a token is used up by its first rollback": (
        """
    def rollback(self, token):
        super().rollback(token)
        token["state"] = {}
        """,
        ["test_same_token_again_and_again", "test_nested_checkpoints"],
        ["*same token: after rollback number 2 to the same token the store differs from the checkpoint (12 diff*"],
    ),
    "a token refuses a second rollback": (
        """
    def rollback(self, token):
        if token.get("used"):
            raise RollbackError("that checkpoint was used already")
        super().rollback(token)
        token["used"] = True
        """,
        ["test_same_token_again_and_again", "test_untouched_restore"],
        [
            "*same token: rollback number 2 to the same token raised RollbackError('that checkpoint was used already')",
        ],
    ),
    "bookkeeping kept in the store": (
        """
    def checkpoint(self, label):
        self.data["__checkpoints__"] = self.data.get("__checkpoints__", 0) + 1
        return super().checkpoint(label)
        """,
        ["test_no_trace", "test_adapter_protocol"],
        [
            "*no trace: checkpoint() left something in the store (1 difference):",
            "*  key '__checkpoints__': absent before, now 1",
        ],
    ),
    "an empty store gives a None token": (
        """
    def checkpoint(self, label):
        return super().checkpoint(label) if self.data else None
        """,
        ["test_exact_restore_of_the_initial_state", "test_plugin_call_sequence"],
        ["*adapter protocol: checkpoint(None) returned None; the plugin takes None for 'no checkpoint'*"],
    ),
    "changes compares with the newest checkpoint, not the token": (
        """
    def checkpoint(self, label):
        self.newest = token = super().checkpoint(label)
        return token

    def changes(self, token):
        return super().changes(self.newest)
        """,
        ["test_changes"],
        [
            "*changes: changes(outer), with writes before and after a newer one does not match the writes (*",
            "*  key 'added1' (named 'added1') was added, but changes lists it in no set",
        ],
    ),
    "release restores the token": (
        """
    def release(self, token):
        self.rollback(token)
        """,
        ["test_release"],
        [
            "*release: release(token) undid writes: it must keep them (a test marked rollback('other') *",
            "*  key 'k010': 'written after rollback(later)' before, now 'value 10'",
        ],
    ),
}


@pytest.mark.parametrize("bug", list(BROKEN))
def test_a_broken_adapter_fails_with_the_guarantee_and_the_difference(pytester: pytest.Pytester, bug: str) -> None:
    code, failing, lines = BROKEN[bug]
    result = run_inner(pytester, MEMORY_ADAPTER.replace("    pass  # BROKEN", code.strip("\n")), "-q")
    failed = {r.nodeid.split("::")[-1] for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed}
    assert set(failing) <= failed, result.stdout.str()
    assert "test_store_fixture_sees_writes" not in failed
    result.stdout.fnmatch_lines(lines)
    assert "Traceback" not in result.stdout.str()
