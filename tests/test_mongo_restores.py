"""MongoDB restores that validation and unique indexes used to make fail (SecantusDB, real wire protocol).

A validator added by ``collMod`` after documents that do not meet it were
written, a collection whose validator the test changed, a unique value a
test's new document holds while the restore needs it for an old one: each is
restored, in an inner run through the plugin and on the adapter itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from conftest import INNER, clear_mongo
from pymongo.errors import OperationFailure

from pytest_rollback.adapters.mongo import NOT_RESTORED, MongoAdapter
from pytest_rollback.api import RollbackError, Service


@pytest.fixture
def client(secantus: Service) -> Iterator[Any]:
    client: Any = pymongo.MongoClient(secantus.url)
    clear_mongo(client)
    yield client
    clear_mongo(client)
    client.close()


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
