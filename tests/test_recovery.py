"""The user's data survives every way a run can end: fault injection with real servers on loopback.

Each test seeds a server the plugin did not start (redis-server, SecantusDB,
noida-db) with data of the user's own, runs pytest with the plugin against it in
a subprocess, ends that run badly at a chosen point (SIGKILL, SIGTERM, a second
Ctrl-C), and checks that the user's data is exactly back after the run itself or
after the next one (or ``--rollback-recover``), with one line saying so, and that
nothing of the plugin's is left on the server or in the state directory.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from conftest import INNER, clear_elasticsearch, clear_mongo

from pytest_rollback.adapters.redis import redis_state
from pytest_rollback.api import Service
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import free_port, local
from pytest_rollback.signals import HELD_NOTE

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
MARK = "reached"


# -- running an inner pytest we can kill --------------------------------------------------
class Inner:
    """An inner pytest run in a subprocess of its own (its output in ``out``)."""

    def __init__(self, cwd: Path, args: list[str]) -> None:
        self.cwd = cwd
        self.out = cwd / f"out-{time.monotonic_ns()}.txt"
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", *INNER, "-p", "no:randomly", *args],
                cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def wait_for(self, name: str = MARK, timeout: float = 60) -> None:
        """Wait until the inner run writes the file ``name`` (a point in its run), then remove the file."""
        path = self.cwd / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the inner run ended before {name!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the inner run never reached {name!r}:\n{self.text()}")
            time.sleep(0.02)
        path.unlink()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def text(self) -> str:
        return self.out.read_text(errors="replace")


def inner(pytester: pytest.Pytester, *args: str) -> Inner:
    return Inner(pytester.path, list(args))


def run(pytester: pytest.Pytester, *args: str) -> tuple[int, str]:
    """An inner run to its end: exit code and output."""
    r = inner(pytester, *args)
    return r.finish(), r.text()


def killed(pytester: pytest.Pytester, *args: str) -> Inner:
    """An inner run SIGKILLed once its test has written ``reached``; it has ended when this returns."""
    r = inner(pytester, *args)
    r.wait_for()
    r.proc.kill()
    r.finish()
    return r


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def journals(state_dir: Path) -> list[Path]:
    return sorted(p.parent for p in state_dir.glob("held/*/journal/run.json"))


# -- Redis ----------------------------------------------------------------------------------
@pytest.fixture
def redis_server() -> Iterator[Service]:
    """A redis-server of its own for each test (tests change its configuration)."""
    settings = StoreSettings("redis", "local", None, "", False, None, None)  # type: ignore[arg-type]
    service = local.redis(settings)
    yield service
    service.stop()


def seed_redis(url: str) -> Callable[[], Any]:
    """The user's own data (5,000 keys of every type, expiries, two databases); returns how to read it all."""
    client = redis.Redis.from_url(url)
    client.config_set("notify-keyspace-events", "Ex")  # the user's own flags, not the plugin's
    pipe = client.pipeline(transaction=False)
    for i in range(4000):
        pipe.set(f"user:{i}", f"v{i}")
    for i in range(300):
        pipe.hset(f"hash:{i}", mapping={"a": i, "b": "x"})
        pipe.rpush(f"list:{i}", *range(5))
        pipe.sadd(f"set:{i}", *range(3))
        pipe.zadd(f"zset:{i}", {"m": i})
    for i in range(100):
        pipe.pexpireat(f"user:{i}", 4102444800000 + i)
    pipe.xadd("stream", {"f": "1"})
    pipe.execute()
    base = url.rsplit("/", 1)[0]
    other = redis.Redis.from_url(f"{base}/2")  # (a db= argument would lose to the URL's own database)
    other.mset({f"db2:{i}": i for i in range(100)})
    other.close()
    clients: dict[int, Any] = {}

    def client_for(db: int) -> Any:
        if db not in clients:
            clients[db] = redis.Redis.from_url(f"{base}/{db}")
        return clients[db]

    def read() -> Any:
        config = client.config_get("*")
        return redis_state(client_for), {k: config[k] for k in ("notify-keyspace-events", "maxmemory")}

    assert {db for db, _ in read()[0]} == {0, 2}
    return read


