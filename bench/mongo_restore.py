"""Per-test restore cost of the MongoDB adapters against the anchors.

    python bench/mongo_restore.py [--quick] [--spread] [--provider {embedded,docker}]
    python bench/mongo_restore.py --grid [--quick] [--provider {embedded,docker}] [--sizes 1000,10000,100000]

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

``--grid`` prints only issue 15's table for MongoDB: for N in 1k, 10k, 100k
(``--sizes`` picks others) and k in 0, 1, 10, 100, 1000 documents updated by the
test (``update_one`` of seeded documents, no inserts), tracking and counters as
above, ``test`` (the test's own writes with no adapter open: the test without the
plugin), ``$out`` and ``reseed`` (measured once per N: they do not depend on k),
and the ratios reseed/tracking, $out/tracking and tracking/test. Each N's three
phases (the test alone and the anchors; tracking; counters) get a server of their
own, started and seeded for them: SecantusDB's retryable writes slow down for
good once it has served about 10,000 of them (an ``update_one`` 0.5 ms, then
5-25 ms), which would charge a later phase for an earlier one's writes. Fewer
repetitions at k >= 100 and at N = 100k, and a cell stops repeating after 6 s once
it has 3 samples; about 2.5 minutes on 2 CPUs (``--quick``: fewer repetitions).

``--provider docker`` runs every table against the plugin's Docker provider
(``pytest_rollback.services.docker.mongo``, image mongo:7.0.14) instead of
SecantusDB, removing its containers at the end; without a Docker engine or that
image it says so on one line and exits with 1. The mongomock table runs in
process either way.

Medians in milliseconds, then ratios. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymongo  # noqa: E402
from pymongo import monitoring  # noqa: E402

from pytest_rollback.adapters._mongo_probe import ProbeSocket  # noqa: E402
from pytest_rollback.adapters.mongo import MongoAdapter  # noqa: E402
from pytest_rollback.adapters.mongomock import MongomockAdapter  # noqa: E402
from pytest_rollback.api import Service, StoreUnavailable  # noqa: E402
from pytest_rollback.options import DEFAULT_IMAGES, StoreSettings  # noqa: E402
from pytest_rollback.services import docker, embedded  # noqa: E402


def docs(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"_id": i, "sku": f"sku-{i}", "price": i * 3, "stock": 10, "tags": ["a", "b"]} for i in range(start, n)]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def per_test(adapter: object, products: object, reps: int) -> dict[int, float]:
    """Median ms of checkpoint + rollback around a test that updates k documents, per k."""
    out = {}
    adapter.checkpoint("session seed")  # type: ignore[attr-defined]
    for k in (0, 10, 1000):
        out[k] = median_ms(plugin_samples(adapter, products, k, reps if k <= 10 else max(3, reps // 4)))
    adapter.close()  # type: ignore[attr-defined]
    return out


def repeated(one: Callable[[int], float], reps: int, budget: float) -> list[float]:
    """``one(r)`` (seconds) for r = 0, 1, ... up to ``reps`` times: at least 3, fewer than ``reps`` once
    ``budget`` seconds have gone by."""
    samples: list[float] = []
    begin = time.perf_counter()
    for r in range(reps):
        if len(samples) >= 3 and time.perf_counter() - begin > budget:
            break
        samples.append(one(r))
    return samples


def update(products: Any, k: int, r: int) -> None:
    """The simulated test: k seeded documents updated (their stock set to ``r``)."""
    for i in range(k):
        products.update_one({"_id": i}, {"$set": {"stock": r}})


def plugin_samples(adapter: Any, products: Any, k: int, reps: int, budget: float = float("inf")) -> list[float]:
    """Seconds of checkpoint + rollback around a test that updates k documents (see :func:`repeated`);
    the session's checkpoint taken."""

    def one(r: int) -> float:
        t0 = time.perf_counter()
        cp = adapter.checkpoint("test")
        t1 = time.perf_counter()
        update(products, k, r)
        t2 = time.perf_counter()
        adapter.rollback(cp)
        t3 = time.perf_counter()
        adapter.release(cp)
        return (t1 - t0) + (t3 - t2)

    return repeated(one, reps, budget)


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


def spread_table(
    url: str, client: Any, commands: Commands, reps: int, anchor_reps: int, where: str = "SecantusDB"
) -> None:
    """k documents across three collections in two databases, as the plugin drives the adapter: written
    through the noting client (``mongo_client``'s kind) and, in alternate tests, through another client."""
    print(f"\n{where}: k documents written across 3 collections in 2 databases (N each), per test (median):")
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


