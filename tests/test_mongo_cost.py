"""What a MongoDB rollback sends to the server (issue 15), counted by a command listener, on SecantusDB.

A test that writes k <= 10 documents across three collections in two databases
costs one barrier through the change stream and a bounded number of commands;
its restore reads nothing and writes the k documents back, whether each
collection holds 100 documents or 5,000. The adapter is driven as the plugin
drives it: the test level's checkpoint is taken once and shared by the next
test when nothing happened in between, so a test costs its rollback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import INNER, clear_mongo
from pymongo import MongoClient, UpdateOne, monitoring
from pymongo.errors import InvalidOperation

from pytest_rollback.adapters._mongo_probe import ProbeSocket
from pytest_rollback.adapters.mongo import MongoAdapter
from pytest_rollback.api import Service

#: three collections in two databases
SPREAD = (("shop", "products"), ("shop", "orders"), ("crm", "customers"))
HIDDEN = "__pytest_rollback__"
#: what a rollback of a test that wrote may send: the quiet probe, one barrier and its getMore(s), the list
#: of databases and of each one's collections, one bulkWrite, and the counters after it
MOST_COMMANDS = 10


class Commands(monitoring.CommandListener):
    """The commands sent while ``on`` (only the adapter runs then), and the documents they read and wrote."""

    def __init__(self) -> None:
        self.on = False
        self.names: list[str] = []
        self.written = 0
        self.read = 0

    def reset(self) -> None:
        self.names, self.written, self.read = [], 0, 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        cmd = event.command
        if event.command_name == "update" and event.database_name == HIDDEN:
            self.names.append("barrier")
            return
        self.names.append(event.command_name)
        for field in ("ops", "updates", "deletes", "documents"):  # bulkWrite, update, delete, insert
            self.written += len(cmd.get(field) or [])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self.on and event.command_name in ("find", "getMore") and event.database_name != "admin":
            cursor = event.reply.get("cursor") or {}
            self.read += len(cursor.get("firstBatch") or cursor.get("nextBatch") or [])

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_LISTENER: list[Commands] = []


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Commands:
    """The process's one listener (pymongo's are for clients made after they are registered: adapters are),
    which also counts the ``serverStatus`` an adapter writes on its own probe socket."""
    if not _LISTENER:
        _LISTENER.append(Commands())
        monitoring.register(_LISTENER[0])
    listener = _LISTENER[0]
    listener.reset()
    send = ProbeSocket._send

    def counted(probe: ProbeSocket) -> int:
        if listener.on:
            listener.names.append("serverStatus")
        return send(probe)

    monkeypatch.setattr(ProbeSocket, "_send", counted)
    return listener


@pytest.fixture
def client(secantus_client: Any) -> Any:
    return secantus_client


def seed(client: Any, n: int) -> None:
    for db, name in SPREAD:
        client[db][name].insert_many([{"_id": i, "sku": f"sku-{i}", "stock": 10} for i in range(n)])


def write(client: Any, k: int, value: int) -> None:
    """k documents across SPREAD: updated, inserted and deleted in turn (the same ones every time)."""
    for i in range(k):
        db, name = SPREAD[i % 3]
        kind = (i // 3) % 3
        if kind == 0:
            client[db][name].update_one({"_id": i}, {"$set": {"stock": value}})
        elif kind == 1:
            client[db][name].insert_one({"_id": f"new-{i}", "stock": value})
        else:
            client[db][name].delete_one({"_id": i})


def state(client: Any) -> dict[str, list[Any]]:
    return {f"{db}.{name}": sorted(client[db][name].find(), key=repr) for db, name in SPREAD}


def rollback(adapter: MongoAdapter, token: Any, commands: Commands) -> Any:
    commands.reset()
    commands.on = True
    try:
        return adapter.rollback(token)
    finally:
        commands.on = False


@pytest.mark.parametrize("shared", [False, True], ids=["own server", "server shared by xdist workers"])
def test_k_documents_across_collections_cost_one_barrier(
    secantus: Service, client: Any, commands: Commands, shared: bool
) -> None:
    """Each test's rollback: one barrier, at most MOST_COMMANDS commands, the k documents written back; the
    restore's own writes are not the next test's (skipped, not written back again), and a test that
    writes the very documents the restore wrote is still rolled back."""
    seed(client, 100)
    before = state(client)
    others = ["nobody_gw1"] if shared else None  # shared: no serverStatus probe (the others' commands)
    adapter = MongoAdapter(secantus.url, dbs=["shop", "crm"] if shared else None, others=others)
    try:
        adapter.checkpoint("session")
        test = adapter.checkpoint("test")
        for value in range(3):
            write(client, 10, value)
            report = rollback(adapter, test, commands)
            assert state(client) == before
            assert commands.names.count("barrier") == 1, commands.names
            assert len(commands.names) <= MOST_COMMANDS, commands.names
            assert report.restored == 10, "the documents this test wrote, not the last restore's too"
        client.shop.products.update_one({"_id": 50}, {"$set": {"stock": 0}})
        assert rollback(adapter, test, commands).restored == 1, "the last restore's own writes were not read as new"
        untouched = rollback(adapter, test, commands)
        assert untouched.restored == 0
        if not shared:
            assert commands.names == ["serverStatus"], "a test that wrote nothing: the quiet probe alone"
    finally:
        adapter.close()


def test_a_rollback_reads_and_writes_what_the_test_wrote_whatever_the_size(
    secantus: Service, client: Any, commands: Commands
) -> None:
    """k = 10 documents written across the collections: the same documents read and written back, and the
    same commands, at N = 100 and N = 5,000 per collection."""
    seen = {}
    for n in (100, 5_000):
        clear_mongo(client)
        seed(client, n)
        adapter = MongoAdapter(secantus.url)
        try:
            test = adapter.checkpoint("test")
            write(client, 10, 1)
            rollback(adapter, test, commands)
            seen[n] = (commands.read, commands.written, sorted(commands.names))
            assert client.shop.products.count_documents({}) == n
        finally:
            adapter.close()
    assert seen[100] == seen[5_000]
    assert seen[100][:2] == (0, 10), "nothing read back, the 10 documents written"


def test_a_collection_made_without_an_event_is_still_found(secantus: Service, client: Any, commands: Commands) -> None:
    """An update that matches nothing makes a collection (and a database) on SecantusDB with no change event:
    the list of collections, read once per rollback that had writes, finds it; still one barrier."""
    seed(client, 10)
    adapter = MongoAdapter(secantus.url)
    try:
        test = adapter.checkpoint("test")
        client.elsewhere.ghost.update_one({"_id": 1}, {"$set": {"a": 1}})
        client.shop.products.update_one({"_id": 1}, {"$set": {"stock": 0}})
        rollback(adapter, test, commands)
        assert "elsewhere" not in client.list_database_names()
        assert client.shop.products.find_one({"_id": 1})["stock"] == 10
        assert commands.names.count("barrier") == 1
    finally:
        adapter.close()


def test_a_server_without_the_client_bulk_write_restores_collection_by_collection(
    secantus: Service, client: Any, commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pymongo finds the server older than MongoDB 8.0 (no ``bulkWrite`` command), the documents go
    back with one ``bulk_write`` per collection, and the adapter does not try the command again."""
    seed(client, 10)
    before = state(client)
    adapter = MongoAdapter(secantus.url)
    try:

        def too_old(*args: Any, **kwargs: Any) -> Any:
            raise InvalidOperation("MongoClient.bulk_write requires MongoDB server version 8.0+")

        monkeypatch.setattr(adapter.client, "bulk_write", too_old)
        test = adapter.checkpoint("test")
        for value in range(2):
            write(client, 10, value)
            rollback(adapter, test, commands)
            assert state(client) == before
            assert commands.names.count("barrier") == 1
        assert adapter._client_bulk is False
    finally:
        adapter.close()


