"""MongoDB through the plugin, in inner pytest runs (pytester) on real wire-protocol servers.

The inner runs use SecantusDB, either given by URL (the ``external`` provider)
or started by the plugin (``embedded``), and mongomock in process.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from conftest import INNER, clear_mongo, docker_unavailable, restores_nothing, workers_log

from pytest_rollback.api import Service

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

#: The issue's example: a catalogue seeded once with a unique index, module and
#: class data, and tests that write, drop and index; each test checks that it
#: starts from exactly the state of its enclosing scopes.
SCOPES = """
import pytest

@pytest.fixture(scope="session", autouse=True)
def catalogue(mongo_db):
    mongo_db.products.insert_many([{"_id": i, "sku": f"s{i}", "stock": 10} for i in range(500)])
    mongo_db.products.create_index("sku", unique=True)
    mongo_db.products.create_index("stock", name="stock_ttl_like", sparse=True)
    mongo_db.carts.insert_many([{"_id": "c1", "items": ["s1"]}, {"_id": "c2", "items": []}])

def fresh(mongo_db):
    assert sorted(mongo_db.list_collection_names()) == ["carts", "products"]
    assert mongo_db.products.count_documents({}) == 500
    assert mongo_db.products.find_one({"sku": "s1"})["stock"] == 10
    assert sorted(i["name"] for i in mongo_db.products.list_indexes()) == ["_id_", "sku_1", "stock_ttl_like"]
    assert mongo_db.carts.count_documents({}) == 2

def test_checkout(mongo_db, rollback):
    fresh(mongo_db)
    mongo_db.orders.insert_one({"sku": "s1"})
    mongo_db.products.update_one({"sku": "s1"}, {"$inc": {"stock": -1}})
    mongo_db.products.drop_index("sku_1")
    mongo_db.products.create_index([("stock", -1), ("sku", 1)], name="extra")
    mongo_db.carts.drop()
    changes = rollback.changes()["mongo"]
    db = mongo_db.name
    assert f"{db}.orders" in changes.added and f"{db}.carts" in changes.removed
    assert f"{db}.products:1" in changes.modified

def test_next_test_sees_the_catalogue(mongo_db):
    fresh(mongo_db)

@pytest.fixture(scope="module")
def vip(mongo_db):
    mongo_db.users.insert_one({"_id": "vip", "tier": "gold"})

def test_module_data(mongo_db, vip):
    assert mongo_db.users.find_one({"_id": "vip"})["tier"] == "gold"
    mongo_db.users.update_one({"_id": "vip"}, {"$set": {"tier": "lead"}})
    mongo_db.products.delete_many({"_id": {"$lt": 100}})

def test_module_data_again(mongo_db, vip):
    assert mongo_db.users.find_one({"_id": "vip"})["tier"] == "gold"
    assert mongo_db.products.count_documents({}) == 500

class TestClassScope:
    @pytest.fixture(scope="class")
    def renamed(self, mongo_db):
        mongo_db.carts.rename("baskets")

    def test_in_class(self, mongo_db, renamed):
        assert "baskets" in mongo_db.list_collection_names()
        mongo_db.baskets.insert_one({"_id": "c3"})

    def test_in_class_again(self, mongo_db, renamed):
        assert mongo_db.baskets.count_documents({}) == 2

def test_after_the_class(mongo_db):
    assert "baskets" not in mongo_db.list_collection_names()
    assert "users" in mongo_db.list_collection_names()  # the module's data is still there
"""

OTHER_MODULE = """
def test_other_module_sees_only_session_data(mongo_db):
    assert sorted(mongo_db.list_collection_names()) == ["carts", "products"]
    assert mongo_db.products.count_documents({}) == 500