#: the issue's grid: collection sizes and documents a test updates
GRID_SIZES = (1_000, 10_000, 100_000)
GRID_KS = (0, 1, 10, 100, 1000)
#: seconds after which a cell of the grid stops repeating (once it has 3 samples)
GRID_BUDGET = 6.0


def grid_reps(reps: int, n: int, k: int) -> int:
    """Repetitions of one cell: ``reps`` for k <= 10, half of them for k = 100, a quarter for k = 1000;
    half again at N >= 100k; at least 3."""
    r = reps // (1 if k <= 10 else 2 if k <= 100 else 4)
    return max(3, r // 2 if n >= 100_000 else r)


def seed(coll: Any, n: int, batch: int = 10_000) -> None:
    """Insert the n documents of :func:`docs`, ``batch`` at a time."""
    for lo in range(0, n, batch):
        coll.insert_many(docs(min(n, lo + batch), lo), ordered=False)


def bare_samples(products: Any, k: int, reps: int, budget: float) -> list[float]:
    """Seconds of the simulated test's own writes (k updates), no adapter open: the anchor "the test itself"."""

    def one(r: int) -> float:
        t0 = time.perf_counter()
        update(products, k, r)
        return time.perf_counter() - t0

    return repeated(one, reps, budget)


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "-"
    value = a / b
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 1 else f"{value:.2f}x"


def first_line(service: Service, client: Any) -> str:
    """The server's version and address, and its median time to answer a ping."""
    pings = []
    for _ in range(300):
        t = time.perf_counter()
        client.admin.command("ping")
        pings.append(time.perf_counter() - t)
    return f"{service.version} at {service.url}; one ping: {median_ms(pings):.3f} ms median"


def fresh(provider: str, n: int) -> tuple[Service, Any]:
    """A server of its own, started now, with ``shop.products`` seeded with n documents: the service and a client."""
    service = start(provider)
    client: Any = pymongo.MongoClient(service.url)
    seed(client.shop.products, n)
    return service, client


def grid_table(provider: str, where: str, sizes: tuple[int, ...], reps: int) -> None:
    """Issue 15's table for MongoDB: per-test plugin time for every k and N, next to the anchors of this run.

    Each N's three phases (the test alone and the anchors; tracking; counters) run on a server of their own,
    started and seeded for them: SecantusDB's retryable writes slow down for good once it has served about
    10,000 of them (0.5 ms an update_one, then 5-25 ms), which would charge a later phase for an earlier one's.
    """
    header = (
        f"{'N':>7} {'k':>5} | {'tracking':>9} {'counters':>9} {'test':>8} | {'$out':>8} {'reseed':>8} | "
        f"{'reseed/tr':>9} {'$out/tr':>8} {'tr/test':>7} | {'reps tr/co/test':>15}"
    )
    for n in sizes:
        service, client = fresh(provider, n)
        try:
            if n == sizes[0]:
                print(first_line(service, client) + "\n")
                print(f"{where}: k documents updated per test in a collection of N, milliseconds per test (median)")
                print(header)
                print("-" * len(header))
            products = client.shop.products
            bare = {k: bare_samples(products, k, grid_reps(reps, n, k), GRID_BUDGET) for k in GRID_KS}
            anchor_reps = 3 if n <= 10_000 else 2
            reseed = []
            for _ in range(anchor_reps):
                t = time.perf_counter()
                products.drop()
                seed(products, n)
                reseed.append(time.perf_counter() - t)
            products.aggregate([{"$match": {}}, {"$out": "products_snapshot"}])
            out = []
            for _ in range(anchor_reps):
                t = time.perf_counter()
                client.shop.products_snapshot.aggregate([{"$match": {}}, {"$out": "products"}])
                out.append(time.perf_counter() - t)
        finally:
            client.close()
            service.stop()
        strategies: dict[str, dict[int, list[float]]] = {}
        for strategy in ("tracking", "counters"):
            service, client = fresh(provider, n)
            try:
                adapter = MongoAdapter(service.url, dbs=["shop"], strategy=strategy)
                adapter.checkpoint("session seed")
                strategies[strategy] = {
                    k: plugin_samples(adapter, client.shop.products, k, grid_reps(reps, n, k), GRID_BUDGET)
                    for k in GRID_KS
                }
                adapter.close()
            finally:
                client.close()
                service.stop()
        out_ms, reseed_ms = median_ms(out), median_ms(reseed)
        for k in GRID_KS:
            tr, co, test = (median_ms(strategies["tracking"][k]), median_ms(strategies["counters"][k]),
                            median_ms(bare[k]))
            counts = f"{len(strategies['tracking'][k])}/{len(strategies['counters'][k])}/{len(bare[k])}"
            print(
                f"{n:>7} {k:>5} | {tr:>9.2f} {co:>9.2f} {test:>8.2f} | {out_ms:>8.1f} {reseed_ms:>8.1f} | "
                f"{ratio(reseed_ms, tr):>9} {ratio(out_ms, tr):>8} {ratio(tr, test) if k else '-':>7} | {counts:>15}"
            )
        print(f"{'':>13} (anchors: median of {anchor_reps} runs)", flush=True)
    print("tracking, counters: MongoAdapter's checkpoint + rollback around the test (the test's writes not counted)")
    print("test: the test's k update_one calls alone, no adapter open (the test itself, without the plugin)")
    print("$out, reseed: measured once per N, shown on each of its rows (they do not depend on k); $out restores a")
    print("  server-side copy with an aggregation $out, reseed drops the collection and inserts N documents again")
    print("tr/test: the plugin's time per test over the test's own (none at k = 0); counters reads a touched")
    print(f"  collection whole; a cell stops repeating after {GRID_BUDGET:.0f} s once it has 3 samples; per N, the")
    print("  test and anchors, tracking, and counters each ran on a server of their own, started and seeded for them")


def start(provider: str) -> Service:
    """The MongoDB server of ``provider``: SecantusDB (embedded), or the Docker provider's container of the
    default image; exits with one line when it cannot be had."""
    try:
        if provider == "docker":
            image = DEFAULT_IMAGES["mongo"]
            reason = docker.engine_answers()
            if reason is None and not docker.has_image(image):
                reason = f"the image {image} is not on the Docker engine (pull it, or build one under that name)"
            if reason is not None:
                raise SystemExit(f"mongo_restore.py --provider docker: {reason}")
            return docker.mongo(StoreSettings("mongo", "docker", None, image, False, None, None))  # type: ignore[arg-type]
        return embedded.secantusdb(StoreSettings("mongo", "local", None, "", False, None, None))  # type: ignore[arg-type]
    except StoreUnavailable as exc:
        raise SystemExit(f"mongo_restore.py --provider {provider}: {str(exc).splitlines()[0]}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--spread", action="store_true", help="only the table of k documents across collections")
    parser.add_argument("--grid", action="store_true", help="only the table of k in 0..1000 at N in 1k..100k")
    parser.add_argument("--provider", choices=("embedded", "docker"), default="embedded",
                        help="SecantusDB started by the embedded provider (default), or the Docker provider's "
                        f"{DEFAULT_IMAGES['mongo']} container")
    parser.add_argument("--sizes", default=",".join(map(str, GRID_SIZES)),
                        help="--grid: the collection sizes, comma separated (default %(default)s)")
    args = parser.parse_args()
    reps = 10 if args.quick else 40
    sizes = tuple(int(size) for size in args.sizes.split(","))
    commands = Commands()
    if not args.grid:  # the grid counts no commands: no listener on its clients
        commands.count_probes()
        monitoring.register(commands)  # every client made from now on, the adapters' too
    where = "SecantusDB" if args.provider == "embedded" else f"{DEFAULT_IMAGES['mongo']} (Docker)"
    if args.grid:  # it starts servers of its own
        grid_table(args.provider, where, sizes, 6 if args.quick else 20)
        return
    service = start(args.provider)
    try:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(service.url)
        print(first_line(service, client) + "\n")
        if args.spread:
            spread_table(service.url, client, commands, reps, 1 if args.quick else 3, where)
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
        print(f"{where}: milliseconds per test (median); a strategy's time = checkpoint + rollback")
        print(header)
        print("-" * len(header))
        for n, k, tr, co, out_ms, reseed_ms in rows:
            ratios = f"{reseed_ms / tr:>8.0f}x {out_ms / tr:>7.0f}x {reseed_ms / co:>8.1f}x"
            print(f"{n:>7} {k:>5} | {tr:>9.2f} {co:>9.2f} | {out_ms:>9.1f} {reseed_ms:>9.1f} | {ratios}")
        print("\ntargets (MongoDB issue): k = 10 within 15 ms whatever the size; >= 50x faster than")
        print("drop-and-reseed at 50k documents (the tracking strategy; counters reads what was touched)")
        spread_table(service.url, client, commands, reps, 1 if args.quick else 3, where)
        client.close()
        mongomock_table(reps)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
