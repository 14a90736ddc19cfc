"""The mongomock adapter's journal: exact rollbacks that cost what a test wrote.

Each case drives ``MongomockAdapter`` on an in-process mongomock store and compares
the whole visible state -- database and collection names in order, every index,
every document as BSON (types and field order) in ``find()`` order -- with the
state at the checkpoint. The mechanism is shown by counting the before-images the
journal takes (``images``) and what the rollback puts back (``restored``), on
collections large enough that a copy of them would show.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from typing import Any

import bson
import mongomock
import pymongo
import pytest
from conftest import INNER
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_rollback.adapters import mongomock as journal_mod
from pytest_rollback.adapters.mongomock import MongomockAdapter
from pytest_rollback.api import RollbackError


def view(client: Any) -> list[Any]:
    """Everything a client sees, in the order it sees it."""
    out = []
    for db_name in client.list_database_names():
        db = client[db_name]
        for name in db.list_collection_names():
            coll = db[name]
            indexes = sorted(repr(sorted(spec.items())) for spec in coll.index_information().values())
            out.append((db_name, name, indexes, [bson.encode(doc) for doc in coll.find()]))
    return out


@pytest.fixture
def client() -> Any:
    c = mongomock.MongoClient()
    c.shop.products.insert_many(
        [{"_id": i, "sku": f"s{i}", "stock": 10, "attrs": {"size": {"w": i, "h": 2}, "tags": ["a"]}} for i in range(50)]
    )
    c.shop.products.create_index("sku", unique=True)
    c.shop.carts.insert_many([{"_id": "c1", "items": ["s1"]}, {"_id": "c2", "items": []}])
    c.crm.people.insert_one({"_id": 1, "name": "Ada"})
    return c


@pytest.fixture
def adapter(client: Any) -> Iterator[MongomockAdapter]:
    a = MongomockAdapter(client)
    assert a.strategy == "journal"
    yield a
    a.close()


def journal_images(adapter: MongomockAdapter) -> int:
    """How many document before-images the adapter's journal has taken so far."""
    return int(adapter._impl.images)


