"""What the crash journal costs at session start, side by side with seeding the same data.

    python bench/recovery_cost.py [--quick]

For a server the plugin did not start, a run writes a journal right after its
first checkpoint (see docs/safety.md). This script measures, on servers it starts
itself on loopback (redis-server through the plugin's ``local`` provider,
SecantusDB through the ``embedded`` one):

* seed        - anchor: the user's data written by pipelines / insert_many
                (Redis 100,000 keys: half strings, half hashes of four fields;
                MongoDB 50,000 documents), what a session fixture that seeds pays
* checkpoint  - the adapter's first checkpoint (a full read of the server, which
                every run pays with or without a journal)
* journal     - ``save_journal``: the journal written to disk from that checkpoint
                (the only cost the journal adds)
* recover     - putting the server back from the journal after a FLUSHALL /
                dropDatabase (what the next run pays after a crash)
* reseed      - anchor: flush and seed again (what pytest-redis-style fixtures pay
                per test)

Medians of 3 runs (1 with --quick) in milliseconds, then each as a ratio of the
seed. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import embedded, local  # noqa: E402


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def redis_rows(n: int, runs: int) -> dict[str, float]:
    import redis

    from pytest_rollback.adapters.redis import RedisAdapter
    from pytest_rollback.adapters.redis_journal import FLAGS_FILE, recover

    service = local.redis(StoreSettings("redis", "local", None, "", False, None, None))  # type: ignore[arg-type]
    client = redis.Redis.from_url(service.url)
    samples: dict[str, list[float]] = {k: [] for k in ("seed", "checkpoint", "journal", "recover", "reseed")}

    def seed() -> None:
        for start in range(0, n, 5000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + 5000)):
                if i % 2:
                    pipe.set(f"key:{i}", f"value-{i}")
                else:
                    pipe.hset(f"hash:{i}", mapping={"a": i, "b": "x", "c": "y", "d": i * 2})
            pipe.execute()

    try:
        for _ in range(runs):
            client.flushall()
            samples["seed"].append(timed(seed))
            journal = Path(tempfile.mkdtemp(prefix="bench-journal-"))
            adapter = RedisAdapter(service.url, flags_record=str(journal / FLAGS_FILE))
            samples["checkpoint"].append(timed(lambda: adapter.checkpoint("session start")))  # noqa: B023
            samples["journal"].append(timed(lambda: adapter.save_journal(journal)))  # noqa: B023
            adapter.close()
            client.flushall()
            samples["recover"].append(timed(lambda: recover(journal, service.url)))  # noqa: B023
            assert client.dbsize() == n
            shutil.rmtree(journal)
            samples["reseed"].append(timed(lambda: (client.flushall(), seed())))
    finally:
        client.close()
        service.stop()
    return {k: statistics.median(v) for k, v in samples.items()}


def mongo_rows(n: int, runs: int) -> dict[str, float]:
    import pymongo

    from pytest_rollback.adapters.mongo import MongoAdapter
    from pytest_rollback.adapters.mongo_journal import recover

    settings = StoreSettings("mongo", "embedded", None, "", False, None, None)  # type: ignore[arg-type]
    service = embedded.secantusdb(settings)
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(service.url)
    samples: dict[str, list[float]] = {k: [] for k in ("seed", "checkpoint", "journal", "recover", "reseed")}
    docs = [{"_id": i, "sku": f"sku-{i}", "price": i * 3, "stock": 10, "tags": ["a", "b"]} for i in range(n)]

    def seed() -> None:
        client.shop.products.insert_many([dict(d) for d in docs])

    try:
        for _ in range(runs):
            client.drop_database("shop")
            samples["seed"].append(timed(seed))
            journal = Path(tempfile.mkdtemp(prefix="bench-journal-"))
            adapter = MongoAdapter(service.url)
            samples["checkpoint"].append(timed(lambda: adapter.checkpoint("session start")))  # noqa: B023
            samples["journal"].append(timed(lambda: adapter.save_journal(journal)))  # noqa: B023
            adapter.close()
            client.drop_database("shop")
            samples["recover"].append(timed(lambda: recover(journal, service.url)))  # noqa: B023
            assert client.shop.products.estimated_document_count() == n
            shutil.rmtree(journal)
            samples["reseed"].append(timed(lambda: (client.drop_database("shop"), seed())))
    finally:
        client.close()
        service.stop()
    return {k: statistics.median(v) for k, v in samples.items()}


def show(title: str, rows: dict[str, float]) -> None:
    seed = rows["seed"]
    print(f"\n{title}")
    print(f"{'step':<12}{'ms':>10}{'/ seed':>10}")
    for name in ("seed", "checkpoint", "journal", "recover", "reseed"):
        print(f"{name:<12}{rows[name]:>10.1f}{rows[name] / seed:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run each instead of three")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; medians of {runs} run(s)")
    show("Redis, 100,000 keys (redis-server, loopback)", redis_rows(100_000, runs))
    show("MongoDB, 50,000 documents (SecantusDB, loopback)", mongo_rows(50_000, runs))


if __name__ == "__main__":
    main()
