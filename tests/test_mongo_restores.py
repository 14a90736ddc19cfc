"""MongoDB restores that validation and unique indexes used to make fail (SecantusDB, real wire protocol).

A validator added by ``collMod`` after documents that do not meet it were
written, a collection whose validator the test changed, a unique value a
test's new document holds while the restore needs it for an old one: each is
restored, in an inner run through the plugin and on the adapter itself.
"""

from __future__ import annotations

import datetime
from typing import Any

import pymongo
import pytest
from conftest import INNER
from pymongo.errors import OperationFailure

from pytest_rollback.adapters.mongo import NOT_RESTORED, MongoAdapter
from pytest_rollback.api import RollbackError, RollbackWarning, Service


@pytest.fixture
def client(secantus_client: Any) -> Any:
    return secantus_client


def test_validators_and_unique_values_do_not_stop_the_restore(
    pytester: pytest.Pytester, secantus: Service, client: Any
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_valid="""
        import pytest

        REQUIRES_EMAIL = {"$jsonSchema": {"required": ["email"]}}

        @pytest.fixture(scope="module", autouse=True)
        def shop(mongo_db):
            mongo_db.accounts.insert_many([{"_id": i, "name": f"n{i}"} for i in range(50)])
            mongo_db.command("collMod", "accounts", validator=REQUIRES_EMAIL)  # the seeded ones do not meet it
            mongo_db.orders.insert_many([{"_id": i, "total": i} for i in range(50)])
            mongo_db.skus.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(10)])
            mongo_db.skus.create_index("sku", unique=True)

        def options(db, name):
            return db.command("listCollections", filter={"name": name})["cursor"]["firstBatch"][0]["options"]

        def as_seeded(db):
            assert sorted(db.list_collection_names()) == ["accounts", "orders", "skus"]
            assert db.accounts.count_documents({}) == 50
            assert db.accounts.find_one({"_id": 1}) == {"_id": 1, "name": "n1"}
            assert options(db, "accounts").get("validator") == REQUIRES_EMAIL
            assert db.orders.count_documents({}) == 50 and "validator" not in options(db, "orders")
            assert sorted(d["sku"] for d in db.skus.find()) == sorted(f"s{i}" for i in range(10))

        def test_deletes_what_the_validator_would_refuse_and_takes_a_unique_value(mongo_db):
            mongo_db.accounts.delete_many({"_id": {"$lt": 10}})
            mongo_db.orders.delete_many({})
            mongo_db.skus.delete_one({"_id": 1})
            mongo_db.skus.insert_one({"_id": 100, "sku": "s1"})

        def test_after_the_first(mongo_db):
            as_seeded(mongo_db)

        def test_drops_a_validated_collection_and_adds_a_validator(mongo_db):
            mongo_db.accounts.drop()
            mongo_db.orders.delete_many({"_id": {"$lt": 5}})
            mongo_db.command("collMod", "orders", validator={"$jsonSchema": {"required": ["paid"]}})
            mongo_db.skus.insert_one({"_id": 200, "sku": "new"})

        def test_after_the_second(mongo_db):
            as_seeded(mongo_db)
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={secantus.url}")
    result.assert_outcomes(passed=4)
    assert set(client.list_database_names()) <= {"admin", "local", "config"}, "the server is left as found"


def test_a_collection_that_cannot_be_restored_does_not_stop_the_others(
    secantus: Service, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = client.shop
    for name in ("a", "b", "c"):
        db[name].insert_many([{"_id": i, "n": i} for i in range(5)])
    adapter = MongoAdapter(secantus.url, dbs=["shop"])
    try:
        cp = adapter.checkpoint("seeded")
        db.a.delete_many({})
        db.b.update_one({"_id": 1}, {"$set": {"n": 100}})
        db.c.insert_one({"_id": 9, "n": 9})
        db.c.drop_indexes()
        real_docs, real_coll = adapter._restore_docs, adapter._restore_coll

        def refuse(real: Any) -> Any:
            def restore(ns: tuple[str, str], *args: Any) -> int:
                if ns[1] in ("a", "b"):
                    raise OperationFailure(f"refused {ns[1]}")
                return int(real(ns, *args))

            return restore

        monkeypatch.setattr(adapter, "_restore_docs", refuse(real_docs))
        monkeypatch.setattr(adapter, "_restore_coll", refuse(real_coll))
        monkeypatch.setattr(adapter, "_restore_docs_at_once", lambda by_ns: None)  # as after a clash: one by one
        with pytest.raises(RollbackError) as failed:
            adapter.rollback(cp)
        where = secantus.url.split("//", 1)[1].split("/", 1)[0]
        assert str(failed.value) == NOT_RESTORED.format(
            where=where, count=2, failures="shop.a (refused a); shop.b (refused b)"
        )
        assert sorted(d["_id"] for d in db.c.find()) == [0, 1, 2, 3, 4], "c was restored all the same"
        monkeypatch.undo()
        report = adapter.rollback(cp)  # the next restore after a failed one is a full one
        assert report.mode == "full"
        assert [sorted((d["_id"], d["n"]) for d in db[name].find()) for name in "abc"] == [
            [(i, i) for i in range(5)]
        ] * 3
    finally:
        adapter.close()


# -- what makes a collection exist, capped collections, views, time-series (issue 12) ---------------------------


def _state(client: Any, db: str) -> dict[str, Any]:
    """Every collection of ``db`` with its options, index names and documents (a capped one's in natural order)."""
    out: dict[str, Any] = {}
    for info in client[db].list_collections():
        name = info["name"]
        options = info.get("options", {})
        if "viewOn" in options:
            out[name] = ("view", options)
            continue
        indexes = sorted(spec["name"] for spec in client[db][name].list_indexes())
        docs = list(client[db][name].find({}))
        out[name] = (options, indexes, docs if options.get("capped") else sorted(docs, key=repr))
    return out


@pytest.mark.parametrize("strategy", ["tracking", "counters"])
def test_a_full_capped_collection_gets_its_evicted_documents_back_in_natural_order(
    secantus: Service, client: Any, strategy: str
) -> None:
    db = client.shop
    db.create_collection("log", capped=True, size=4096)
    db.log.insert_many([{"_id": i, "pad": "x" * 300} for i in range(10)])  # full: the next inserts evict
    db.create_collection("last5", capped=True, size=100_000, max=5)
    db.last5.insert_many([{"_id": i} for i in range(5)])
    before = _state(client, "shop")
    adapter = MongoAdapter(secantus.url, dbs=["shop"], strategy=strategy)
    try:
        cp = adapter.checkpoint("test tests/test_log.py::test_fills_the_log")
        db.log.insert_many([{"_id": i, "pad": "y" * 300} for i in range(10, 16)])
        db.last5.insert_many([{"_id": i} for i in range(5, 8)])
        assert [d["_id"] for d in db.last5.find()] == [3, 4, 5, 6, 7]
        adapter.rollback(cp)
        assert _state(client, "shop") == before
        assert [d["_id"] for d in db.last5.find()] == [0, 1, 2, 3, 4]
        db.last5.delete_one({"_id": 0})  # the first one again: only a rebuild puts it back first
        db.last5.insert_one({"_id": 0})
        adapter.rollback(cp)
        assert [d["_id"] for d in db.last5.find()] == [0, 1, 2, 3, 4]
        assert adapter.rollback(cp).restored == 0, "an untouched capped collection is not rebuilt"
    finally:
        adapter.close()


@pytest.mark.parametrize("strategy", ["tracking", "counters"])
@pytest.mark.parametrize("owned", [["shop"], None], ids=["owned-db", "every-db"])
def test_an_update_that_matches_nothing_and_creates_a_collection_is_rolled_back(
    secantus: Service, client: Any, strategy: str, owned: list[str] | None
) -> None:
    """SecantusDB creates the collection of an update, update_many or replace that matches nothing, and
    says so in no change event: the rollback compares which collections exist instead of trusting events."""
    client.shop.items.insert_one({"_id": 1})
    adapter = MongoAdapter(secantus.url, dbs=owned, strategy=strategy)
    try:
        cp = adapter.checkpoint("test")
        client.shop.a.update_one({"x": 1}, {"$set": {"y": 1}})
        client.shop.b.update_many({"x": 1}, {"$set": {"y": 1}})
        client.shop.c.replace_one({"x": 1}, {"y": 1})
        if owned is None:
            client.elsewhere.d.update_one({"x": 1}, {"$set": {"y": 1}})  # a database made the same way
        assert {"a", "b", "c"} <= set(client.shop.list_collection_names()), "SecantusDB no longer does this"
        assert {"shop.a", "shop.b", "shop.c"} <= adapter.changes(cp).added
        adapter.rollback(cp)
        assert client.shop.list_collection_names() == ["items"]
        assert "elsewhere" not in client.list_database_names()
    finally:
        adapter.close()


@pytest.mark.parametrize("strategy", ["tracking", "counters"])
def test_a_collection_made_without_an_event_and_dropped_after_the_checkpoint_is_recreated(
    secantus: Service, client: Any, strategy: str
) -> None:
    client.shop.items.insert_one({"_id": 1})
    adapter = MongoAdapter(secantus.url, dbs=["shop"], strategy=strategy)
    try:
        outer = adapter.checkpoint("module fixture")
        client.shop.empty.update_one({"x": 1}, {"$set": {"y": 1}})  # the fixture made it, with no event
        inner = adapter.checkpoint("test")
        client.shop.empty.drop()
        adapter.rollback(inner)
        assert sorted(client.shop.list_collection_names()) == ["empty", "items"]
        adapter.rollback(outer)
        assert client.shop.list_collection_names() == ["items"]
    finally:
        adapter.close()


@pytest.mark.parametrize("strategy", ["tracking", "counters"])
def test_views_and_time_series_collections_are_restored_exactly(
    secantus: Service, client: Any, strategy: str
) -> None:
    db = client.shop
    db.orders.insert_many([{"_id": i, "total": i} for i in range(5)])
    db.create_collection("big", viewOn="orders", pipeline=[{"$match": {"total": {"$gt": 2}}}])
    db.create_collection("ticks", timeseries={"timeField": "at", "metaField": "sym", "granularity": "hours"})
    db.ticks.insert_many([{"_id": i, "at": datetime.datetime(2024, 1, 1, i), "sym": "A", "px": i} for i in range(3)])
    before = _state(client, "shop")
    adapter = MongoAdapter(secantus.url, dbs=["shop"], strategy=strategy)
    try:
        cp = adapter.checkpoint("test")
        db.command("collMod", "big", viewOn="orders", pipeline=[])
        db.create_collection("small", viewOn="orders", pipeline=[{"$match": {"total": {"$lt": 2}}}])
        db.ticks.insert_one({"_id": 9, "at": datetime.datetime(2024, 1, 2), "sym": "B", "px": 9})
        db.ticks.delete_one({"_id": 0})
        adapter.rollback(cp)
        assert _state(client, "shop") == before
        db.drop_collection("big")
        db.drop_collection("ticks")
        db.create_collection("ticks", timeseries={"timeField": "at"})
        adapter.rollback(cp)
        assert _state(client, "shop") == before
        assert [d["_id"] for d in db.big.find()] == [3, 4]
    finally:
        adapter.close()


@pytest.mark.parametrize("strategy", ["tracking", "counters"])
def test_documents_sharing_an_id_in_a_time_series_collection_are_all_rolled_back(
    secantus: Service, client: Any, strategy: str
) -> None:
    """``_id`` is not unique in a time-series collection: a test that inserts a second document with an
    ``_id`` that is there already must not have it outlive the rollback (found by the isolation suite)."""
    db = client.shop
    db.create_collection("ticks", timeseries={"timeField": "at"})
    db.ticks.insert_many([{"_id": 1, "px": 1}, {"_id": 1, "px": 2}, {"_id": 2, "px": 3}])
    before = _state(client, "shop")
    adapter = MongoAdapter(secantus.url, dbs=["shop"], strategy=strategy)
    try:
        assert len([k for k in adapter.observe().state if k[0] == "shop.ticks"]) == 4, "options + 3 documents"
        cp = adapter.checkpoint("test")
        db.ticks.insert_many([{"_id": 2, "px": 4}, {"_id": 3, "px": 5}, {"_id": 3, "px": 6}])
        db.ticks.delete_one({"_id": 1})
        adapter.rollback(cp)
        assert _state(client, "shop") == before
    finally:
        adapter.close()


def test_a_view_the_server_will_not_create_again_is_reported_once_naming_the_test(
    secantus: Service, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = client.shop
    db.orders.insert_one({"_id": 1})
    db.create_collection("big", viewOn="orders", pipeline=[])
    adapter = MongoAdapter(secantus.url, dbs=["shop"])
    try:
        cp = adapter.checkpoint("test tests/test_v.py::test_drops_the_view")
        db.drop_collection("big")
        real = pymongo.database.Database.create_collection

        def refuse_views(self: Any, name: str, **kwargs: Any) -> Any:
            if "viewOn" in kwargs:
                raise OperationFailure("views are not supported", 166)
            return real(self, name, **kwargs)

        monkeypatch.setattr(pymongo.database.Database, "create_collection", refuse_views)
        with pytest.warns(RollbackWarning) as caught:
            adapter.rollback(cp)
        texts = [str(w.message) for w in caught if issubclass(w.category, RollbackWarning)]
        assert len(texts) == 1, texts
        assert "test tests/test_v.py::test_drops_the_view" in texts[0] and "view shop.big" in texts[0]
        assert client.shop.orders.find_one() == {"_id": 1}, "the other collections are restored"
    finally:
        adapter.close()


def test_a_profiler_turned_on_is_reported_once(secantus: Service, client: Any) -> None:
    client.shop.items.insert_one({"_id": 1})
    adapter = MongoAdapter(secantus.url, dbs=["shop"])
    try:
        cp = adapter.checkpoint("test tests/test_p.py::test_profiles")
        client.shop.command("profile", 2)
        client.shop.items.find_one()
        with pytest.warns(RollbackWarning, match="test_profiles: the profiler of database 'shop' is on"):
            adapter.rollback(cp)
        client.shop.command("profile", 0)
        client.shop.drop_collection("system.profile")
        cp = adapter.checkpoint("next")
        adapter.rollback(cp)
        assert client.shop.list_collection_names() == ["items"]
    finally:
        client.shop.command("profile", 0)
        adapter.close()


def test_observe_sees_what_makes_a_collection_exist_and_a_capped_collection_s_order(
    secantus: Service, client: Any
) -> None:
    db = client.shop
    db.create_collection("last3", capped=True, size=100_000, max=3)
    db.last3.insert_many([{"_id": i} for i in range(3)])
    adapter = MongoAdapter(secantus.url, dbs=["shop"])
    try:
        first = adapter.observe().state
        db.empty.update_one({"x": 1}, {"$set": {"y": 1}})
        assert adapter.observe().state != first, "a collection made without an event"
        db.empty.drop()
        assert adapter.observe().state == first
        db.last3.delete_one({"_id": 0})
        db.last3.insert_one({"_id": 0})  # the same documents, another order
        assert adapter.observe().state != first
    finally:
        adapter.close()


def test_the_crash_journal_puts_back_capped_order_views_and_silent_collections(
    secantus: Service, client: Any, tmp_path: Any
) -> None:
    from pytest_rollback.adapters import mongo_journal

    db = client.shop
    db.create_collection("last3", capped=True, size=100_000, max=3)
    db.last3.insert_many([{"_id": i} for i in range(3)])
    db.orders.insert_many([{"_id": i, "total": i} for i in range(5)])
    db.create_collection("big", viewOn="orders", pipeline=[{"$match": {"total": {"$gt": 2}}}])
    db.empty.update_one({"x": 1}, {"$set": {"y": 1}})  # made without an event, before the run
    before = _state(client, "shop")
    adapter = MongoAdapter(secantus.url, dbs=["shop"])
    adapter.checkpoint("pytest-rollback start")
    adapter.save_journal(tmp_path)
    db.last3.insert_many([{"_id": i} for i in range(3, 5)])
    db.command("collMod", "big", viewOn="orders", pipeline=[])
    db.empty.drop()
    db.other.update_many({"x": 1}, {"$set": {"y": 1}})
    adapter.close()  # the run is killed: no rollback
    mongo_journal.recover(tmp_path, secantus.url)
    assert _state(client, "shop") == before