WRITES = {
    "insert": lambda c: c.shop.products.insert_one({"_id": 100, "sku": "new"}),
    "update": lambda c: c.shop.products.update_one({"_id": 3}, {"$inc": {"stock": -1}, "$set": {"z": 1}}),
    "update many": lambda c: c.shop.products.update_many({"_id": {"$lt": 5}}, {"$unset": {"attrs": ""}}),
    "nested": lambda c: c.shop.products.update_one(
        {"_id": 4}, {"$set": {"attrs.size.w": 99, "attrs.size.d": 1}, "$push": {"attrs.tags": "b"}}
    ),
    "pipeline": lambda c: c.shop.products.update_one({"_id": 5}, [{"$set": {"stock": 0, "new": "$sku"}}]),
    "replace": lambda c: c.shop.products.replace_one({"_id": 6}, {"other": True}),
    "upsert": lambda c: c.shop.products.update_one({"_id": 200}, {"$set": {"sku": "up"}}, upsert=True),
    "find and modify": lambda c: c.shop.products.find_one_and_update({"_id": 7}, {"$rename": {"sku": "code"}}),
    "delete": lambda c: c.shop.products.delete_one({"_id": 8}),
    "delete many": lambda c: c.shop.products.delete_many({"_id": {"$in": [0, 9, 20, 49]}}),
    "bulk": lambda c: c.shop.products.bulk_write(
        [
            pymongo.InsertOne({"_id": 300, "sku": "b1"}),
            pymongo.DeleteOne({"_id": 11}),
            pymongo.InsertOne({"_id": 301, "sku": "b2"}),
        ]
    ),
    "new collection": lambda c: c.shop.orders.insert_one({"sku": "s1"}),
    "new database": lambda c: c.billing.invoices.insert_one({"n": 1}),
    "create collection": lambda c: c.shop.create_collection("empty"),
    "drop collection": lambda c: c.shop.carts.drop(),
    "drop database": lambda c: c.drop_database("shop"),
    "rename": lambda c: c.shop.carts.rename("baskets"),
    "rename over": lambda c: c.shop.carts.rename("products", dropTarget=True),
    "create index": lambda c: c.shop.products.create_index([("stock", -1), ("sku", 1)], name="extra"),
    "drop index": lambda c: c.shop.products.drop_index("sku_1"),
    "drop indexes": lambda c: c.shop.products.drop_indexes(),
    "ttl index": lambda c: c.crm.people.create_index("since", expireAfterSeconds=60),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_each_kind_of_write_is_undone_exactly(client: Any, adapter: MongomockAdapter, write: str) -> None:
    before = view(client)
    cp = adapter.checkpoint("test")
    WRITES[write](client)
    assert view(client) != before
    report = adapter.rollback(cp)
    assert view(client) == before
    assert report.restored > 0
    assert not adapter.changes(cp)


def test_every_write_together_then_again_from_the_same_token(client: Any, adapter: MongomockAdapter) -> None:
    before = view(client)
    cp = adapter.checkpoint("test")
    for _ in range(2):
        for write in WRITES.values():
            try:
                write(client)
            except (pymongo.errors.PyMongoError, mongomock.OperationFailure):
                pass  # e.g. a rename of a collection dropped just before
        adapter.rollback(cp)
        assert view(client) == before


def test_deleted_documents_come_back_in_their_place(client: Any, adapter: MongomockAdapter) -> None:
    order = [d["_id"] for d in client.shop.products.find()]
    cp = adapter.checkpoint("test")
    client.shop.products.insert_one({"_id": "late"})
    client.shop.products.delete_many({"_id": {"$in": [1, 25, "late"]}})
    client.shop.products.insert_one({"_id": 25, "back": "at the end"})
    adapter.rollback(cp)
    assert [d["_id"] for d in client.shop.products.find()] == order
    assert client.shop.products.find_one({"_id": 25})["sku"] == "s25"


def test_unique_indexes_refuse_after_a_restore(client: Any, adapter: MongomockAdapter) -> None:
    cp = adapter.checkpoint("test")
    client.shop.products.drop_index("sku_1")
    client.shop.products.insert_one({"_id": 500, "sku": "s1"})
    adapter.rollback(cp)
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        client.shop.products.insert_one({"_id": 501, "sku": "s1"})
    client.shop.products.drop()
    adapter.rollback(cp)
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        client.shop.products.insert_one({"_id": 502, "sku": "s2"})


def test_documents_expired_by_a_ttl_index_come_back(client: Any, adapter: MongomockAdapter) -> None:
    old = datetime.datetime(2000, 1, 1)
    client.crm.sessions.insert_many([{"_id": i, "at": old} for i in range(3)])
    before = view(client)
    cp = adapter.checkpoint("test")
    client.crm.sessions.create_index("at", expireAfterSeconds=1)
    assert client.crm.sessions.count_documents({}) == 0  # a read expires them (mongomock deletes on reads)
    adapter.rollback(cp)
    assert view(client) == before


def test_nested_checkpoints_release_and_rolling_past(client: Any, adapter: MongomockAdapter) -> None:
    s0 = view(client)
    session = adapter.checkpoint("session")
    client.shop.products.update_one({"_id": 1}, {"$set": {"module": True}})
    client.shop.carts.drop()
    s1 = view(client)
    module = adapter.checkpoint("module")
    client.shop.products.update_one({"_id": 1}, {"$set": {"test": True}})
    client.shop.products.delete_one({"_id": 2})
    client.shop.carts.insert_one({"_id": "again"})
    s2 = view(client)
    test = adapter.checkpoint("test")
    inner = adapter.checkpoint("inside the test")  # rollback.checkpoint() inside a test
    client.shop.products.delete_many({})
    client.shop.products.rename("gone")
    adapter.rollback(inner)
    assert view(client) == s2
    client.shop.products.update_one({"_id": 3}, {"$set": {"x": 1}})
    adapter.release(inner)
    adapter.rollback(test)
    assert view(client) == s2
    adapter.release(test)
    client.drop_database("shop")
    adapter.release(module)  # its journal joins the session's: rolling back to the session stays exact
    adapter.rollback(session)
    assert view(client) == s0
    assert s1 != s0
    with pytest.raises(RollbackError, match="released or rolled past"):
        adapter.rollback(module)


def test_rolling_back_past_a_newer_checkpoint(client: Any, adapter: MongomockAdapter) -> None:
    s0 = view(client)
    older = adapter.checkpoint("older")
    client.shop.products.update_one({"_id": 1}, {"$set": {"a": 1}})
    newer = adapter.checkpoint("newer")
    client.shop.products.update_one({"_id": 1}, {"$set": {"a": 2}})
    client.shop.carts.rename("baskets")
    adapter.rollback(older)
    assert view(client) == s0
    with pytest.raises(RollbackError):
        adapter.rollback(newer)


def test_a_branch_is_a_checkpoint_rolled_back_and_released(client: Any, adapter: MongomockAdapter) -> None:
    test = adapter.checkpoint("test")
    client.shop.products.update_one({"_id": 1}, {"$set": {"in test": True}})
    s1 = view(client)
    for variant in ("a", "b"):
        branch = adapter.checkpoint(variant)
        client.shop.products.update_one({"_id": 1}, {"$set": {"variant": variant}})
        client.shop.products.delete_one({"_id": 2})
        adapter.rollback(branch)
        adapter.release(branch)
        assert view(client) == s1
    adapter.rollback(test)
    assert client.shop.products.find_one({"_id": 1}).get("in test") is None


def test_changes_name_collections_and_documents(client: Any, adapter: MongomockAdapter) -> None:
    cp = adapter.checkpoint("test")
    client.shop.products.update_one({"_id": 3}, {"$set": {"stock": 0}})
    client.shop.products.delete_one({"_id": 4})
    client.shop.products.insert_one({"_id": 99})
    client.shop.products.update_one({"_id": 5}, {"$set": {"stock": 10}})  # no change in value
    client.shop.orders.insert_one({"_id": "o1"})
    client.shop.carts.rename("baskets")
    client.crm.people.create_index("name")
    ch = adapter.changes(cp)
    assert ch.added == {"shop.products:99", "shop.orders", "shop.orders:'o1'", "shop.baskets",
                        "shop.baskets:'c1'", "shop.baskets:'c2'"}  # fmt: skip
    assert ch.modified == {"shop.products:3", "crm.people"}
    assert ch.removed == {"shop.products:4", "shop.carts"}
    adapter.rollback(cp)
    assert not adapter.changes(cp)


def test_reads_are_not_touches(client: Any, adapter: MongomockAdapter) -> None:
    cp = adapter.checkpoint("test")
    list(client.shop.products.find({"attrs.size.w": {"$gt": 3}}))
    client.shop.products.find_one({"_id": 1})["sku"] = "changed in the copy find returned"
    client.shop.products.count_documents({})
    list(client.shop.products.aggregate([{"$match": {"stock": 10}}]))
    client.shop.products.distinct("sku")
    assert journal_images(adapter) == 0
    report = adapter.rollback(cp)
    assert report.mode == "none" and report.restored == 0


@pytest.mark.parametrize("n", [1_000, 20_000])
def test_a_rollback_after_k_writes_touches_k_documents_whatever_the_size(n: int) -> None:
    client = mongomock.MongoClient()
    client.big.items.insert_many([{"_id": i, "v": i, "doc": {"x": [i, i]}} for i in range(n)])
    adapter = MongomockAdapter(client)
    try:
        for round_ in range(3):
            cp = adapter.checkpoint(f"test {round_}")
            for i in range(5):
                client.big.items.update_one({"_id": i * 97 + round_}, {"$set": {"doc.x.0": -1}})
                client.big.items.insert_one({"_id": f"new {round_} {i}"})
            level = cp
            assert level.size() == 10  # ten before-images: the journal holds the documents written, not n
            report = adapter.rollback(cp)
            assert report.restored == 10 and report.mode == "incremental"
            adapter.release(cp)
        assert journal_images(adapter) == 30
        assert client.big.items.count_documents({}) == n
        assert client.big.items.find_one({"_id": 97})["doc"] == {"x": [97, 97]}
    finally:
        adapter.close()


def test_copy_on_touch_would_copy_the_collection() -> None:
    """The older strategy, still there as the fallback, for comparison: what it copies is the collection."""
    client = mongomock.MongoClient()
    client.big.items.insert_many([{"_id": i} for i in range(1000)])
    adapter = MongomockAdapter(client, strategy="copy-on-touch")
    try:
        assert adapter.strategy == "copy-on-touch"
        cp = adapter.checkpoint("test")
        client.big.items.update_one({"_id": 1}, {"$set": {"x": 1}})
        image = adapter._impl._levels[-1].images[("big", "items")]
        assert len(image[0]) == 1000
        adapter.rollback(cp)
        assert client.big.items.find_one({"_id": 1}) == {"_id": 1}
    finally:
        adapter.close()


def test_a_mongomock_without_the_layout_falls_back_to_copying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "supported", lambda: "mongomock's store has no _documents")
    client = mongomock.MongoClient()
    assert MongomockAdapter(client).strategy == "copy-on-touch"
    with pytest.raises(RollbackError, match="journal cannot run here: mongomock's store has no _documents"):
        MongomockAdapter(mongomock.MongoClient(), strategy="journal")
    with pytest.raises(ValueError, match="'snapshot' is not one of auto, journal, copy-on-touch"):
        MongomockAdapter(client, strategy="snapshot")