def test_a_unique_clash_restores_collection_by_collection_this_time(
    secantus: Service, client: Any, commands: Commands
) -> None:
    """Values of a unique index swapped between two documents: the one ``bulkWrite`` stops at the clash, the
    collection is restored on its own, exactly; the next restore uses the one command again."""
    seed(client, 10)
    client.shop.products.create_index("sku", unique=True)
    before = state(client)
    adapter = MongoAdapter(secantus.url)
    try:
        test = adapter.checkpoint("test")
        client.shop.products.update_one({"_id": 1}, {"$set": {"sku": "swap"}})
        client.shop.products.update_one({"_id": 2}, {"$set": {"sku": "sku-1"}})
        client.shop.products.update_one({"_id": 1}, {"$set": {"sku": "sku-2"}})
        client.crm.customers.delete_one({"_id": 3})
        rollback(adapter, test, commands)
        assert state(client) == before
        assert adapter._client_bulk is True
        write(client, 10, 1)
        rollback(adapter, test, commands)
        assert state(client) == before
        assert commands.names.count("bulkWrite") == 1
    finally:
        adapter.close()


def test_inserts_and_deletes_only_need_no_list_of_collections(
    secantus: Service, client: Any, commands: Commands
) -> None:
    """A test that only inserted and deleted (no update, no command) moved no counter that can make a
    collection without an event: no ``listDatabases`` or ``listCollections``; a new collection in a new
    database, made by an insert, is still dropped (its events say so)."""
    seed(client, 10)
    before = state(client)
    adapter = MongoAdapter(secantus.url)
    try:
        test = adapter.checkpoint("test")
        for value in range(2):
            client.shop.products.insert_one({"_id": f"new-{value}"})
            client.crm.customers.delete_one({"_id": value})
            client.brand_new.things.insert_one({"_id": value})
            rollback(adapter, test, commands)
            assert state(client) == before  # reads (a query is no command)
            assert client.brand_new.things.find_one() is None
        assert "list" not in " ".join(commands.names), commands.names
        assert commands.names.count("barrier") == 1
        assert "brand_new" not in client.list_database_names()
    finally:
        adapter.close()


