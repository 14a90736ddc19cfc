"""The Redis adapter against a real redis-server (and the fakeredis snapshot path).

The property tests run random write sequences, checkpoint and roll back, and
compare the server's whole logical state (every key's type, value and absolute
expiry in every database) with the state at the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import absolute_expiry_ms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_rollback.adapters.redis import RedisAdapter, parse_url, redis_state
from pytest_rollback.api import Service
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import embedded

DBS = (0, 1, 5)
LUA_WRITE = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('LPUSH', KEYS[2], ARGV[1]); return 1"


@pytest.fixture(scope="module")
def fake_redis() -> Iterator[Service]:
    settings = StoreSettings("redis", "embedded", None, "", False, None, None)  # type: ignore[arg-type]
    service = embedded.redis(settings)
    yield service
    service.stop()




def _client(url: str, db: int) -> redis.Redis:
    p = parse_url(url)  # redis-py's from_url lets the URL's /0 win over db=
    return redis.Redis(host=p["host"], port=p["port"], db=db)


def _reset(url: str) -> dict[int, redis.Redis]:
    clients = {db: _client(url, db) for db in range(16)}
    clients[0].flushall()
    clients[0].config_set("notify-keyspace-events", "")
    return clients


def _state(url: str, clients: dict[int, redis.Redis]) -> dict[Any, Any]:
    return redis_state(lambda db: clients[db])


def assert_same_state(now: dict[Any, Any], then: dict[Any, Any]) -> None:
    """Equal content; absolute expiries equal (Redis 7) or within a few ms (Redis 6.2 has no PEXPIRETIME)."""
    assert {k: v[:2] for k, v in now.items()} == {k: v[:2] for k, v in then.items()}
    for key, (_, _, expiry) in now.items():
        other = then[key][2]
        assert (expiry < 0) == (other < 0) and abs(expiry - other) <= 50, (key, expiry, other)


def _seed(clients: dict[int, redis.Redis]) -> None:
    for db in DBS:
        r = clients[db]
        for i in range(5):
            r.set(f"s{i}", f"v{db}-{i}")
        r.set("ttl", "x", ex=3600)
        r.rpush("l", "a", "b", "c")
        r.sadd("set", "a", "b")
        r.zadd("z", {"a": 1.5, "b": 2})
        r.hset("h", mapping={"f": "1", "g": "2"})
        r.hset("h-ttl", mapping={"f": "1"})
        r.expire("h-ttl", 7200)
        r.xadd("st", {"k": "v"}, id="1-1")
        r.xgroup_create("st", "grp", id="0")


OPS = [
    "set", "append", "incr", "del", "expire", "persist", "lpush", "lpop", "sadd", "srem", "zadd", "zincrby",
    "hset", "hdel", "xadd", "xack_group", "rename", "move", "copy", "multi", "flushdb", "flushall", "swapdb",
    "lua", "unlink", "getdel",
]
FAKE_UNSUPPORTED = {"lua"}  # fakeredis needs the lupa package for EVAL

op_strategy = st.tuples(st.sampled_from(OPS), st.sampled_from(DBS), st.integers(0, 7), st.integers(0, 99))


def _apply(op: tuple[str, int, int, int], clients: dict[int, redis.Redis], fake: bool) -> None:
    name, db, i, n = op
    if fake and name in FAKE_UNSUPPORTED:
        name = "set"
    r = clients[db]
    key = ["s0", "s1", "l", "set", "z", "h", "st", "new"][i]
    try:
        if name == "set":
            r.set(key, n)
        elif name == "append":
            r.append(f"s{i % 5}", "x")
        elif name == "incr":
            r.incr(f"n{i}", n)
        elif name in ("del", "unlink"):
            getattr(r, "delete" if name == "del" else "unlink")(key)
        elif name == "getdel":
            r.getdel(f"s{i % 5}")
        elif name == "expire":
            r.expire(key, 1000 + n)
        elif name == "persist":
            r.persist("ttl")
        elif name == "lpush":
            r.lpush("l", n)
        elif name == "lpop":
            r.lpop("l")
        elif name == "sadd":
            r.sadd("set", n)
        elif name == "srem":
            r.srem("set", "a")
        elif name == "zadd":
            r.zadd("z", {f"m{n}": n})
        elif name == "zincrby":
            r.zincrby("z", 1.25, "a")
        elif name == "hset":
            r.hset("h", f"f{n}", n)
        elif name == "hdel":
            r.hdel("h", "f")
        elif name == "xadd":
            r.xadd("st", {"n": n})
        elif name == "xack_group":
            r.xreadgroup("grp", "consumer", {"st": ">"}, count=1)
        elif name == "rename":
            r.rename(key, f"renamed{n}")
        elif name == "move":
            r.move(key, DBS[(DBS.index(db) + 1) % len(DBS)])
        elif name == "copy":
            r.copy(key, f"copy{n}", replace=True)
        elif name == "multi":
            with r.pipeline(transaction=True) as pipe:
                pipe.set(f"tx{n}", n).lpush("l", "tx").hset("h", "tx", n).execute()
        elif name == "flushdb":
            r.flushdb()
        elif name == "flushall":
            r.flushall()
        elif name == "swapdb":
            r.swapdb(db, DBS[(DBS.index(db) + 1) % len(DBS)])
        elif name == "lua":
            r.eval(LUA_WRITE, 2, f"lua{n}", "l", n)
    except redis.ResponseError:
        pass  # wrong type, missing key for RENAME, ...: the server refused, nothing to undo


ops_lists = st.lists(op_strategy, max_size=20)


def _random_writes_roll_back_exactly(
    backend: str, first: list[Any], second: list[Any], nested: bool, again: list[Any]
) -> None:
    fake = _is_fake(backend)
    clients = _reset(backend)
    _seed(clients)
    adapter = RedisAdapter(backend)
    try:
        a = adapter.checkpoint("A")
        at_a = _state(backend, clients)
        for op in first:
            _apply(op, clients, fake)
        if nested:
            b = adapter.checkpoint("B")
            at_b = _state(backend, clients)
            for op in second:
                _apply(op, clients, fake)
            adapter.rollback(b)
            assert_same_state(_state(backend, clients), at_b)
            for op in again:
                _apply(op, clients, fake)
        adapter.rollback(a)
        assert_same_state(_state(backend, clients), at_a)
        # the checkpoint stays usable
        for op in again:
            _apply(op, clients, fake)
        adapter.rollback(a)
        assert_same_state(_state(backend, clients), at_a)
    finally:
        adapter.close()
        for c in clients.values():
            c.close()


_HYPO = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=60, **_HYPO)  # type: ignore[arg-type]
@given(first=ops_lists, second=ops_lists, nested=st.booleans(), again=ops_lists)
def test_random_writes_roll_back_exactly_on_redis_server(
    real_redis: Service, first: list[Any], second: list[Any], nested: bool, again: list[Any]
) -> None:
    """Tracking strategy on a real redis-server: every type, TTLs, databases, Lua, MULTI, FLUSH*, SWAPDB."""
    _random_writes_roll_back_exactly(real_redis.url, first, second, nested, again)


@settings(max_examples=12, **_HYPO)  # type: ignore[arg-type]
@given(first=ops_lists, second=ops_lists, nested=st.booleans(), again=ops_lists)
def test_random_writes_roll_back_exactly_on_fakeredis(
    fake_redis: Service, first: list[Any], second: list[Any], nested: bool, again: list[Any]
) -> None:
    """Snapshot strategy on fakeredis; limits: no EVAL (fakeredis needs lupa), so Lua steps become SETs."""
    _random_writes_roll_back_exactly(fake_redis.url, first, second, nested, again)


def _is_fake(url: str) -> bool:
    try:
        redis.Redis.from_url(url).info("server")
    except redis.ResponseError:
        return True
    return False


# -- focused behaviour on the real server ----------------------------------------


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
    client.close()


@pytest.fixture
def adapter(redis_url: str) -> Iterator[RedisAdapter]:
    a = RedisAdapter(redis_url)
    assert a.strategy == "tracking"
    yield a
    a.close()


def state_of(url: str) -> Callable[[], dict[Any, Any]]:
    return lambda: redis_state(lambda db: _client(url, db))


def test_nothing_written_restores_nothing(adapter: RedisAdapter, r: redis.Redis) -> None:
    r.set("a", 1)
    cp = adapter.checkpoint("t")
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("none", 0)


def test_only_written_keys_are_restored(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    r.mset({f"k{i}": i for i in range(200)})
    cp = adapter.checkpoint("t")
    before = state_of(redis_url)()
    r.set("k1", "x")
    r.delete("k2")
    r.set("new", 1)
    report = adapter.rollback(cp)
    assert report.mode == "incremental"
    assert report.restored == 3
    assert_same_state(state_of(redis_url)(), before)


@pytest.mark.parametrize("command", ["FLUSHDB", "FLUSHALL", "SWAPDB"])
def test_commands_without_events_force_an_exact_full_restore(
    adapter: RedisAdapter, r: redis.Redis, redis_url: str, command: str
) -> None:
    r.mset({"a": 1, "b": 2})
    _client(redis_url, 3).set("c", 3)
    cp = adapter.checkpoint("t")
    before = state_of(redis_url)()
    r.execute_command(*(["SWAPDB", 0, 3] if command == "SWAPDB" else [command]))
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert command in (report.reason or "")
    assert_same_state(state_of(redis_url)(), before)


def test_client_kill_of_every_connection(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    r.set("a", 1)
    cp = adapter.checkpoint("t")
    before = state_of(redis_url)()
    r.set("a", 2)
    me = r.client_id()
    for c in r.client_list():
        if int(c["id"]) != me:
            r.client_kill_filter(_id=c["id"])
    r.set("b", 1)  # written while the adapter is disconnected
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert "connection" in (report.reason or "")
    assert_same_state(state_of(redis_url)(), before)
    # and it keeps working, incrementally again
    cp2 = adapter.checkpoint("t2")
    r.set("c", 1)
    report = adapter.rollback(cp2)
    assert (report.mode, report.restored) == ("incremental", 1)
    assert_same_state(state_of(redis_url)(), before)


def test_event_overflow_drops_the_subscriber_and_forces_a_full_restore(
    adapter: RedisAdapter, r: redis.Redis, redis_url: str
) -> None:
    r.set("keep", 1)
    cp = adapter.checkpoint("t")
    r.config_set("client-output-buffer-limit", "pubsub 256kb 256kb 0")
    with r.pipeline(transaction=False) as pipe:
        for i in range(20_000):
            pipe.set(f"flood:{i:06d}:" + "x" * 40, i)
        pipe.execute()
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert r.dbsize() == 1 and r.get("keep") == b"1"


def test_disabling_notifications_is_detected(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    cp = adapter.checkpoint("t")
    r.config_set("notify-keyspace-events", "")
    r.set("unseen", 1)
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert not r.exists("unseen")
    assert "K" in r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    cp2 = adapter.checkpoint("t2")
    r.set("seen", 1)
    assert adapter.rollback(cp2).mode == "incremental"
    assert not r.exists("seen")


def test_100k_keys_then_ten_writes(adapter: RedisAdapter, r: redis.Redis) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(100_000):
            pipe.set(f"p:{i}", i)
        pipe.execute()
    cp = adapter.checkpoint("seeded")
    for i in range(10):
        r.set(f"p:{i}", "changed")
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 10)
    assert r.dbsize() == 100_000
    assert r.mget([f"p:{i}" for i in range(10)]) == [str(i).encode() for i in range(10)]
    cp2 = adapter.checkpoint("next test")
    assert adapter.rollback(cp2).mode == "none"


def test_lua_script_cache_survives(adapter: RedisAdapter, r: redis.Redis) -> None:
    sha = r.script_load(LUA_WRITE)
    cp = adapter.checkpoint("t")
    r.evalsha(sha, 2, "x", "y", "1")
    r.flushall()
    adapter.rollback(cp)
    assert r.script_exists(sha) == [True]
    assert not r.exists("x", "y")


def test_no_trace_in_any_database(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    r.set("mine", 1)
    cp = adapter.checkpoint("t")
    r.set("other", 1)
    adapter.rollback(cp)
    adapter.checkpoint("again")
    for db in range(16):
        c = _client(redis_url, db)
        assert c.keys("*") == ([b"mine"] if db == 0 else [])
        assert c.dbsize() == (1 if db == 0 else 0)


def test_ttl_keeps_its_absolute_expiry(adapter: RedisAdapter, r: redis.Redis) -> None:
    r.set("session", "x", ex=500)
    expiry = absolute_expiry_ms(r, "session")
    cp = adapter.checkpoint("t")
    r.persist("session")
    r.delete("session")
    adapter.rollback(cp)
    restored = absolute_expiry_ms(r, "session")
    if adapter._has_pexpiretime:
        assert restored == expiry
    else:  # Redis 6.2: read as server time + PTTL
        assert abs(restored - expiry) <= 50


def test_nested_checkpoints_and_release(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    state = state_of(redis_url)
    r.set("a", 0)
    c1 = adapter.checkpoint("1")
    s1 = state()
    r.set("a", 1)
    r.set("b", 1)
    c2 = adapter.checkpoint("2")
    s2 = state()
    r.set("a", 2)
    c3 = adapter.checkpoint("3")
    r.set("c", 3)
    adapter.release(c2)  # a middle checkpoint goes; rolling back past it stays exact
    adapter.rollback(c3)
    assert r.get("a") == b"2" and not r.exists("c")
    adapter.release(c3)
    r.set("d", 4)
    adapter.rollback(c1)
    assert_same_state(state(), s1)
    assert s2 != s1
    with pytest.raises(Exception, match="released"):
        adapter.rollback(c2)


def test_changes_lists_added_modified_removed(adapter: RedisAdapter, r: redis.Redis) -> None:
    r.mset({"keep": 1, "mod": 1, "gone": 1})
    cp = adapter.checkpoint("t")
    r.set("mod", 2)
    r.delete("gone")
    r.set("new", 1)
    changes = adapter.changes(cp)
    assert changes.added == {"0:new"}
    assert changes.modified == {"0:mod"}
    assert changes.removed == {"0:gone"}


def test_pre_existing_data_is_restored_by_the_first_checkpoint(r: redis.Redis, redis_url: str) -> None:
    r.set("existing", "precious")
    _client(redis_url, 7).rpush("jobs", "1", "2")
    before = state_of(redis_url)()
    adapter = RedisAdapter(redis_url)
    try:
        root = adapter.checkpoint("start")
        r.flushall()
        r.set("junk", 1)
        adapter.rollback(root)
    finally:
        adapter.close()
    assert_same_state(state_of(redis_url)(), before)


def test_writes_from_other_threads_are_tracked(adapter: RedisAdapter, r: redis.Redis, redis_url: str) -> None:
    import threading

    cp = adapter.checkpoint("t")

    def writer(n: int) -> None:
        c = _client(redis_url, n % 3)
        for i in range(50):
            c.set(f"thread{n}:{i}", i)
        c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 200)
    assert r.dbsize() == 0


def test_consumer_group_reads_without_events_are_restored(adapter: RedisAdapter, r: redis.Redis) -> None:
    """XREADGROUP by a known consumer and XACK change a stream without any keyspace event."""
    r.xadd("jobs", {"n": 1}, id="1-1")
    r.xadd("jobs", {"n": 2}, id="2-1")
    r.xgroup_create("jobs", "workers", id="0")
    r.xreadgroup("workers", "w1", {"jobs": ">"}, count=1)  # w1 exists from now on
    cp = adapter.checkpoint("t")
    before = r.xinfo_groups("jobs")
    pending = r.xpending("jobs", "workers")
    r.xreadgroup("workers", "w1", {"jobs": ">"}, count=1)
    r.xack("jobs", "workers", "1-1")
    report = adapter.rollback(cp)
    assert report.mode == "incremental"
    assert r.xinfo_groups("jobs") == before
    assert r.xpending("jobs", "workers") == pending
