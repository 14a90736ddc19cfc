"""Redis for the randomized isolation suite: every type, expiries, scripts, transactions, flushes."""

from __future__ import annotations

import random
from typing import Any

import redis

STORE = "redis"
CLIENT_FIXTURE = "redis_client"
EXPECTED_ERRORS = (redis.ResponseError,)  # e.g. WRONGTYPE when a random key holds another type

KEYS = [f"k{i}" for i in range(12)]


def dump(client: Any) -> dict[str, Any]:
    """Every key of the worker's database: its type, serialized value and absolute expiry (ms)."""
    state: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        value = client.dump(key)
        expiry = client.pexpiretime(key)
        state[key.decode()] = (client.type(key).decode(), value, expiry)
    return state


def _key(rng: random.Random) -> str:
    return rng.choice(KEYS)


OPS = [
    lambda rng, c: c.set(_key(rng), rng.randrange(100)),
    lambda rng, c: c.set(_key(rng), "v", px=rng.randint(50_000, 90_000)),
    lambda rng, c: c.delete(_key(rng)),
    lambda rng, c: c.rpush(_key(rng), *range(rng.randint(1, 3))),
    lambda rng, c: c.hset(_key(rng), mapping={"a": rng.randrange(9), "b": 1}),
    lambda rng, c: c.sadd(_key(rng), rng.randrange(9)),
    lambda rng, c: c.zadd(_key(rng), {"m": rng.random()}),
    lambda rng, c: c.xadd(_key(rng), {"f": "v"}),
    lambda rng, c: c.incr(_key(rng)),
    lambda rng, c: c.expire(_key(rng), rng.randint(100, 1000)),
    lambda rng, c: c.persist(_key(rng)),
    lambda rng, c: c.rename(_key(rng), _key(rng)),
    lambda rng, c: c.eval("redis.call('SET', KEYS[1], ARGV[1])", 1, _key(rng), rng.randrange(9)),
    lambda rng, c: c.pipeline(transaction=True).set(_key(rng), 1).incr(_key(rng)).execute(),
    lambda rng, c: c.flushdb() if rng.random() < 0.2 else None,
]


def seed(client: Any, rng: random.Random, scope: str) -> None:
    for _ in range(rng.randint(1, 4)):
        client.set(f"{scope}:{rng.randrange(1000)}", rng.randrange(1000))