"""


@pytest.fixture
def server(secantus: Service) -> Iterator[Service]:
    client: Any = pymongo.MongoClient(secantus.url)
    clear_mongo(client)
    yield secantus
    client.close()


@pytest.fixture
def run(pytester: pytest.Pytester, server: Service) -> Callable[..., pytest.RunResult]:
    pytester.makeini(INI)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*INNER, f"--rollback-mongo-url={server.url}", *args)

    return run


def _url_with_db(service: Service, db: str) -> str:
    return f"mongodb://{service.host}:{service.port}/{db}?directConnection=true"


def test_every_scope_keeps_its_data_and_the_servers_data_survives(pytester: pytest.Pytester, server: Service) -> None:
    client: Any = pymongo.MongoClient(server.url)
    client.before.keep.insert_one({"_id": "there before the session"})
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={_url_with_db(server, 'shop')}", "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: mongo via external at *version 8.2.11*tracking rollback*"])
    # what the session wrote is gone; what was there before is intact
    assert [d["_id"] for d in client.before.keep.find()] == ["there before the session"]
    assert "shop" not in client.list_database_names()
    assert "products" not in client.shop.list_collection_names()
    client.close()


def _where(request: pytest.FixtureRequest, kind: str) -> list[str]:
    """The inner run's options for ``kind``: SecantusDB by URL (tracking), or mongomock in process."""
    if kind == "mongomock":
        return ["--rollback-provider=embedded", "--rollback-mongo-embedded=mongomock"]
    return [f"--rollback-mongo-url={request.getfixturevalue('server').url}"]


@pytest.mark.parametrize("kind", ["secantusdb", "mongomock"])
def test_verify_compares_the_whole_state_after_every_restore(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, kind: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, *_where(request, kind), "--rollback-verify", "-p", "no:randomly")
    result.assert_outcomes(passed=8)


@pytest.mark.parametrize("kind", ["secantusdb", "mongomock"])
def test_verify_catches_a_restore_that_leaves_a_write_behind(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, kind: str
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(restores_nothing("mongo"))
    pytester.makepyfile(
        """
        def test_writes(mongo_db):
            mongo_db.orders.insert_one({"_id": 7, "status": "new"})
        """
    )
    result = pytester.runpytest(*INNER, *_where(request, kind), "--rollback-verify")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*verify: mongo differs from the checkpoint after restore*orders*7*absent at checkpoint*"]
    )


@pytest.mark.parametrize("embedded", ["secantusdb", "mongomock"])
def test_embedded_providers_run_the_same_suite(pytester: pytest.Pytester, embedded: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded", f"--rollback-mongo-embedded={embedded}")
    result.assert_outcomes(passed=8)
    strategy = "tracking" if embedded == "secantusdb" else "journal"
    what = "SecantusDB" if embedded == "secantusdb" else "mongomock"
    line = f"*pytest-rollback: mongo via embedded at *{what}*ready in * ms, {strategy} rollback*"
    result.stdout.fnmatch_lines([line])


def test_the_embedded_secantusdb_takes_no_retryable_writes(pytester: pytest.Pytester) -> None:
    """SecantusDB keeps a reply per retryable write for 30 minutes and scans them all on each one (past
    10,000 it sorts them), so a long run's writes grew slower and slower (0.46 ms per update at first,
    2.4 ms after 12,000): the embedded server's URL turns retryable writes off, for ``mongo_client``,
    the adapter's own writes and any client made from ``mongo_service.url``."""
    pytester.makeini(INI)
    pytester.makeconftest("""
        from pymongo import monitoring

        SENT = []


        class Listener(monitoring.CommandListener):
            def started(self, event):
                if event.command_name in ("insert", "update", "delete", "findAndModify", "bulkWrite"):
                    SENT.append((event.command_name, "txnNumber" in event.command))

            def succeeded(self, event):
                pass

            def failed(self, event):
                pass


        monitoring.register(Listener())
    """)
    pytester.makepyfile(test_a="""
        import pymongo
        from conftest import SENT


        def test_writes(mongo_client, mongo_service):
            assert "retryWrites=false" in mongo_service.url
            mongo_client.shop.products.insert_one({"_id": 1})
            mongo_client.shop.products.update_one({"_id": 1}, {"$set": {"n": 2}})
            with pymongo.MongoClient(mongo_service.url) as own:
                own.shop.orders.insert_one({"_id": 1})


        def test_nothing_was_retryable(mongo_client):
            assert mongo_client.shop.products.count_documents({}) == 0
            assert len(SENT) >= 4, SENT  # the test's three, and the restore's own
            assert not [name for name, retryable in SENT if retryable], SENT
    """)
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded", "--rollback-mongo-embedded=secantusdb")
    result.assert_outcomes(passed=2)


def test_auto_without_docker_or_mongod_picks_the_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_a="def test_one(mongo_service):\n    assert mongo_service.provider == 'embedded'\n")
    paths = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in paths if not Path(p, "mongod").exists()))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mongo via embedded*SecantusDB*"])


