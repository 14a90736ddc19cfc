"""Per-test restore cost of the MongoDB adapters against the anchors.

    python bench/mongo_restore.py [--quick] [--spread]

Starts SecantusDB on a free loopback port (the plugin's embedded provider), seeds
a collection of N documents, and for each k simulates a test that updates k of
them, timing:

* tracking  - MongoAdapter with its change stream: checkpoint at test start,
              rollback at test end (replica sets: Docker, local mongod, SecantusDB)
* counters  - MongoAdapter on `top` write counters (what a standalone mongod gets):
              the touched collection is read whole and its differing documents written back
* reseed    - anchor: drop the collection and insert the N documents again
* $out      - anchor: a server-side copy kept aside, restored with an aggregation
              `$out` into the collection (full snapshot restore)

Then a test as generated suites write them: k documents inserted, updated and
deleted across three collections in two databases (N documents each), through a
client whose updates the adapter notes (what ``mongo_client`` gives) and, in
alternate tests, through another client (its updates bring back the list of
collections), the adapter driven as the plugin drives it (the test level's
checkpoint is taken once and shared by the next test when nothing happened in
between, so a test costs its rollback), next to the same anchors and the test
without the plugin; with the commands the adapter sent per test through the
noting client (counted by a pymongo command listener) and its barriers (the
``update`` of its own barrier document).

Then the same on mongomock in process: the copy-on-touch adapter against
dropping and re-inserting into mongomock.

Medians in milliseconds, then ratios. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymongo  # noqa: E402
from pymongo import monitoring  # noqa: E402

from pytest_rollback.adapters._mongo_probe import ProbeSocket  # noqa: E402
from pytest_rollback.adapters.mongo import MongoAdapter  # noqa: E402
from pytest_rollback.adapters.mongomock import MongomockAdapter  # noqa: E402
from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import embedded  # noqa: E402


def docs(n: int) -> list[dict[str, object]]:
    return [{"_id": i, "sku": f"sku-{i}", "price": i * 3, "stock": 10, "tags": ["a", "b"]} for i in range(n)]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def per_test(adapter: object, products: object, reps: int) -> dict[int, float]:
    """Median ms of checkpoint + rollback around a test that updates k documents, per k."""
    out = {}
    adapter.checkpoint("session seed")  # type: ignore[attr-defined]
    for k in (0, 10, 1000):
        samples = []
        for r in range(reps if k <= 10 else max(3, reps // 4)):
            t0 = time.perf_counter()
            cp = adapter.checkpoint("test")  # type: ignore[attr-defined]
            t1 = time.perf_counter()
            for i in range(k):
                products.update_one({"_id": i}, {"$set": {"stock": r}})  # type: ignore[attr-defined]
            t2 = time.perf_counter()
            adapter.rollback(cp)  # type: ignore[attr-defined]
            t3 = time.perf_counter()
            adapter.release(cp)  # type: ignore[attr-defined]
            samples.append((t1 - t0) + (t3 - t2))
        out[k] = median_ms(samples)
    adapter.close()  # type: ignore[attr-defined]
    return out


def reseed_times(products: Any, n: int) -> list[float]:
    """The anchor: drop the collection and insert its n documents again, three times."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        products.drop()
        products.insert_many(docs(n))
        times.append(time.perf_counter() - t)
    return times