def test_one_strategy_per_store() -> None:
    copied, journaled = mongomock.MongoClient(), mongomock.MongoClient()
    first = MongomockAdapter(copied, strategy="copy-on-touch")
    assert MongomockAdapter(copied).strategy == "copy-on-touch"
    with pytest.raises(RollbackError, match="journal cannot run here: another adapter already copies this store"):
        MongomockAdapter(copied, strategy="journal")
    second = MongomockAdapter(journaled)
    with pytest.raises(RollbackError, match="another adapter already keeps a journal of this store"):
        MongomockAdapter(journaled, strategy="copy-on-touch")
    first.close()
    second.close()


def test_writes_from_other_threads_and_clients_are_journaled(client: Any, adapter: MongomockAdapter) -> None:
    before = view(client)
    cp = adapter.checkpoint("test")
    other = mongomock.MongoClient(_store=client._store)  # code under test with its own client

    def work(t: int) -> None:
        for i in range(20):
            other.shop.products.update_one({"_id": i}, {"$inc": {"stock": t}})
            other.shop.log.insert_one({"t": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    adapter.rollback(cp)
    assert view(client) == before


def test_a_document_that_cannot_be_copied_makes_the_rollback_refuse(client: Any, adapter: MongomockAdapter) -> None:
    class Uncopyable:
        def __deepcopy__(self, memo: Any) -> Any:
            raise TypeError("no copies")

    client.shop.products._store._documents[1]["odd"] = Uncopyable()  # (bson would refuse it on insert)
    cp = adapter.checkpoint("test")
    client.shop.products.delete_one({"_id": 1})  # the write itself goes through
    with pytest.raises(RollbackError, match="cannot roll back exactly: document 1 could not be copied"):
        adapter.rollback(cp)


OPS = st.lists(
    st.sampled_from(sorted(WRITES)) | st.tuples(st.sampled_from(["set", "del", "add"]), st.integers(0, 60)),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(first=OPS, nested=st.sampled_from(["none", "rollback", "release", "past"]), second=OPS)
def test_random_writes_roll_back_exactly(first: list[Any], nested: str, second: list[Any]) -> None:
    client = mongomock.MongoClient()
    client.shop.products.insert_many([{"_id": i, "sku": f"s{i}", "stock": 10} for i in range(50)])
    client.shop.products.create_index("sku", unique=True)
    client.shop.carts.insert_many([{"_id": "c1"}, {"_id": "c2"}])
    client.crm.people.insert_one({"_id": 1})
    adapter = MongomockAdapter(client)

    def run(ops: list[Any]) -> None:
        for op in ops:
            try:
                if isinstance(op, str):
                    WRITES[op](client)
                elif op[0] == "set":
                    client.shop.products.update_one({"_id": op[1]}, {"$set": {"stock": -op[1], "n.x": op[1]}})
                elif op[0] == "del":
                    client.shop.products.delete_one({"_id": op[1]})
                else:
                    client.shop.products.insert_one({"_id": op[1], "sku": f"a{op[1]}"})
            except (pymongo.errors.PyMongoError, mongomock.OperationFailure):
                pass

    try:
        s0 = view(client)
        outer = adapter.checkpoint("outer")
        run(first)
        s1 = view(client)
        inner = adapter.checkpoint("inner")
        run(second)
        if nested == "rollback":
            adapter.rollback(inner)
            assert view(client) == s1
        elif nested == "release":
            adapter.release(inner)
        adapter.rollback(outer)
        assert view(client) == s0
    finally:
        adapter.close()


PLUGIN_SUITE = """
import pytest

@pytest.fixture(scope="module", autouse=True)
def catalogue(mongo_db):
    mongo_db.products.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(100)])
    mongo_db.products.create_index("sku", unique=True)

def fresh(mongo_db):
    assert [d["_id"] for d in mongo_db.products.find()] == list(range(100))
    assert mongo_db.list_collection_names() == ["products"]

def test_writes(mongo_db):
    fresh(mongo_db)
    mongo_db.products.delete_many({"_id": {"$lt": 10}})
    mongo_db.products.update_one({"_id": 50}, {"$set": {"sku": "x"}})
    mongo_db.orders.insert_one({"_id": 1})

def test_checkpoint_and_branch(mongo_db, rollback):
    fresh(mongo_db)
    cp = rollback.checkpoint("inside")
    mongo_db.products.drop()
    rollback.restore(cp)
    fresh(mongo_db)
    for variant in ("a", "b"):
        with rollback.branch(variant):
            mongo_db.products.rename("renamed")
            assert mongo_db.list_collection_names() == ["renamed"]
        fresh(mongo_db)
    mongo_db.products.insert_one({"_id": "mine"})
    assert rollback.changes()["mongo"].added == {f"{mongo_db.name}.products:'mine'"}

def test_next(mongo_db):
    fresh(mongo_db)
"""


def test_through_the_plugin_on_the_embedded_provider(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_suite=PLUGIN_SUITE)
    result = pytester.runpytest(
        *INNER, "--rollback-provider=embedded", "--rollback-mongo-embedded=mongomock", "--rollback-verify",
        "-p", "no:randomly",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*mongo via embedded at *mongomock*journal rollback*"])


def test_dropping_a_large_collection_or_its_database_copies_nothing() -> None:
    client = mongomock.MongoClient()
    client.big.items.insert_many([{"_id": i} for i in range(20_000)])
    client.big.items.create_index("x")
    adapter = MongomockAdapter(client)
    try:
        before = view(client)
        for drop in (lambda: client.big.items.drop(), lambda: client.drop_database("big")):
            cp = adapter.checkpoint("test")
            drop()
            client.big.items.insert_one({"_id": "after the drop"})  # into the new table: nothing recorded
            assert journal_images(adapter) == 0
            report = adapter.rollback(cp)
            assert report.mode == "full" and "dropped" in (report.reason or "")
            assert view(client) == before
            adapter.release(cp)
    finally:
        adapter.close()
