"""The MongoDB adapters, on a real wire-protocol server and on mongomock.

Three backends run the same checks:

* ``tracking``: MongoAdapter on SecantusDB with its change stream (documents
  journaled, only those restored);
* ``counters``: MongoAdapter on SecantusDB told to use the ``top`` write
  counters, as it does on a standalone mongod (touched collections restored whole);
* ``mongomock``: MongomockAdapter in process (touched collections copied and restored).

The property test runs random operation sequences (inserts with every BSON type
and ``_id`` type, updates, replaces, deletes, bulk writes, transactions, collection
create/drop/rename, index create/drop), with a nested checkpoint rolled back to,
released or rolled past, and compares every collection's options, index
specifications and documents (as raw BSON: types and field order) with the state
at the checkpoint. mongomock has no transactions and no ``list_collections``
(options are not compared there): see docs/reference/adapters.md.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import bson
import pymongo
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from conftest import clear_mongo, real_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_rollback.adapters.mongo import MongoAdapter
from pytest_rollback.adapters.mongomock import MongomockAdapter
from pytest_rollback.api import RollbackError, Service

SYSTEM = ("admin", "local", "config", "__pytest_rollback__")
RAW = bson.CodecOptions(document_class=RawBSONDocument)
BACKENDS = ("tracking", "counters", "mongomock")

#: ``_id`` values of many BSON types, and a document holding every other common type.
IDS: list[Any] = [
    ObjectId("650000000000000000000001"), "text-id", 7, Int64(2**40), 3.5, {"a": 1, "b": [1, 2]},
    Binary(b"\x00\xffid", 0), Binary.from_uuid(uuid.UUID(int=5)), datetime.datetime(2024, 5, 1, 12, 0),
    Decimal128("1.10"),
]
#: mongomock keeps documents in a dict keyed by ``_id``: a Decimal128 ``_id`` is unhashable there.
MONGOMOCK_IDS = [i for i in IDS if not isinstance(i, Decimal128)]
ALL_TYPES = {
    "double": 1.25, "string": "snow ☃", "doc": {"nested": {"x": [1, {"y": None}]}}, "array": [1, "two", [3]],
    "binary": Binary(b"\x01\x02", 5), "oid": ObjectId("650000000000000000000009"), "bool": True,
    "date": datetime.datetime(2020, 1, 2, 3, 4, 5, 6000), "null": None, "regex": Regex("^a.*", "i"),
    "code": Code("function() {}"), "int32": 42, "ts": Timestamp(1700000000, 3), "int64": Int64(-(2**50)),
    "dec": Decimal128(Decimal("-0.000")), "min": MinKey(), "max": MaxKey(),
}


class Backend:
    """A client, an adapter factory and a state reader for one backend."""

    def __init__(self, name: str, secantus: Service) -> None:
        self.name = name
        if name == "mongomock":
            import mongomock

            self.client: Any = mongomock.MongoClient()
        else:
            self.client = pymongo.MongoClient(secantus.url)
            clear_mongo(self.client)
        self.url = secantus.url

    def adapter(self, dbs: list[str] | None = None) -> Any:
        if self.name == "mongomock":
            return MongomockAdapter(self.client, dbs=dbs)
        return MongoAdapter(self.url, dbs=dbs, strategy=self.name)

    def client_like(self) -> Any:
        """Another client of the same data (code under test opening its own connection)."""
        if self.name == "mongomock":
            import mongomock

            return mongomock.MongoClient(_store=self.client._store)
        return pymongo.MongoClient(self.url)

    def state(self, only: tuple[str, ...] | None = None) -> dict[Any, Any]:
        c = self.client
        out: dict[Any, Any] = {}
        for db in sorted(c.list_database_names()):
            if db in SYSTEM or (only is not None and db not in only):
                continue
            if self.name == "mongomock":
                infos = [{"name": n} for n in c[db].list_collection_names()]
            else:
                infos = list(c[db].list_collections())
            for info in infos:
                name = info["name"]
                indexes = sorted(
                    repr(sorted((k, repr(v)) for k, v in spec.items() if k not in ("v", "ns")))
                    for spec in c[db][name].list_indexes()
                )
                if self.name == "mongomock":
                    docs = [bson.encode(d) for d in c[db][name].find({})]
                else:
                    docs = [d.raw for d in c[db].get_collection(name, codec_options=RAW).find({})]
                out[(db, name)] = (repr(sorted(info.get("options", {}).items())), indexes, sorted(docs))
        return out

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def real_mongod() -> Iterator[Service]:
    """A real mongod (replica set of one) from Docker or PATH, where this machine has either."""
    from pytest_rollback.options import DEFAULT_IMAGES
    from pytest_rollback.services import docker, local

    yield from real_server("mongo", DEFAULT_IMAGES["mongo"], (docker.mongo, local.mongo))


@pytest.fixture(params=[*BACKENDS, "mongod"])
def backend(request: pytest.FixtureRequest, secantus: Service) -> Iterator[Backend]:
    if request.param == "mongod":  # the tracking strategy on a real mongod, where there is one
        b = Backend("tracking", request.getfixturevalue("real_mongod"))
    else:
        b = Backend(request.param, secantus)
    yield b
    b.close()


def seed(c: Any) -> None:
    c.shop.products.insert_many([{"_id": i, "sku": f"s{i}", "stock": 10, "tags": ["a", i]} for i in range(50)])
    c.shop.products.create_index("sku", unique=True)
    c.shop.products.create_index([("stock", 1), ("sku", -1)], name="stock_partial",
                                 partialFilterExpression={"stock": {"$gt": 0}})
    c.shop.carts.insert_many([{"_id": f"c{i}", "items": []} for i in range(5)])
    c.shop.sessions.create_index("at", expireAfterSeconds=3600)
    c.audit.log.insert_one({"_id": IDS[5], "msg": "seeded", **ALL_TYPES})


OPS = ["insert", "types", "update", "replace", "delete", "bulk", "many", "drop", "rename", "create", "index",
       "drop_index", "txn", "txn_abort", "drop_db"]
ops_lists = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 60)), max_size=10)


def apply(backend: Backend, c: Any, op: str, n: int) -> None:
    products = c.shop.products
    try:
        if op == "insert":
            c.shop[f"new{n % 3}"].insert_one({"n": n})
        elif op == "types":
            ids = MONGOMOCK_IDS if backend.name == "mongomock" else IDS
            c.audit.typed.insert_one({"_id": ids[n % len(ids)], **ALL_TYPES, "n": n})
        elif op == "update":
            products.update_one({"_id": n}, {"$inc": {"stock": -1}, "$push": {"tags": "x"}, "$unset": {"sku": ""}})
        elif op == "replace":
            products.replace_one({"_id": n}, {"sku": f"r{n}", "replaced": True})
        elif op == "delete":
            products.delete_one({"_id": n})
        elif op == "many":
            products.update_many({"_id": {"$lt": n}}, {"$set": {"bulk": n}})
        elif op == "bulk":
            products.bulk_write(
                [pymongo.InsertOne({"_id": 1000 + n, "sku": f"b{n}"}), pymongo.UpdateMany({}, {"$set": {"b": n}}),
                 pymongo.DeleteOne({"_id": n + 1})],
                ordered=False,
            )
        elif op == "drop":
            c.shop.carts.drop()
        elif op == "rename":
            c.shop.carts.rename(f"carts_old{n}")
        elif op == "create":
            if backend.name == "mongomock":
                c.audit.create_collection(f"made{n}")
            else:
                c.audit.create_collection(f"capped{n}", capped=True, size=4096)
        elif op == "index":
            products.create_index([("stock", -1)], name=f"stock{n % 2}", sparse=bool(n % 2))
        elif op == "drop_index":
            products.drop_index("sku_1")
        elif op == "drop_db":
            c.drop_database("audit")
        elif op in ("txn", "txn_abort") and backend.name != "mongomock":  # mongomock has no sessions
            with c.start_session() as s:
                s.start_transaction()
                products.update_one({"_id": n}, {"$set": {"in_txn": True}}, session=s)
                c.shop.orders.insert_one({"txn": n}, session=s) if "orders" in c.shop.list_collection_names() \
                    else products.delete_one({"_id": n + 2}, session=s)
                if op == "txn":
                    s.commit_transaction()
                else:
                    s.abort_transaction()
    except pymongo.errors.PyMongoError:
        pass  # refused by the server (duplicate key, missing collection, ...): nothing to undo


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=ops_lists, nested=st.sampled_from(["none", "rollback", "release", "past"]), second=ops_lists)
def test_random_operations_roll_back_exactly(backend: Backend, first: Any, nested: str, second: Any) -> None:
    c = backend.client
    clear_mongo(c)
    seed(c)
    adapter = backend.adapter()
    other = backend.client_like()  # writes from a connection the adapter never saw
    try:
        a = adapter.checkpoint("A")
        at_a = backend.state()
        for op in first:
            apply(backend, other, *op)
        if nested != "none":
            b = adapter.checkpoint("B")
            at_b = backend.state()
            for op in second:
                apply(backend, c, *op)
            if nested == "rollback":
                adapter.rollback(b)
                assert backend.state() == at_b
            elif nested == "release":
                adapter.release(b)
        adapter.rollback(a)
        assert backend.state() == at_a
        adapter.rollback(a)  # the token stays usable
        assert backend.state() == at_a
    finally:
        adapter.close()
        other.close()


def test_seeded_once_then_each_test_costs_what_it_wrote(backend: Backend) -> None:
    c = backend.client
    adapter = backend.adapter()
    try:
        adapter.checkpoint("session")
        c.shop.products.insert_many([{"_id": i, "n": i} for i in range(2000)])
        c.shop.other.insert_many([{"_id": i} for i in range(100)])
        seeded = backend.state()
        for round_ in range(3):
            cp = adapter.checkpoint(f"test {round_}")
            c.shop.products.update_one({"_id": round_}, {"$set": {"n": -1}})
            c.shop.orders.insert_one({"round": round_})
            report = adapter.rollback(cp)
            # what is restored: one document written back and one new collection dropped (counters:
            # found by reading the touched collection; mongomock: two collections put back). Never
            # shop.other, which the test did not touch.
            assert report.restored == 2, report
            assert report.mode == "incremental"
            assert backend.state() == seeded
            adapter.release(cp)
        cp = adapter.checkpoint("reads only")
        assert c.shop.products.count_documents({}) == 2000
        assert adapter.rollback(cp).mode in ("none", "incremental")
        assert c.shop.list_collection_names() == ["products", "other"] or sorted(
            c.shop.list_collection_names()
        ) == ["other", "products"]  # no trace in the user's database
    finally:
        adapter.close()


def test_release_of_a_middle_checkpoint(backend: Backend) -> None:
    c = backend.client
    adapter = backend.adapter()
    try:
        seed(c)
        c1 = adapter.checkpoint("1")
        s1 = backend.state()
        c.shop.products.delete_one({"_id": 1})
        c2 = adapter.checkpoint("2")
        c.shop.products.delete_one({"_id": 2})
        c3 = adapter.checkpoint("3")
        c.shop.carts.drop()
        adapter.release(c2)
        adapter.rollback(c3)
        assert "carts" in c.shop.list_collection_names()
        assert c.shop.products.find_one({"_id": 2}) is None
        adapter.release(c3)
        adapter.rollback(c1)
        assert backend.state() == s1
        with pytest.raises(RollbackError, match="released or rolled past"):
            adapter.rollback(c2)
    finally:
        adapter.close()


def test_released_levels_put_back_a_dropped_collection_without_documents_written_after_it(backend: Backend) -> None:
    """A level that put a collection back whole (it was dropped and made again), merged with a newer level
    that put back documents of that collection: rolling back through both leaves the collection as it was,
    none of the documents written after it was made again (seed 14 of the isolation suite found it)."""
    c = backend.client
    adapter = backend.adapter()
    try:
        seed(c)
        test = adapter.checkpoint("test")
        at_test = backend.state()
        c.drop_database("shop")
        c.shop.products.insert_one({"_id": 500, "name": "made again"})
        step = adapter.checkpoint("step")
        c.shop.products.update_one({"_id": 500}, {"$set": {"name": "changed"}})
        later = adapter.checkpoint("later")
        c.shop.products.insert_one({"_id": 501})
        adapter.release(later)
        adapter.release(step)
        adapter.rollback(test)
        assert backend.state() == at_test
    finally:
        adapter.close()


def test_changes_name_documents_and_collections(backend: Backend) -> None:
    c = backend.client
    seed(c)
    adapter = backend.adapter()
    try:
        cp = adapter.checkpoint("test")
        c.shop.products.update_one({"_id": 3}, {"$set": {"stock": 0}})
        c.shop.products.delete_one({"_id": 4})
        c.shop.orders.insert_one({"_id": "o1"})
        c.shop.carts.drop()
        c.shop.products.create_index("tags")
        ch = adapter.changes(cp)
        assert ch.added == {"shop.orders", "shop.orders:'o1'"}
        assert ch.modified == {"shop.products", "shop.products:3"}  # products: its indexes changed
        assert ch.removed == {"shop.carts", "shop.products:4"}
        adapter.rollback(cp)
        assert not adapter.changes(cp)
    finally:
        adapter.close()


def test_workers_own_databases_on_one_server(backend: Backend) -> None:
    """Two adapters on one server, each owning one database (xdist workers): neither undoes the other."""
    c = backend.client
    one, two = backend.adapter(dbs=["w1"]), backend.adapter(dbs=["w2"])
    try:
        c.w1.items.insert_one({"_id": 1})
        c.w2.items.insert_one({"_id": 1})
        cp1, cp2 = one.checkpoint("w1"), two.checkpoint("w2")
        c.w1.items.insert_one({"_id": 2})
        c.w2.items.insert_one({"_id": 2})
        one.rollback(cp1)
        assert [d["_id"] for d in c.w1.items.find()] == [1]
        assert [d["_id"] for d in c.w2.items.find()] == [1, 2]  # w2's test is still running
        two.rollback(cp2)
        assert [d["_id"] for d in c.w2.items.find()] == [1]
    finally:
        one.close()
        two.close()


@pytest.fixture
def tracked(secantus: Service) -> Iterator[tuple[Any, MongoAdapter, Any, Callable[[], dict[Any, Any]]]]:
    """A seeded SecantusDB, a tracking adapter, its checkpoint, and a reader of the whole state."""
    backend = Backend("tracking", secantus)
    seed(backend.client)
    adapter = MongoAdapter(secantus.url)
    cp = adapter.checkpoint("test")
    yield backend.client, adapter, cp, backend.state
    adapter.close()
    backend.close()


def test_a_lost_change_stream_makes_the_next_restore_full(tracked: Any) -> None:
    client, adapter, cp, state = tracked
    before = state()
    client.shop.products.delete_many({})
    adapter._stream.close()  # as if the server had killed the cursor
    report = adapter.rollback(cp)
    assert report.mode == "full" and "change stream" in (report.reason or ""), report
    assert state() == before
    client.shop.carts.drop()  # tracking works again afterwards
    report = adapter.rollback(cp)
    assert report.mode == "incremental", report
    assert state() == before


def test_standalone_server_without_change_streams_is_refused_only_when_tracking_is_forced(
    secantus: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise pymongo.errors.OperationFailure("The $changeStream stage is only supported on replica sets", 40573)

    monkeypatch.setattr(pymongo.MongoClient, "watch", no_stream)
    adapter = MongoAdapter(secantus.url)  # auto: falls back to the write counters
    assert adapter.strategy == "counters"
    adapter.close()
    with pytest.raises(RollbackError, match="no change stream.*replica set"):
        MongoAdapter(secantus.url, strategy="tracking")




def test_a_lagging_change_stream_makes_the_next_restore_full(tracked: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, adapter, cp, state = tracked
    before = state()
    client.shop.products.update_many({}, {"$set": {"stock": 0}})
    adapter.lag_limit = 0.2
    monkeypatch.setattr(adapter._stream, "try_next", lambda: None)  # the barrier never shows up
    report = adapter.rollback(cp)
    assert report.mode == "full" and "lagged" in (report.reason or ""), report
    assert state() == before