class Commands(monitoring.CommandListener):
    """Counts the commands sent while ``on`` (the adapter's, when only the adapter runs), by name."""

    def __init__(self) -> None:
        self.on = False
        self.names: list[str] = []
        self.barrier_db = "__pytest_rollback__"

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            barrier = event.command_name == "update" and event.database_name == self.barrier_db
            self.names.append("barrier" if barrier else event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def count_probes(self) -> None:
        """Count too the ``serverStatus`` the adapter writes on its own probe socket (pymongo never sees it)."""
        send = ProbeSocket._send

        def counted(probe: ProbeSocket) -> int:
            if self.on:
                self.names.append("serverStatus")
            return send(probe)

        ProbeSocket._send = counted  # type: ignore[method-assign]


#: three collections in two databases
SPREAD = (("shop", "products"), ("shop", "orders"), ("crm", "customers"))


def spread_writes(client: Any, k: int, r: int) -> None:
    """A test writing k documents across SPREAD: updates, inserts and deletes in turn."""
    for i in range(k):
        db, name = SPREAD[i % 3]
        coll = client[db][name]
        kind = (i // 3) % 3
        if kind == 0:
            coll.update_one({"_id": i}, {"$set": {"stock": r}})
        elif kind == 1:
            coll.insert_one({"_id": f"new-{i}", "sku": "x"})
        else:
            coll.delete_one({"_id": i})


def spread_table(url: str, client: Any, commands: Commands, reps: int, anchor_reps: int) -> None:
    """k documents across three collections in two databases, as the plugin drives the adapter: written
    through the noting client (``mongo_client``'s kind) and, in alternate tests, through another client."""
    print("\nSecantusDB: k documents written across 3 collections in 2 databases (N each), per test (median):")
    header = (
        f"{'N':>7} {'k':>3} | {'rollback':>8} {'other cl.':>9} {'no plugin':>9} | {'$out':>7} {'reseed':>8} | "
        f"{'reseed/rb':>9} {'$out/rb':>7} {'other/rb':>8} | {'barriers':>8} {'commands':>8}  adapter's commands"
    )
    print(header)
    print("-" * len(header))
    for n in (1_000, 50_000):
        for db, _ in SPREAD:
            client.drop_database(db)
        for db, name in SPREAD:
            client[db][name].insert_many(docs(n))
        adapter = MongoAdapter(url, strategy="tracking")  # every database, as outside xdist
        # a client whose updates the adapter notes, as the mongo_client fixture's
        noting = pymongo.MongoClient(url, event_listeners=[adapter.listener()])
        noting.admin.command("ping")  # (its connection is open before the test, as after a session's seeding)
        adapter.checkpoint("session seed")
        test = adapter.checkpoint("test")  # shared by every next test (nothing happens in between)
        rows = []
        for k in (0, 1, 10):
            samples: dict[bool, list[float]] = {True: [], False: []}
            bare, counts = [], []
            for r in range(2 * reps):
                through_noting = r % 2 == 0  # alternate tests: the same load for both
                t0 = time.perf_counter()
                spread_writes(noting if through_noting else client, k, r)
                t1 = time.perf_counter()
                commands.on, commands.names = True, []
                adapter.rollback(test)
                commands.on = False
                samples[through_noting].append(time.perf_counter() - t1)
                if through_noting:
                    bare.append(t1 - t0)
                    counts.append(list(commands.names))
            rows.append((k, median_ms(samples[True]), median_ms(samples[False]), median_ms(bare), counts[-1]))
        noting.close()
        adapter.close()
        out, reseed = [], []
        for _ in range(anchor_reps):
            t = time.perf_counter()
            for db, name in SPREAD:
                client[db][name].drop()
                client[db][name].insert_many(docs(n))
            reseed.append(time.perf_counter() - t)
        for db, name in SPREAD:
            client[db][name].aggregate([{"$match": {}}, {"$out": name + "_snapshot"}])
        for _ in range(anchor_reps):
            t = time.perf_counter()
            for db, name in SPREAD:
                client[db][name + "_snapshot"].aggregate([{"$match": {}}, {"$out": name}])
            out.append(time.perf_counter() - t)
        for db, name in SPREAD:
            client[db][name + "_snapshot"].drop()
        for k, rb, other, no_plugin, names in rows:
            kinds = ", ".join(f"{names.count(c)} {c}" for c in dict.fromkeys(names))
            print(
                f"{n:>7} {k:>3} | {rb:>8.2f} {other:>9.2f} {no_plugin:>9.2f} | {median_ms(out):>7.1f} "
                f"{median_ms(reseed):>8.1f} | {median_ms(reseed) / rb:>8.0f}x {median_ms(out) / rb:>6.0f}x "
                f"{other / rb:>7.2f}x | {names.count('barrier'):>8} {len(names):>8}  {kinds}"
            )
    for db, _ in SPREAD:
        client.drop_database(db)
    print("target (issue 15): k <= 10 across 3 collections in 2 databases: <= 15 ms, <= 1 barrier, whatever N")
    print("(other cl.: the same writes through a client the adapter does not note: updates bring the list back)")


def mongomock_table(reps: int) -> None:
    import mongomock

    print("\nmongomock (in process): milliseconds per test (median)")
    header = f"{'N':>7} {'k':>5} | {'copy-on-touch':>13} | {'reseed':>9} | {'reseed/cot':>10}"
    print(header)
    print("-" * len(header))
    for n in (1_000, 50_000):
        client = mongomock.MongoClient()
        products = client.shop.products
        products.insert_many(docs(n))
        cot = per_test(MongomockAdapter(client, strategy="copy-on-touch"), products, max(3, reps // 4))
        reseed = reseed_times(products, n)
        for k, value in cot.items():
            print(f"{n:>7} {k:>5} | {value:>13.2f} | {median_ms(reseed):>9.1f} | {median_ms(reseed) / value:>9.1f}x")
    print("(a touched collection is copied whole: mongomock updates documents in place)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--spread", action="store_true", help="only the table of k documents across collections")
    args = parser.parse_args()
    reps = 10 if args.quick else 40
    commands = Commands()
    commands.count_probes()
    monitoring.register(commands)  # every client made from now on, the adapters' too
    settings = StoreSettings("mongo", "local", None, "", False, None, None)  # type: ignore[arg-type]
    service = embedded.secantusdb(settings)
    try:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(service.url)
        pings = []
        for _ in range(300):
            t = time.perf_counter()
            client.admin.command("ping")
            pings.append(time.perf_counter() - t)
        ping = median_ms(pings)
        print(f"{service.version} at {service.url}; one ping: {ping:.3f} ms median\n")
        if args.spread:
            spread_table(service.url, client, commands, reps, 1 if args.quick else 3)
            return
        rows = []
        for n in (1_000, 50_000):
            client.drop_database("shop")
            products = client.shop.products
            products.insert_many(docs(n))
            tracking = per_test(MongoAdapter(service.url, dbs=["shop"], strategy="tracking"), products, reps)
            counters = per_test(MongoAdapter(service.url, dbs=["shop"], strategy="counters"), products, reps)
            reseed = reseed_times(products, n)
            client.shop.products.aggregate([{"$match": {}}, {"$out": "products_snapshot"}])
            out = []
            for _ in range(3):
                t = time.perf_counter()
                client.shop.products_snapshot.aggregate([{"$match": {}}, {"$out": "products"}])
                out.append(time.perf_counter() - t)
            client.shop.products_snapshot.drop()
            for k, value in tracking.items():
                rows.append((n, k, value, counters[k], median_ms(out), median_ms(reseed)))
        header = (
            f"{'N':>7} {'k':>5} | {'tracking':>9} {'counters':>9} | {'$out':>9} {'reseed':>9} | "
            f"{'reseed/tr':>9} {'$out/tr':>8} {'reseed/co':>9}"
        )
        print("SecantusDB: milliseconds per test (median); a strategy's time = checkpoint + rollback")
        print(header)
        print("-" * len(header))
        for n, k, tr, co, out_ms, reseed_ms in rows:
            ratios = f"{reseed_ms / tr:>8.0f}x {out_ms / tr:>7.0f}x {reseed_ms / co:>8.1f}x"
            print(f"{n:>7} {k:>5} | {tr:>9.2f} {co:>9.2f} | {out_ms:>9.1f} {reseed_ms:>9.1f} | {ratios}")
        print("\ntargets (MongoDB issue): k = 10 within 15 ms whatever the size; >= 50x faster than")
        print("drop-and-reseed at 50k documents (the tracking strategy; counters reads what was touched)")
        spread_table(service.url, client, commands, reps, 1 if args.quick else 3)
        client.close()
        mongomock_table(reps)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