@contextlib.contextmanager
def noting_adapter(secantus: Service) -> Iterator[tuple[MongoAdapter, Any, Any]]:
    """An adapter, a client of its ``listener()``, and the test level's checkpoint (after the session's: the
    first checkpoint leaves no counters to compare with)."""
    adapter = MongoAdapter(secantus.url)
    noting: Any = MongoClient(secantus.url, event_listeners=[adapter.listener()])
    try:
        noting.admin.command("ping")  # its connection's handshake is a command the counters show
        adapter.checkpoint("session")
        yield adapter, noting, adapter.checkpoint("test")
    finally:
        noting.close()
        adapter.close()


def test_updates_through_a_noting_client_need_no_list_of_collections(
    secantus: Service, client: Any, commands: Commands
) -> None:
    """Updates (one statement or several, ``findAndModify``), inserts and deletes sent through a client of
    the adapter's ``listener()`` to collections that exist: the counters moved by exactly what it sent, so
    no collection can have been made, and no ``listDatabases`` or ``listCollections`` is sent."""
    seed(client, 10)
    before = state(client)
    with noting_adapter(secantus) as (adapter, noting, test):
        for value in range(3):
            write(noting, 10, value)
            noting.shop.products.update_many({"_id": {"$lt": 3}}, {"$set": {"stock": value}})
            noting.crm.customers.find_one_and_update({"_id": 5}, {"$set": {"stock": value}})
            noting.shop.orders.bulk_write([UpdateOne({"_id": i}, {"$set": {"a": 1}}) for i in (1, 2)])  # one command
            noting.shop.orders.update_one({"_id": "no such document"}, {"$set": {"a": 1}})  # matches nothing
            rollback(adapter, test, commands)
            assert state(client) == before
            assert commands.names.count("barrier") == 1
            assert "list" not in " ".join(commands.names), commands.names