def test_a_test_that_asks_for_no_fixture_is_rolled_back_when_a_url_is_configured(
    run: Callable[..., pytest.RunResult], pytester: pytest.Pytester, server: Service
) -> None:
    pytester.makepyfile(
        f"""
        import pymongo

        def test_writes():
            pymongo.MongoClient("{server.url}").legacy.things.insert_one({{"_id": 1}})

        def test_sees_nothing():
            assert "legacy" not in pymongo.MongoClient("{server.url}").list_database_names()
        """
    )
    run("-p", "no:randomly").assert_outcomes(passed=2)


def test_async_client(run: Callable[..., pytest.RunResult], pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_async_write(async_mongo_client, mongo_db):
            db = async_mongo_client[mongo_db.name]
            await db.orders.insert_one({"_id": "async"})
            assert await db.orders.count_documents({}) == 1
            assert mongo_db.orders.count_documents({}) == 1  # the same server and database

        def test_gone(mongo_db):
            assert mongo_db.orders.count_documents({}) == 0
        """
    )
    result = run("-p", "asyncio", "-W", "error::pytest.PytestUnraisableExceptionWarning")
    result.assert_outcomes(passed=2)


def test_async_client_on_mongomock_says_why_not(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_a(async_mongo_client):\n    pass\n")
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded", "--rollback-mongo-embedded=mongomock")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*async_mongo_client needs a MongoDB server, and mongomock has no asyncio client*"])


def test_unreachable_url_is_one_line(pytester: pytest.Pytester) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    pytester.makeini(INI)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url=mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-rollback: mongo: cannot reach 127.0.0.1:{port} from the configured URL*"])
    assert "Traceback" not in result.stderr.str()


def test_remote_url_is_refused_before_any_connection(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*INNER, "--rollback-mongo-url=mongodb://192.0.2.7:27017/test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mongo: refusing '192.0.2.7' from the configured URL: it is not this machine*"])


def test_unknown_embedded_choice_is_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*INNER, "--rollback-mongo-embedded=tingodb")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest-rollback: --rollback-mongo-embedded is 'tingodb', which is not one of auto, secantusdb, mongomock*"]
    )


def test_local_provider_starts_mongod_from_path_as_a_replica_set(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``mongod`` on PATH is started on 127.0.0.1 as a replica set and waited for until primary.

    No mongod exists on this machine; the stand-in on PATH is SecantusDB behind a
    script that takes mongod's arguments and records them.
    """
    from pytest_rollback.services.embedded import find_secantusd

    secantusd = find_secantusd()
    assert secantusd is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "mongod"
    fake.write_text(
        f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
open({str(tmp_path / "args.txt")!r}, "w").write(" ".join(args))
opt = dict(zip(args[::2], args[1::2]))
os.execv({secantusd!r},
         [{secantusd!r}, "--host", opt["--bind_ip"], "--port", opt["--port"], "--storage-path", ":memory:"])
"""
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: mongo via local at mongodb://127.0.0.1:*tracking rollback*"])
    args = (tmp_path / "args.txt").read_text()
    assert "--bind_ip 127.0.0.1" in args and "--replSet rs0" in args


N_PAR = 24
#: Each test writes to its worker's database, waits so the workers overlap, and
#: checks that the database holds the module's seed plus its own write only.
PARALLEL = f"""
import os
import pathlib
import time

import pytest

LOG = pathlib.Path(__file__).with_name("workers.log")

@pytest.fixture(scope="module")
def seeded(mongo_db):
    mongo_db.items.insert_many([{{"_id": "seed1"}}, {{"_id": "seed2"}}])

@pytest.mark.parametrize("i", range({N_PAR}))
def test_isolated(seeded, mongo_db, mongo_service, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with LOG.open("a") as f:
        f.write(f"{{worker}} {{mongo_service.provider}} {{mongo_service.port}} {{mongo_db.name}}\\n")
    assert mongo_db.items.count_documents({{}}) == 2
    mongo_db.items.insert_one({{"_id": f"{{worker}}-{{i}}"}})
    mongo_db.shared.insert_one({{"i": i}})
    time.sleep(0.02)
    assert mongo_db.items.count_documents({{}}) == 3
    assert [d["i"] for d in mongo_db.shared.find()] == [i]
"""


def test_xdist_workers_share_one_embedded_server_with_a_database_each(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PARALLEL)
    result = pytester.runpytest_subprocess(
        *INNER, "-n", "2", "--rollback-provider=embedded", "--rollback-mongo-embedded=secantusdb", timeout=180
    )
    result.assert_outcomes(passed=N_PAR)
    seen = workers_log(pytester)
    assert set(seen) == {"gw0", "gw1"}, "both workers should have run tests"
    (w0,), (w1,) = seen["gw0"], seen["gw1"]
    assert w0[0] == w1[0] == "embedded"
    assert w0[1] == w1[1], "the workers should share one server"
    assert (w0[2], w1[2]) == ("test_gw0", "test_gw1")
    with socket.socket() as s:  # the controller stopped the shared server at the end
        assert s.connect_ex(("127.0.0.1", int(w0[1]))) != 0


def test_xdist_workers_get_a_database_each_on_a_configured_server(pytester: pytest.Pytester, server: Service) -> None:
    client: Any = pymongo.MongoClient(server.url)
    client.app_gw5.kept.insert_one({"_id": "not a worker's"})
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PARALLEL)
    url = _url_with_db(server, "app")
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", f"--rollback-mongo-url={url}", timeout=180)
    result.assert_outcomes(passed=N_PAR)
    port = str(server.port)
    assert workers_log(pytester) == {"gw0": {("external", port, "app_gw0")}, "gw1": {("external", port, "app_gw1")}}
    assert set(client.list_database_names()) - {"admin", "local", "config"} == {"app_gw5"}  # no trace either
    client.close()


@pytest.mark.docker
def test_docker_provider_starts_a_replica_set(pytester: pytest.Pytester) -> None:
    from pytest_rollback.options import DEFAULT_IMAGES

    reason = docker_unavailable(DEFAULT_IMAGES["mongo"])
    if reason is not None:
        pytest.skip(f"the Docker provider cannot run MongoDB here: {reason}")
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest_subprocess(*INNER, "--rollback-provider=docker", timeout=600)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["pytest-rollback: mongo via docker at mongodb://*, version *, *tracking*"])


#: The issue's leaks through the plugin: a full capped collection, collections made without a change event.
LEAKS = """
import pytest

@pytest.fixture(scope="module", autouse=True)
def data(mongo_db):
    mongo_db.create_collection("last5", capped=True, size=100_000, max=5)
    mongo_db.last5.insert_many([{"_id": i} for i in range(5)])
    mongo_db.made.update_one({"x": 1}, {"$set": {"y": 1}})  # no match, no upsert: made, with no event

def as_seeded(db):
    assert [d["_id"] for d in db.last5.find()] == [0, 1, 2, 3, 4]
    assert sorted(db.list_collection_names()) == ["last5", "made"]

def test_evicts_and_makes_collections(mongo_db):
    as_seeded(mongo_db)
    mongo_db.last5.insert_many([{"_id": i} for i in range(5, 8)])
    mongo_db.ghost1.update_one({"x": 1}, {"$set": {"y": 1}})
    mongo_db.ghost2.update_many({"x": 1}, {"$set": {"y": 1}})
    mongo_db.ghost3.replace_one({"x": 1}, {"y": 1})

def test_restore_makes_the_silent_collection_again(mongo_db, rollback):
    as_seeded(mongo_db)
    token = rollback.checkpoint()
    mongo_db.made.drop()
    mongo_db.last5.insert_one({"_id": 9})
    rollback.restore(token)
    as_seeded(mongo_db)

def test_after(mongo_db):
    as_seeded(mongo_db)
"""


def test_capped_evictions_and_collections_made_without_an_event_are_rolled_back(
    pytester: pytest.Pytester, server: Service
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_leaks=LEAKS)
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={server.url}", "--rollback-verify", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_verify_sees_a_capped_collection_s_order(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(restores_nothing("mongo"))
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module", autouse=True)
        def data(mongo_db):
            mongo_db.create_collection("last3", capped=True, size=100_000, max=3)
            mongo_db.last3.insert_many([{"_id": i} for i in range(3)])

        def test_reorders(mongo_db):
            mongo_db.last3.delete_one({"_id": 0})
            mongo_db.last3.insert_one({"_id": 0})  # the same documents, in another order
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={server.url}", "--rollback-verify")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*verify: mongo differs from the checkpoint after restore*last3*natural order*"])
