"""What one test's rollback of the embedded Redis (fakeredis in this process) costs.

Run from the repository root::

    .venv/bin/python bench/embedded_restore.py          # about 2 minutes
    .venv/bin/python bench/embedded_restore.py --quick  # fewer repetitions

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

Times come from ``time.perf_counter``; the table shows medians and the ratios to the
journal. The script only prints: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
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


def per_test(adapter: Any, client: redis.Redis, n: int, k: int, reps: int) -> tuple[list[float], list[float]]:
    """(checkpoint + rollback + release, rollback alone) in ms for each simulated test."""
    totals, restores = [], []
    for r in range(reps):
        t0 = time.perf_counter()
        token = adapter.checkpoint("test")
        t1 = time.perf_counter()
        write(client, n, k, r)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    service = embedded.redis(StoreSettings("redis", "embedded", None, "", False, None, None))  # type: ignore[arg-type]
    client = redis.Redis(host=service.host, port=service.port)
    server = service.extra["fakeredis"]
    med: Callable[[list[float]], float] = statistics.median
    print(f"embedded Redis: {service.version}, over TCP from a thread of this process")
    print("per test: checkpoint + rollback + release (restore: the rollback alone), medians in ms\n")
    header = (
        f"{'N':>8} {'k':>5} | {'journal':>8} {'restore':>8} | {'snapshot':>9} {'restore':>9} | {'reseed':>8} "
        f"| {'snapshot/journal':>16} {'reseed/journal':>14}"
    )
    print(header)
    print("-" * len(header))
    try:
        for n in SIZES:
            big = n >= 100_000
            seed(client, n)
            for k in WRITES:
                reps = 10 if args.quick else 40
                journal = InProcessRedisAdapter(service.url, server)
                root = journal.checkpoint("session")
                j_total, j_restore = per_test(journal, client, n, k, reps)
                journal.rollback(root)
                journal.close()
                snap_reps = 1 if big else (3 if args.quick else 10)
                snapshot = RedisAdapter(service.url, strategy="snapshot")
                root = snapshot.checkpoint("session")
                s_total, s_restore = per_test(snapshot, client, n, k, snap_reps)
                snapshot.rollback(root)
                snapshot.close()
                flush = reseed(client, n, 1 if big else 3)
                jt, jr, st, sr, fr = med(j_total), med(j_restore), med(s_total), med(s_restore), med(flush)
                print(
                    f"{n:>8,} {k:>5} | {jt:>8.3f} {jr:>8.3f} | {st:>9.1f} {sr:>9.1f} | {fr:>8.1f} "
                    f"| {st / jt:>15,.0f}x {fr / jt:>13,.0f}x",
                    flush=True,
                )
    finally:
        client.close()
        service.stop()


if __name__ == "__main__":
    main()