@pytest.mark.parametrize(
    "ghost",
    ["another client's update", "a noting client's update of a new collection", "another client's update beside"],
)
def test_a_collection_an_update_made_is_put_back_whoever_sent_it(
    secantus: Service, client: Any, commands: Commands, ghost: str
) -> None:
    """An update that matches nothing in a collection that does not exist makes it (SecantusDB, no change
    event): sent by a client that notes nothing, alone or beside the noting client's updates of existing
    collections, or by the noting client itself to a new collection, the collections are listed and the
    new one is dropped."""
    seed(client, 10)
    before = state(client)
    with noting_adapter(secantus) as (adapter, noting, test):
        if ghost == "another client's update beside":
            noting.shop.products.update_one({"_id": 1}, {"$set": {"stock": 0}})
            noting.shop.orders.update_one({"_id": 1}, {"$set": {"stock": 0}})
        sender = noting if "noting" in ghost else client
        sender.elsewhere.ghost.update_one({"_id": 1}, {"$set": {"a": 1}})
        rollback(adapter, test, commands)
        assert "listCollections" in commands.names
        assert "elsewhere" not in client.list_database_names()
        assert state(client) == before


def test_a_noted_update_in_flight_while_the_counters_are_read_is_not_counted_on(
    secantus: Service, client: Any, commands: Commands
) -> None:
    """A noted command that started before a reading of the counters and ended after it may fall on either
    side of it: that window is not accounted for, and the collections are listed."""
    seed(client, 10)
    adapter = MongoAdapter(secantus.url)
    noter = adapter.listener()
    try:
        adapter.checkpoint("session")
        test = adapter.checkpoint("test")
        client.shop.products.update_one({"_id": 1}, {"$set": {"stock": 0}})
        started = monitoring.CommandStartedEvent(
            {"update": "products", "updates": [{}]}, "shop", 1, adapter._addresses()[0], 1, None
        )
        noter.started(started)  # in flight from now, for the rest of the test
        rollback(adapter, test, commands)
        assert "listCollections" in commands.names
        assert adapter._window is None
    finally:
        adapter.close()


MONGO_CLIENT_SUITE = """
import pymongo
import pytest
from pymongo import monitoring

class Lists(monitoring.CommandListener):
    names = []
    def started(self, event):
        if event.command_name in ("listDatabases", "listCollections"):
            self.names.append(event.command_name)
    def succeeded(self, event):
        pass
    def failed(self, event):
        pass

monitoring.register(Lists())  # the adapter's client is made later, with the session's server

@pytest.fixture(scope="session", autouse=True)
def catalogue(mongo_client):
    mongo_client.shop.products.insert_many([{"_id": i, "stock": 10} for i in range(20)])

SEEN = []

def test_updates_through_mongo_client(mongo_client):
    SEEN.append(len(Lists.names))
    mongo_client.shop.products.update_one({"_id": 1}, {"$set": {"stock": 0}})
    mongo_client.shop.products.update_many({"_id": {"$lt": 5}}, {"$inc": {"stock": 1}})

def test_they_cost_no_list_of_collections(mongo_client):
    assert len(Lists.names) == SEEN[0], Lists.names
    assert mongo_client.shop.products.find_one({"_id": 1})["stock"] == 10

def test_an_update_of_a_new_collection_through_another_client(mongo_service, mongo_client):
    other = pymongo.MongoClient(mongo_service.url)
    other.shop.ghost.update_one({"_id": 1}, {"$set": {"a": 1}})
    mongo_client.shop.products.update_one({"_id": 2}, {"$set": {"stock": 0}})
    other.close()

def test_the_new_collection_is_gone(mongo_client):
    assert mongo_client.shop.list_collection_names() == ["products"]
    assert mongo_client.shop.products.find_one({"_id": 2})["stock"] == 10
"""


def test_mongo_client_notes_its_updates(pytester: pytest.Pytester, secantus: Service, client: Any) -> None:
    """Through the plugin: an update of an existing collection through ``mongo_client`` costs no list of
    collections; an update that matches nothing in a new collection, through another client, is put back."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_noting=MONGO_CLIENT_SUITE)
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={secantus.url}", "-p", "no:randomly")
    result.assert_outcomes(passed=4)
