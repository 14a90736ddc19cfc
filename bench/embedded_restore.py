"""What one test's rollback of the embedded stores (fakeredis, mongomock: in this process) costs.

Run from the repository root::

    .venv/bin/python bench/embedded_restore.py          # about 4 minutes
    .venv/bin/python bench/embedded_restore.py --quick  # fewer repetitions
    .venv/bin/python bench/embedded_restore.py --only mongomock

It starts fakeredis the way ``--rollback-provider=embedded`` does (served over TCP
from a thread of this process) and, for every store size N and test write count k,
measures per simulated test, in one run:

* journal: ``InProcessRedisAdapter`` (what the embedded provider uses now) --
  ``checkpoint()`` when the test starts, k keys written over TCP (not timed),
  ``rollback()`` + ``release()`` when it ends;
* snapshot: the same with ``RedisAdapter(strategy="snapshot")``, the embedded
  provider's strategy before the journal (a full copy at the checkpoint, a full
  comparison at the rollback);
* flush + re-seed: ``FLUSHALL`` and the N keys written again by pipeline.

For mongomock (the embedded MongoDB provider's in-process choice), one collection of
N documents, and per simulated test:

* journal: ``MongomockAdapter`` (the default strategy now) -- ``checkpoint()``, k
  documents written (half updated in one ``update_many``, half inserted; not timed),
  ``rollback()`` + ``release()``;
* copy-on-touch: the same with ``MongomockAdapter(strategy="copy-on-touch")``, the
  strategy before the journal (the touched collection deep-copied whole);
* drop + re-seed: the collection dropped and its N documents inserted again.

Times come from ``time.perf_counter``; the tables show medians and the ratios to the
journal. The script only prints: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import redis  # noqa: E402

from pytest_rollback.adapters.redis import RedisAdapter  # noqa: E402
from pytest_rollback.adapters.redis_inprocess import InProcessRedisAdapter  # noqa: E402
from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import embedded  # noqa: E402

SIZES = (1_000, 100_000)
WRITES = (0, 10, 1000)
VALUE = b"v" * 64
BATCH = 5000


def seed(client: redis.Redis, n: int) -> None:
    client.flushall()
    for start in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + BATCH)):
            pipe.set(f"seed:{i}", VALUE)
        pipe.execute()


def write(client: redis.Redis, n: int, k: int, round_: int) -> None:
    """k writes: half overwrite seeded keys, half add keys (a test's typical mix)."""
    pipe = client.pipeline(transaction=False)
    for i in range(k):
        if i % 2:
            pipe.set(f"seed:{(i * 7919 + round_) % n}", b"changed")
        else:
            pipe.set(f"new:{round_}:{i}", b"added")
    pipe.execute()


def per_test(adapter: Any, write: Callable[[int], object], reps: int) -> tuple[list[float], list[float]]:
    """(checkpoint + rollback + release, rollback alone) in ms for each simulated test; ``write(round)`` untimed."""
    totals, restores = [], []
    for r in range(reps):
        t0 = time.perf_counter()
        token = adapter.checkpoint("test")
        t1 = time.perf_counter()
        write(r)
        t2 = time.perf_counter()
        adapter.rollback(token)
        t3 = time.perf_counter()
        adapter.release(token)
        t4 = time.perf_counter()
        totals.append((t1 - t0 + t4 - t2) * 1000)
        restores.append((t3 - t2) * 1000)
    return totals, restores


def reseed(client: redis.Redis, n: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        seed(client, n)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def table_header(anchor: str) -> None:
    header = (
        f"{'N':>8} {'k':>5} | {'journal':>8} {'restore':>8} | {anchor:>9} {'restore':>9} | {'reseed':>8} "
        f"| {anchor + '/journal':>16} {'reseed/journal':>14}"
    )
    print(header)
    print("-" * len(header))


def table_row(n: int, k: int, journal: tuple[list[float], list[float]], other: tuple[list[float], list[float]],
              reseed_ms: list[float]) -> None:  # fmt: skip
    med: Callable[[list[float]], float] = statistics.median
    jt, jr, st, sr, fr = med(journal[0]), med(journal[1]), med(other[0]), med(other[1]), med(reseed_ms)
    print(
        f"{n:>8,} {k:>5} | {jt:>8.3f} {jr:>8.3f} | {st:>9.1f} {sr:>9.1f} | {fr:>8.1f} "
        f"| {st / jt:>15,.0f}x {fr / jt:>13,.0f}x",
        flush=True,
    )


def redis_table(quick: bool) -> None:
    service = embedded.redis(StoreSettings("redis", "embedded", None, "", False, None, None))  # type: ignore[arg-type]
    client = redis.Redis(host=service.host, port=service.port)
    server = service.extra["fakeredis"]
    print(f"embedded Redis: {service.version}, over TCP from a thread of this process")
    print("per test: checkpoint + rollback + release (restore: the rollback alone), medians in ms\n")
    table_header("snapshot")
    try:
        for n in SIZES:
            big = n >= 100_000
            seed(client, n)
            for k in WRITES:
                reps = 10 if quick else 40
                journal = InProcessRedisAdapter(service.url, server)
                root = journal.checkpoint("session")
                j = per_test(journal, functools.partial(write, client, n, k), reps)
                journal.rollback(root)
                journal.close()
                snap_reps = 1 if big else (3 if quick else 10)
                snapshot = RedisAdapter(service.url, strategy="snapshot")
                root = snapshot.checkpoint("session")
                s = per_test(snapshot, functools.partial(write, client, n, k), snap_reps)
                snapshot.rollback(root)
                snapshot.close()
                table_row(n, k, j, s, reseed(client, n, 1 if big else 3))
    finally:
        client.close()
        service.stop()


def documents(n: int) -> list[dict[str, Any]]:
    return [{"_id": i, "sku": f"s{i}", "stock": 10, "attrs": {"w": i, "tags": ["a", "b"]}} for i in range(n)]


def mongomock_write(coll: Any, n: int, k: int, round_: int) -> None:
    """k writes: half the documents updated (one ``update_many``: mongomock scans per call), half inserted."""
    if k == 0:
        return
    ids = [(i * 7919 + round_) % n for i in range(k // 2)]
    coll.update_many({"_id": {"$in": ids}}, {"$inc": {"stock": -1}, "$set": {"attrs.w": -1}})
    coll.insert_many([{"_id": f"new:{round_}:{i}", "sku": "added"} for i in range(k - k // 2)])


def mongomock_reseed(coll: Any, n: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        coll.drop()
        coll.insert_many(documents(n))
        out.append((time.perf_counter() - t0) * 1000)
    return out


def mongomock_table(quick: bool) -> None:
    import mongomock

    from pytest_rollback.adapters.mongomock import MongomockAdapter

    print(f"\nembedded MongoDB: mongomock {mongomock.__version__}, in this process; one collection of N documents")
    print("per test: checkpoint + rollback + release (restore: the rollback alone), medians in ms\n")
    table_header("copy")
    for n in SIZES:
        big = n >= 100_000
        for k in WRITES:
            client = mongomock.MongoClient()
            coll = client.shop.products
            coll.insert_many(documents(n))
            journal = MongomockAdapter(client, strategy="journal")
            root = journal.checkpoint("session")
            j = per_test(journal, functools.partial(mongomock_write, coll, n, k), 5 if big or quick else 20)
            journal.rollback(root)
            journal.close()
            client = mongomock.MongoClient()  # (one strategy per store)
            coll = client.shop.products
            coll.insert_many(documents(n))
            copying = MongomockAdapter(client, strategy="copy-on-touch")
            root = copying.checkpoint("session")
            c = per_test(copying, functools.partial(mongomock_write, coll, n, k), 1 if big else 3)
            copying.rollback(root)
            copying.close()
            table_row(n, k, j, c, mongomock_reseed(coll, n, 1 if big else 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=("redis", "mongomock"), help="one store's table")
    args = parser.parse_args()
    if args.only in (None, "redis"):
        redis_table(args.quick)
    if args.only in (None, "mongomock"):
        mongomock_table(args.quick)


if __name__ == "__main__":
    main()
