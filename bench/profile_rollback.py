"""Where the time of one tracking rollback goes (a diagnostic, not a benchmark of record).

Run from the repository root::

    .venv/bin/python bench/profile_rollback.py            # N = 100,000 seeded keys
    .venv/bin/python bench/profile_rollback.py --n 1000 --cprofile

For k in (0, 10, 1000) keys written by a simulated test it splits ``rollback()``
into: the barrier (``INFO commandstats``, which also reads the keyspace events the
test's writes caused), the restore pipeline (``RESTORE``/``DEL`` of the touched
keys, whose own keyspace events come back on the same connection), and the rest
(bookkeeping in Python). It also reads the server's own time per command from
``INFO commandstats`` and times the pure-Python RESP3 parsing and encoding that the
adapter does per key, on synthetic input.

It wraps a few private methods of one ``RedisAdapter`` instance to time them, so it
follows the adapter's internals; ``redis_restore.py`` uses only the public API.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402
from redis_restore import placements, seed, settings, simulated_test  # noqa: E402

from pytest_rollback.adapters._resp3 import Resp3Connection, encode  # noqa: E402
from pytest_rollback.adapters.redis import RedisAdapter  # noqa: E402
from pytest_rollback.services import local  # noqa: E402

WRITES = (0, 10, 1000)
REPS = {0: 1000, 10: 1000, 1000: 60}
#: Commands the adapter sends around a test (checkpoint and rollback), for the server-time column.
ADAPTER_COMMANDS = ("info", "restore", "del", "select", "dump", "pexpiretime")


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else 0.0


class Probe:
    """Times the parts of ``adapter.rollback`` by wrapping them on this one instance."""

    def __init__(self, adapter: RedisAdapter) -> None:
        self.adapter = adapter
        self.phase = "other"
        self.spent: dict[str, float] = {}
        self.pushes: dict[str, int] = {}
        conn = adapter._conn
        assert conn is not None
        self.conn = conn
        adapter._drain = self._timed("barrier", adapter._drain)  # type: ignore[method-assign]
        adapter._write = self._timed("restore", adapter._write)  # type: ignore[method-assign]
        conn.send = self._timed_send(conn.send)  # type: ignore[method-assign]
        inner_push = adapter._on_push

        def on_push(msg: Any) -> None:
            self.pushes[self.phase] = self.pushes.get(self.phase, 0) + 1
            inner_push(msg)

        adapter._on_push = on_push  # type: ignore[method-assign]
        conn.on_push = on_push

    def reset(self) -> None:
        self.spent, self.pushes = {}, {}

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            outer, self.phase = self.phase, name
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0
                self.phase = outer

        return wrapper

    def _timed_send(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(commands: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(commands)
            finally:
                key = f"{self.phase}: encode+send"
                self.spent[key] = self.spent.get(key, 0.0) + time.perf_counter() - t0

        return wrapper


def server_usec(client: redis.Redis) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {name[8:]: (v["calls"], v["usec"]) for name, v in stats.items() if name.startswith("cmdstat_")}


def synthetic_costs(reps: int = 200) -> tuple[float, float]:
    """µs to parse one keyspace-event push, and to encode one RESTORE, with the adapter's code."""
    pushes = []
    for i in range(1000):
        parts = [b"pmessage", b"__keyspace@*__:*", b"__keyspace@0__:h:%07d" % i, b"hset"]
        pushes.append(b">4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    data = b"".join(pushes) + b"+OK\r\n"

    def parse() -> None:
        conn = Resp3Connection.__new__(Resp3Connection)  # no socket: the data is all in the buffer
        conn._buf, conn._pos, conn._sock = bytearray(data), 0, None
        conn.on_push = lambda msg: None
        conn.read_reply()

    cmds = [("RESTORE", b"h:%07d" % i, 0, b"x" * 80, "REPLACE") for i in range(1000)]

    def enc() -> None:
        b"".join(encode(c) for c in cmds)

    out = []
    for fn in (parse, enc):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(statistics.median(times) * 1e6 / 1000)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="seeded keys (default 100000)")
    parser.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions for k=1000")
    parser.add_argument(
        "--same-cpu", action="store_true", help="run this process and redis-server on one CPU (default: two)"
    )
    args = parser.parse_args(argv)

    service = local.redis(settings())
    split, same, own_cpus = placements()
    place = same if args.same_cpu and same is not None else split
    try:
        place.apply(int(service.extra["pid"]))
        client = redis.Redis.from_url(service.url)
        seed(client, args.n)
        adapter = RedisAdapter(service.url, strategy="tracking")
        session = adapter.checkpoint("session")
        probe = Probe(adapter)
        rng = random.Random(7)
        print(f"redis-server {service.version}, N = {args.n:,} seeded keys, {place.name}; medians in ms per rollback")
        print(
            f"{'k':>5} | {'rollback':>8} | {'barrier':>8} | {'(encode+send)':>13} | {'restore':>8} | "
            f"{'(encode+send)':>13} | {'other':>6} | {'events read':>11} | {'server µs':>9} | {'checkpoint':>10}"
        )
        print(
            "  (barrier and restore are parts of rollback; '(encode+send)' is the part of the one before it spent "
            "encoding and writing to the socket;\n   server µs = Redis's own time for the adapter's commands per "
            "test, checkpoint's barrier included)"
        )
        for k in WRITES:
            cols: dict[str, list[float]] = {}
            events: list[int] = []
            before = server_usec(client)
            for _ in range(REPS[k]):
                t0 = time.perf_counter()
                cp = adapter.checkpoint("test")
                ckpt = time.perf_counter() - t0
                simulated_test(client, args.n, k, rng)
                probe.reset()
                t0 = time.perf_counter()
                adapter.rollback(cp)
                total = time.perf_counter() - t0
                adapter.release(cp)
                parts = dict(probe.spent)
                parts["total"] = total
                parts["checkpoint"] = ckpt
                # the checkpoint's own barrier ran outside the probe's reset window: leave it out
                for name, value in parts.items():
                    cols.setdefault(name, []).append(value)
                events.append(sum(probe.pushes.values()))
            after = server_usec(client)
            # the adapter's own commands only (not the test's SET/HSET): barriers, restores, deletes
            server = sum(after[c][1] - before.get(c, (0, 0))[1] for c in ADAPTER_COMMANDS if c in after)
            total, barrier, restore = ms(cols["total"]), ms(cols["barrier"]), ms(cols.get("restore", []))
            print(
                f"{k:>5} | {total:8.3f} | {barrier:8.3f} | {ms(cols.get('barrier: encode+send', [])):13.3f} | "
                f"{restore:8.3f} | {ms(cols.get('restore: encode+send', [])):13.3f} | "
                f"{max(0.0, total - barrier - restore):6.3f} | {statistics.median(events):11.0f} | "
                f"{server / REPS[k]:9.0f} | {ms(cols['checkpoint']):10.3f}"
            )
        parse_us, encode_us = synthetic_costs()
        print()
        print(
            f"adapter's RESP3 code on synthetic input: {parse_us:.2f} µs to parse one keyspace-event push, "
            f"{encode_us:.2f} µs to encode one RESTORE"
        )
        if args.cprofile:
            prof = cProfile.Profile()
            for _ in range(20):
                cp = adapter.checkpoint("test")
                simulated_test(client, args.n, 1000, rng)
                prof.enable()
                adapter.rollback(cp)
                prof.disable()
                adapter.release(cp)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            print(out.getvalue())
        adapter.rollback(session)
        adapter.close()
        client.close()
    finally:
        service.stop()  # the redis-server this script started, by its own handle
        if own_cpus is not None:
            os.sched_setaffinity(0, own_cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
