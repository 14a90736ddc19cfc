"""The MongoDB adapter against SecantusDB, a MongoDB-compatible server with change streams.

Work in progress for the MongoDB issue: the adapter and the SecantusDB provider
exist; the store is not registered (no fixtures) yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pymongo = pytest.importorskip("pymongo", reason="pymongo is part of the [test] extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_rollback.adapters.mongo import MongoAdapter  # noqa: E402
from pytest_rollback.api import Service, StoreUnavailable  # noqa: E402
from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import local  # noqa: E402

DBS = ("shop", "audit")


@pytest.fixture(scope="module")
def secantus() -> Iterator[Service]:
    settings = StoreSettings("mongo", "local", None, "", False, None, None)  # type: ignore[arg-type]
    try:
        service = local.secantusdb(settings)
    except StoreUnavailable as exc:  # pragma: no cover - the [test] extra installs it
        pytest.fail(f"these tests need SecantusDB: {exc}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
def client(secantus: Service) -> Iterator[Any]:
    c = pymongo.MongoClient(secantus.url)
    for db in c.list_database_names():
        if db not in ("admin", "local", "config"):
            c.drop_database(db)
    yield c
    c.close()


def mongo_state(c: Any) -> dict[Any, Any]:
    """Every user collection: options, index specs and documents as raw BSON."""
    from bson.raw_bson import RawBSONDocument

    raw = pymongo.collection.CodecOptions(document_class=RawBSONDocument)
    state: dict[Any, Any] = {}
    for db in sorted(c.list_database_names()):
        if db in ("admin", "local", "config", "__pytest_rollback__"):
            continue
        for info in c[db].list_collections():
            name = info["name"]
            indexes = sorted(
                tuple(sorted((k, repr(v)) for k, v in spec.items() if k not in ("v", "ns")))
                for spec in c[db][name].list_indexes()
            )
            docs = sorted(d.raw for d in c[db].get_collection(name, codec_options=raw).find({}))
            state[(db, name)] = (repr(sorted(info.get("options", {}).items())), indexes, docs)
    return state


def seed(c: Any) -> None:
    c.shop.products.insert_many([{"_id": i, "sku": f"s{i}", "stock": 10, "tags": ["a", i]} for i in range(50)])
    c.shop.products.create_index("sku", unique=True)
    c.shop.carts.insert_many([{"_id": f"c{i}", "items": []} for i in range(5)])
    c.audit.log.insert_one({"msg": "seeded"})


OPS = ["insert", "update", "replace", "delete", "bulk", "drop", "rename", "create", "index", "drop_index"]
ops_lists = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 60)), max_size=12)


def apply(c: Any, op: str, n: int) -> None:
    products = c.shop.products
    try:
        if op == "insert":
            c.shop[f"new{n % 3}"].insert_one({"n": n})
        elif op == "update":
            products.update_one({"_id": n}, {"$inc": {"stock": -1}, "$push": {"tags": "x"}})
        elif op == "replace":
            products.replace_one({"_id": n}, {"sku": f"r{n}", "replaced": True})
        elif op == "delete":
            products.delete_one({"_id": n})
        elif op == "bulk":
            products.bulk_write(
                [pymongo.InsertOne({"_id": 1000 + n, "sku": f"b{n}"}), pymongo.UpdateMany({}, {"$set": {"b": n}})],
                ordered=False,
            )
        elif op == "drop":
            c.shop.carts.drop()
        elif op == "rename":
            c.shop.carts.rename(f"carts_old{n}")
        elif op == "create":
            c.audit.create_collection(f"capped{n}", capped=True, size=4096)
        elif op == "index":
            products.create_index([("stock", -1)], name=f"stock{n % 2}")
        elif op == "drop_index":
            products.drop_index("sku_1")
    except pymongo.errors.PyMongoError:
        pass  # refused by the server (duplicate key, missing collection, ...): nothing to undo


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=ops_lists, nested=st.booleans(), second=ops_lists)
def test_random_operations_roll_back_exactly(client: Any, secantus: Service, first: Any, nested: bool,
                                             second: Any) -> None:
    for db in client.list_database_names():
        if db not in ("admin", "local", "config"):
            client.drop_database(db)
    seed(client)
    adapter = MongoAdapter(secantus.url)
    try:
        a = adapter.checkpoint("A")
        at_a = mongo_state(client)
        for op in first:
            apply(client, *op)
        if nested:
            b = adapter.checkpoint("B")
            at_b = mongo_state(client)
            for op in second:
                apply(client, *op)
            adapter.rollback(b)
            assert mongo_state(client) == at_b
        adapter.rollback(a)
        assert mongo_state(client) == at_a
    finally:
        adapter.close()


def test_seeded_once_then_each_test_costs_what_it_wrote(client: Any, secantus: Service) -> None:
    adapter = MongoAdapter(secantus.url)
    try:
        adapter.checkpoint("session")
        client.shop.products.insert_many([{"_id": i, "n": i} for i in range(2000)])
        seeded = mongo_state(client)
        for round_ in range(3):
            cp = adapter.checkpoint(f"test {round_}")
            client.shop.products.update_one({"_id": round_}, {"$set": {"n": -1}})
            client.shop.orders.insert_one({"round": round_})
            report = adapter.rollback(cp)
            assert report.restored <= 3, report  # one document and one new collection, not 2000 documents
            assert mongo_state(client) == seeded
            adapter.release(cp)
        assert "orders" not in client.shop.list_collection_names()
        assert client.shop.list_collection_names() == ["products"]  # no trace in the user's database
    finally:
        adapter.close()


def test_release_of_a_middle_checkpoint(client: Any, secantus: Service) -> None:
    adapter = MongoAdapter(secantus.url)
    try:
        seed(client)
        c1 = adapter.checkpoint("1")
        s1 = mongo_state(client)
        client.shop.products.delete_one({"_id": 1})
        c2 = adapter.checkpoint("2")
        client.shop.products.delete_one({"_id": 2})
        c3 = adapter.checkpoint("3")
        client.shop.carts.drop()
        adapter.release(c2)
        adapter.rollback(c3)
        assert "carts" in client.shop.list_collection_names()
        adapter.release(c3)
        adapter.rollback(c1)
        assert mongo_state(client) == s1
    finally:
        adapter.close()