REDIS_TESTS = """
import pathlib, time
import pytest

@pytest.fixture(scope="module")
def module_data(redis_client):
    redis_client.set("module:key", "m")

def test_flush_then_wait(redis_client, module_data):
    redis_client.flushall()
    redis_client.set("test:key", 1)
    redis_client.config_set("maxmemory", "100mb")
    pathlib.Path("reached").write_text("1")
    time.sleep(120)
"""


def test_redis_sigkill_during_a_test_is_put_back_by_the_next_run(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(test_flush=REDIS_TESTS, test_other="def test_other(redis_client): redis_client.set('o', 1)")
    r = killed(pytester, "test_flush.py", f"--rollback-redis-url={redis_server.url}")
    damaged = read()
    assert damaged != before and damaged[1]["notify-keyspace-events"] != "Ex", "the kill should leave damage"
    assert len(journals(state_dir)) == 1

    code, out = run(pytester, "test_other.py", f"--rollback-redis-url={redis_server.url}")
    assert code == 0, out
    recovered = lines_with(out, "put back as it was before an interrupted run")
    assert len(recovered) == 1, out
    assert recovered[0].startswith(f"pytest-rollback: redis at {redis_server.host}:{redis_server.port}: ")
    assert f"pid {r.proc.pid} on" in recovered[0]
    assert read() == before
    assert journals(state_dir) == []


LIBRARY = "#!lua name=userlib\nredis.register_function('userfn', function() return 1 end)"


def test_redis_sigkill_after_function_flush_and_acl_changes_puts_them_back(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    """Functions and ACL users are no keys, but the user's too: the journal keeps them."""
    client = redis.Redis.from_url(redis_server.url)
    if int(client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("functions need Redis 7; this machine's redis-server is older")
    client.function_load(LIBRARY)
    client.acl_setuser("alice", enabled=True, passwords=["+pw"], keys=["app:*"], commands=["+get"])

    def objects() -> Any:
        return client.function_dump(), sorted(client.acl_list())

    before = objects()
    pytester.makeini(INI)
    pytester.makepyfile(
        test_objects="""
        import pathlib, time

        def test_objects(redis_client):
            redis_client.function_flush()
            redis_client.acl_deluser("alice")
            redis_client.acl_setuser("mallory", enabled=True, nopass=True, commands=["+@all"], keys=["*"])
            pathlib.Path("reached").write_text("1")
            time.sleep(120)
        """,
        test_other="def test_other(redis_client): pass",
    )
    killed(pytester, "test_objects.py", f"--rollback-redis-url={redis_server.url}")
    assert objects() != before, "the kill should leave the functions and users changed"
    code, out = run(pytester, "test_other.py", f"--rollback-redis-url={redis_server.url}")
    assert code == 0, out
    recovered = lines_with(out, "put back as it was before an interrupted run")
    assert len(recovered) == 1 and "ACL users alice, mallory" in recovered[0] and "functions" in recovered[0], out
    assert objects() == before
    assert journals(state_dir) == []
    client.function_flush()
    client.acl_deluser("alice")
    client.close()


def test_redis_sigterm_ends_the_run_like_ctrl_c_and_puts_everything_back(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(test_flush=REDIS_TESTS)
    r = inner(pytester, f"--rollback-redis-url={redis_server.url}")
    r.wait_for()
    r.signal(signal.SIGTERM)
    assert r.finish() == pytest.ExitCode.INTERRUPTED, r.text()
    assert read() == before
    assert journals(state_dir) == []


KILL_IN_CHECKPOINT = """
import os, pathlib, time
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_rollback_checkpoint(adapter, label):
    if label and label.startswith("test ") and os.environ.get("KILL_POINT") == "checkpoint":
        pathlib.Path("reached").write_text("1")
        time.sleep(120)
    return (yield)

@pytest.hookimpl(trylast=True)
def pytest_rollback_after_rollback(adapter, checkpoint, report):
    if os.environ.get("KILL_POINT") == "end" and report.label and report.label.endswith(" start"):
        pathlib.Path("reached").write_text(adapter.name)
        time.sleep(120)
"""


@pytest.mark.parametrize("point", ["checkpoint", "end"])
def test_redis_sigkill_during_a_checkpoint_or_the_end_of_run_restore(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makeconftest(KILL_IN_CHECKPOINT)
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture(scope="module")
        def wrecked(redis_client):
            redis_client.flushdb()
            redis_client.delete("db2:1")

        def test_a(redis_client, wrecked):
            redis_client.set("x", 1)
        """
    )
    monkeypatch.setenv("KILL_POINT", point)
    killed(pytester, f"--rollback-redis-url={redis_server.url}")
    monkeypatch.delenv("KILL_POINT")
    if point == "checkpoint":
        assert read() != before, "the module fixture's writes should be there when the run dies"
    code, out = run(pytester, "--rollback-recover")
    assert code == 0, out
    assert len(lines_with(out, "pytest-rollback: redis at ")) == 1, out
    assert read() == before
    assert journals(state_dir) == []
    code, out = run(pytester, "--rollback-recover")
    assert code == 0 and "nothing to recover" in out


def test_a_second_ctrl_c_does_not_cut_the_end_of_run_restore_short(
    pytester: pytest.Pytester, redis_server: Service, secantus: Service, state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    mongo = pymongo.MongoClient(secantus.url)
    clear_mongo(mongo)
    mongo.shop.items.insert_many([{"_id": i, "n": i} for i in range(200)])
    pytester.makeini(INI)
    pytester.makeconftest(KILL_IN_CHECKPOINT.replace("time.sleep(120)", "time.sleep(3)"))
    pytester.makepyfile(
        test_a="""
        import pathlib, time

        def test_a(redis_client, mongo_client):
            redis_client.flushall()
            mongo_client.drop_database("shop")
            pathlib.Path("started").write_text("1")
            time.sleep(120)
        """
    )
    monkeypatch.setenv("KILL_POINT", "end")
    r = inner(pytester, f"--rollback-redis-url={redis_server.url}", f"--rollback-mongo-url={secantus.url}")
    r.wait_for("started")
    r.signal(signal.SIGINT)  # the first Ctrl-C: the session ends and puts the stores back
    r.wait_for()  # the first store is back, the other not yet
    r.signal(signal.SIGINT)  # a second one, impatient
    assert r.finish() == pytest.ExitCode.INTERRUPTED, r.text()
    out = r.text()
    assert HELD_NOTE in out, out
    assert "Traceback" not in out and "pymongo" not in out, out
    assert read() == before
    assert sorted(d["_id"] for d in mongo.shop.items.find()) == list(range(200))
    assert journals(state_dir) == []
    mongo.close()


def test_a_second_session_on_a_held_server_is_refused_with_one_line(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(
        test_slow="""
        import pathlib, time

        def test_slow(redis_client):
            redis_client.set("first", 1)
            pathlib.Path("reached").write_text("1")
            for _ in range(600):  # until the outer test is done with the second run (not a fixed time: load)
                if pathlib.Path("go").exists():
                    break
                time.sleep(0.1)
            assert redis_client.get("first") == b"1"
            assert not redis_client.exists("second")
        """,
        test_fast="def test_fast(redis_client): redis_client.set('second', 1)",
    )
    first = inner(pytester, "test_slow.py", f"--rollback-redis-url={redis_server.url}")
    first.wait_for()
    other_db = redis_server.url.rsplit("/", 1)[0] + "/3"  # another database of the same server
    code, out = run(pytester, "test_fast.py", f"--rollback-redis-url={other_db}")
    (pytester.path / "go").write_text("1")
    assert code == pytest.ExitCode.USAGE_ERROR
    refused = lines_with(out, "is held by another pytest run")
    assert len(refused) == 1 and f"(pid {first.proc.pid} on " in refused[0], out
    assert refused[0].startswith(f"ERROR: pytest-rollback: redis at {redis_server.host}:{redis_server.port} ")
    assert refused[0].endswith("wait for it to end, or give this run another server (--rollback-redis-url)")
    assert first.finish() == 0, first.text()
    assert read() == before
    assert journals(state_dir) == []


def test_a_journal_that_cannot_be_replayed_stops_the_run_and_stays(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    """A damaged server is never taken as the run's starting state: the run stops, the journal waits."""
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(test_flush=REDIS_TESTS, test_other="def test_other(redis_client): pass")
    killed(pytester, "test_flush.py", f"--rollback-redis-url={redis_server.url}")
    (journal,) = journals(state_dir)
    keys = journal / "redis-keys.bin"
    keys.write_bytes(keys.read_bytes()[:-7])  # a disk that lost the end of the file
    code, out = run(pytester, "test_other.py", f"--rollback-redis-url={redis_server.url}")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    failed = lines_with(out, "could not put back what an interrupted run")
    assert len(failed) == 1 and failed[0].endswith("then run pytest --rollback-recover"), out
    assert journals(state_dir) == [journal]
    assert read() != before


# -- MongoDB and Elasticsearch ----------------------------------------------------------------
def mongo_state(client: Any) -> Any:
    out = {}
    for db in sorted(client.list_database_names()):
        if db in ("admin", "local", "config"):
            continue
        for info in client[db].list_collections():
            coll = client[db][info["name"]]
            indexes = sorted((i["name"], tuple(i["key"].items()), bool(i.get("unique"))) for i in coll.list_indexes())
            docs = sorted((repr(d["_id"]), repr(d)) for d in coll.find())
            out[(db, info["name"])] = (repr(sorted(info.get("options", {}).items())), indexes, docs)
    return out


@pytest.fixture
def mongo_seeded(secantus: Service) -> Iterator[tuple[Any, Any]]:
    client: Any = pymongo.MongoClient(secantus.url)
    clear_mongo(client)
    client.shop.items.insert_many([{"_id": i, "name": f"item {i}", "tags": ["a", i]} for i in range(500)])
    client.shop.items.create_index("name", unique=True)
    client.shop.create_collection("log", capped=True, size=100000)
    client.shop.log.insert_one({"_id": 1, "line": "started"})
    client.crm.people.insert_many([{"_id": f"p{i}", "age": i} for i in range(50)])
    before = mongo_state(client)
    yield client, before
    clear_mongo(client)
    client.close()


def test_mongo_sigkill_after_drops_is_put_back_by_the_next_run(
    pytester: pytest.Pytester, secantus: Service, mongo_seeded: tuple[Any, Any], state_dir: Path
) -> None:
    client, before = mongo_seeded
    pytester.makeini(INI)
    pytester.makepyfile(
        test_drop="""
        import pathlib, time

        def test_drop(mongo_client):
            mongo_client.drop_database("crm")
            mongo_client.shop.items.drop_index("name_1")
            mongo_client.shop.items.delete_many({"_id": {"$lt": 100}})
            mongo_client.shop.log.drop()
            mongo_client.junk.stuff.insert_one({"x": 1})
            pathlib.Path("reached").write_text("1")
            time.sleep(120)
        """,
        test_other="def test_other(mongo_client): pass",
    )
    killed(pytester, "test_drop.py", f"--rollback-mongo-url={secantus.url}")
    assert mongo_state(client) != before
    code, out = run(pytester, "test_other.py", f"--rollback-mongo-url={secantus.url}")
    assert code == 0, out
    assert len(lines_with(out, "pytest-rollback: mongo at ")) == 1, out
    assert mongo_state(client) == before
    assert "__pytest_rollback__" not in client.list_database_names()
    assert journals(state_dir) == []


def es_state(client: Any) -> Any:
    from pytest_rollback.adapters.elasticsearch import normalize_settings

    out = {}
    for name, body in client.indices.get(index="*", expand_wildcards="all", flat_settings=True).items():
        client.indices.refresh(index=name)
        docs = client.search(index=name, size=1000, sort=["_doc"])["hits"]["hits"]
        out[name] = (
            body["mappings"],
            normalize_settings(body["settings"]),
            body.get("aliases"),
            sorted((h["_id"], repr(h["_source"])) for h in docs),
        )
    return out


def test_elasticsearch_sigkill_after_a_delete_is_put_back_by_the_next_run(
    pytester: pytest.Pytester, noida: Service, state_dir: Path
) -> None:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(noida.url)
    clear_elasticsearch(client)
    client.indices.create(index="products", mappings={"properties": {"name": {"type": "text"}}},
                          aliases={"catalogue": {}})
    for i in range(50):
        client.index(index="products", id=str(i), document={"name": f"p{i}"})
    client.indices.create(index="orders")
    client.index(index="orders", id="o1", document={"total": 3}, refresh=True)
    before = es_state(client)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_delete="""
        import pathlib, time

        def test_delete(es_client):
            es_client.indices.delete(index="products")
            es_client.index(index="orders", id="o2", document={"total": 4}, refresh=True)
            es_client.indices.create(index="junk")
            pathlib.Path("reached").write_text("1")
            time.sleep(120)
        """,
        test_other="def test_other(es_client): pass",
    )
    killed(pytester, "test_delete.py", f"--rollback-elasticsearch-url={noida.url}")
    left = client.indices.get(index=".pytest-rollback-*", expand_wildcards="all")
    assert left, "the killed run should leave its snapshots behind"
    code, out = run(pytester, "test_other.py", f"--rollback-elasticsearch-url={noida.url}")
    assert code == 0, out
    assert len(lines_with(out, "pytest-rollback: elasticsearch at ")) == 1, out
    assert es_state(client) == before
    assert not client.indices.get(index=".pytest-rollback-*,pytest-rollback-probe-*", expand_wildcards="all")
    assert journals(state_dir) == []
    clear_elasticsearch(client)
    client.close()


def test_journals_of_servers_this_run_does_not_use_are_mentioned_in_one_line(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    seed_redis(redis_server.url)
    pytester.makeini(INI)
    pytester.makepyfile(test_flush=REDIS_TESTS, test_plain="def test_plain(): pass")
    killed(pytester, "test_flush.py", f"--rollback-redis-url={redis_server.url}")
    code, out = run(pytester, "test_plain.py")
    assert code == 0, out
    pending = lines_with(out, "left by interrupted runs")
    assert pending == [
        f"pytest-rollback: 1 server(s) left by interrupted runs are not used by this run and still wait to be "
        f"put back (redis at {redis_server.host}:{redis_server.port}); run pytest --rollback-recover"
    ], out
    assert len(journals(state_dir)) == 1
    code, out = run(pytester, "--rollback-recover")
    assert code == 0 and len(lines_with(out, "put back as it was before an interrupted run")) == 1, out


def test_the_state_directory_is_the_users_own(redis_server: Service, state_dir: Path,
                                              pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_flush=REDIS_TESTS)
    seed_redis(redis_server.url)
    r = inner(pytester, f"--rollback-redis-url={redis_server.url}")
    r.wait_for()
    (journal,) = journals(state_dir)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [journal, *journal.iterdir()] if not p.name.endswith(".lock")}
    r.proc.kill()
    r.finish()
    assert modes.pop("journal") == 0o700
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    run(pytester, "--rollback-recover")




# -- xdist on one server ------------------------------------------------------------------------
XDIST_REDIS = """
import textwrap
import time
import pytest
import redis

@pytest.fixture(scope="session")
def seeded(redis_client):
    redis_client.set("session:seed", 1)

def test_flushall(redis_client, seeded):
    time.sleep(0.3)
    redis_client.flushall()

def test_swapdb(redis_client, seeded):
    time.sleep(0.3)
    redis_client.swapdb(0, 2)

def test_fixed_database(redis_service, seeded):
    fixed = redis.Redis(host=redis_service.host, port=redis_service.port, db=15)
    fixed.set("lock:jobs", "held")
    fixed.close()

@pytest.mark.parametrize("i", range(8))
def test_own_database_is_pristine(redis_client, seeded, i):
    time.sleep(0.1)
    assert redis_client.get("session:seed") == b"1"
    redis_client.set(f"mine:{i}", i)
"""


def test_xdist_on_one_redis_loses_nothing_and_says_what_went_beyond_a_workers_database(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(test_x=XDIST_REDIS)
    code, out = run(pytester, "-n", "2", f"--rollback-redis-url={redis_server.url}", "-W", "always")
    assert read() == before, "every database is back exactly at the end"
    assert journals(state_dir) == []
    assert "which no xdist worker owns" in out and "15:lock:jobs" in out, out
    gaps = " ".join(lines_with(out, "ran on the server the xdist workers share"))
    assert "FLUSHALL" in gaps and "SWAPDB" in gaps, out
    assert "FLUSHDB" not in gaps, "a worker's own full restore must not make the others restore in full"
    assert len(lines_with(out, "that tests changed outside their xdist worker's own share of the server")) == 1, out
    assert code in (0, 1), out  # a pristine-database test may fail while another worker flushes: that is said


def test_xdist_run_killed_is_put_back_whole_by_the_next_run(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x="""
        import pathlib, time
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_wreck(redis_client, i):
            redis_client.set(f"w:{i}", i)
            if i == 0:
                redis_client.flushall()
                pathlib.Path("reached").write_text("1")
            time.sleep(120)
        """
    )
    r = inner(pytester, "-n", "2", f"--rollback-redis-url={redis_server.url}")
    r.wait_for()
    time.sleep(0.5)
    r.proc.kill()  # the controller only: its workers lose it and end
    r.finish()
    code, out = run(pytester, "--rollback-recover")
    assert code == 0, out
    assert read() == before
    assert journals(state_dir) == []


def test_xdist_on_one_mongo_puts_back_databases_no_worker_owns(
    pytester: pytest.Pytester, secantus: Service, mongo_seeded: tuple[Any, Any], state_dir: Path
) -> None:
    client, before = mongo_seeded
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x="""
        import time
        import pytest

        def test_drops_the_users_database(mongo_client):
            time.sleep(0.2)
            mongo_client.drop_database("crm")

        def test_writes_a_fixed_database(mongo_client):
            mongo_client.shared.jobs.insert_one({"_id": "lock"})

        @pytest.mark.parametrize("i", range(6))
        def test_own_database(mongo_db, i):
            time.sleep(0.05)
            assert mongo_db.list_collection_names() == []
            mongo_db.mine.insert_one({"i": i})
        """
    )
    url = secantus.url.replace("/?", "/app?")
    code, out = run(pytester, "-n", "2", f"--rollback-mongo-url={url}", "-W", "always")
    assert code == 0, out
    assert mongo_state(client) == before
    assert "__pytest_rollback__" not in client.list_database_names()
    warned = " ".join(lines_with(out, "in databases no xdist worker owns"))
    assert "shared.jobs" in warned and "crm" in warned, out
    assert len(lines_with(out, "that tests changed outside their xdist worker's own share")) == 1, out
    assert journals(state_dir) == []


def test_xdist_on_one_elasticsearch_puts_back_indices_no_worker_owns(
    pytester: pytest.Pytester, noida: Service, state_dir: Path
) -> None:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(noida.url)
    clear_elasticsearch(client)
    client.indices.create(index="products", aliases={"catalogue": {}})
    for i in range(20):
        client.index(index="products", id=str(i), document={"name": f"p{i}"})
    client.indices.refresh(index="products")
    before = es_state(client)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x="""
        import pytest

        def test_deletes_the_users_index(es_client):
            es_client.indices.delete(index="products")

        @pytest.mark.parametrize("i", range(4))
        def test_own_indices(es_client, elasticsearch_service, i):
            es_client.index(index=elasticsearch_service.extra["prefix"] + "mine", document={"i": i})
        """
    )
    code, out = run(pytester, "-n", "2", f"--rollback-elasticsearch-url={noida.url}")
    assert code == 0, out
    assert es_state(client) == before
    assert not client.indices.get(index=".pytest-rollback-*,pytest-rollback-probe-*", expand_wildcards="all")
    assert len(lines_with(out, "that tests changed outside their xdist worker's own share")) == 1, out
    assert journals(state_dir) == []
    clear_elasticsearch(client)
    client.close()


# -- every store, every point, SIGKILL and SIGTERM -------------------------------------------
#: per store: the URL option, a fixture that writes at module scope, and a destructive test
STORE_TESTS = {
    "mongo": (
        "--rollback-mongo-url",
        """
        @pytest.fixture(scope="module")
        def wrecked(mongo_client):
            mongo_client.shop.items.delete_many({"_id": {"$lt": 10}})

        def test_a(mongo_client, wrecked):
            mongo_client.drop_database("crm")
            mongo_client.shop.log.drop()
            mongo_client.shop.items.update_many({}, {"$set": {"tags": []}})
        """,
    ),
    "elasticsearch": (
        "--rollback-elasticsearch-url",
        """
        @pytest.fixture(scope="module")
        def wrecked(es_client):
            es_client.delete(index="products", id="1", refresh=True)

        def test_a(es_client, wrecked):
            es_client.indices.delete(index="orders")
            es_client.indices.update_aliases(actions=[{"remove": {"index": "products", "alias": "catalogue"}}])
            es_client.index(index="products", id="new", document={"name": "n"}, refresh=True)
        """,
    ),
}
POINTS = """
import os, pathlib, time
import pytest

def reached():
    pathlib.Path("reached").write_text("1")
    time.sleep(float(os.environ.get("KILL_SLEEP", "120")))

@pytest.hookimpl(wrapper=True)
def pytest_rollback_checkpoint(adapter, label):
    if os.environ.get("KILL_POINT") == "checkpoint" and label and label.startswith("test "):
        reached()
    return (yield)

@pytest.hookimpl(trylast=True)
def pytest_rollback_after_rollback(adapter, checkpoint, report):
    if os.environ.get("KILL_POINT") == "end" and report.label and report.label.endswith(" start"):
        reached()

@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        if os.environ.get("KILL_POINT") == "test":
            reached()
"""


@pytest.fixture
def store_seeded(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(url, read)`` of a MongoDB or Elasticsearch server holding the user's own data."""
    store = request.param
    if store == "mongo":
        service = request.getfixturevalue("secantus")
        client, _ = request.getfixturevalue("mongo_seeded")
        yield service.url, lambda: mongo_state(client)
        return
    from elasticsearch import Elasticsearch

    service = request.getfixturevalue("noida")
    es = Elasticsearch(service.url)
    clear_elasticsearch(es)
    es.indices.create(index="products", mappings={"properties": {"name": {"type": "text"}}},
                      aliases={"catalogue": {}})
    for i in range(30):
        es.index(index="products", id=str(i), document={"name": f"p{i}"})
    es.indices.create(index="orders", settings={"index.refresh_interval": "5s"})
    es.index(index="orders", id="o1", document={"total": 3}, refresh=True)
    yield service.url, lambda: es_state(es)
    clear_elasticsearch(es)
    es.close()


@pytest.mark.parametrize("store_seeded", ["mongo", "elasticsearch"], indirect=True)
@pytest.mark.parametrize(
    ("point", "sig"),
    [("test", signal.SIGKILL), ("checkpoint", signal.SIGKILL), ("end", signal.SIGKILL),
     ("test", signal.SIGTERM), ("checkpoint", signal.SIGTERM)],
)
def test_mongo_and_elasticsearch_survive_a_kill_or_sigterm_at_every_point(
    pytester: pytest.Pytester, store_seeded: tuple[str, Callable[[], Any]], state_dir: Path,
    monkeypatch: pytest.MonkeyPatch, point: str, sig: int, request: pytest.FixtureRequest,
) -> None:
    url, read = store_seeded
    store = request.node.callspec.params["store_seeded"]
    option, tests = STORE_TESTS[store]
    before = read()
    pytester.makeini(INI)
    pytester.makeconftest(POINTS)
    pytester.makepyfile(test_a="import pytest\n" + textwrap.dedent(tests), test_other="def test_other(): pass")
    monkeypatch.setenv("KILL_POINT", point)
    if sig == signal.SIGTERM and point == "checkpoint":  # held until the checkpoint is over
        monkeypatch.setenv("KILL_SLEEP", "2")
    r = inner(pytester, "test_a.py", f"{option}={url}")
    r.wait_for()
    r.signal(sig)
    code = r.finish()
    monkeypatch.delenv("KILL_POINT")
    if sig == signal.SIGTERM:
        assert code == pytest.ExitCode.INTERRUPTED, r.text()
        assert read() == before, r.text()
        assert journals(state_dir) == []
        return
    assert len(journals(state_dir)) == 1
    code, out = run(pytester, "test_other.py", f"{option}={url}")
    assert code == 0, out
    assert len(lines_with(out, f"pytest-rollback: {store} at ")) == 1, out
    assert read() == before
    assert journals(state_dir) == []


def test_a_live_run_on_another_server_is_not_taken_for_an_interrupted_one(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    seed_redis(redis_server.url)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_slow="""
        import pathlib, time

        def test_slow(redis_client):
            pathlib.Path("reached").write_text("1")
            for _ in range(600):  # until the outer test has run the other two (not a fixed time: load)
                if pathlib.Path("go").exists():
                    break
                time.sleep(0.1)
        """,
        test_plain="def test_plain(): pass",
    )
    first = inner(pytester, "test_slow.py", f"--rollback-redis-url={redis_server.url}")
    first.wait_for()
    code, out = run(pytester, "test_plain.py")
    assert code == 0 and "left by interrupted runs" not in out, out
    code, out = run(pytester, "--rollback-recover")
    (pytester.path / "go").write_text("1")
    assert code == 0 and "nothing to recover" in out, out
    assert first.finish() == 0


def test_a_store_that_cannot_start_ends_the_run_with_the_others_put_back(
    pytester: pytest.Pytester, redis_server: Service, state_dir: Path
) -> None:
    """pytest skips sessionfinish when sessionstart fails: what was held is put back there and then."""
    read = seed_redis(redis_server.url)
    before = read()
    pytester.makeini(INI)
    pytester.makepyfile(test_plain="def test_plain(): pass")
    unreachable = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200"
    code, out = run(pytester, f"--rollback-redis-url={redis_server.url}", f"--rollback-mongo-url={unreachable}")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "mongo: cannot reach" in out, out
    assert read() == before
    assert journals(state_dir) == []
    code, out = run(pytester, f"--rollback-redis-url={redis_server.url}")
    assert code == 0, out  # the lease was let go
