"""What one test's rollback of the embedded stores (fakeredis, mongomock: in this process) costs.

Run from the repository root::

    .venv/bin/python bench/embedded_restore.py          # about 4 minutes
    .venv/bin/python bench/embedded_restore.py --quick  # fewer repetitions
    .venv/bin/python bench/embedded_restore.py --only mongomock
    .venv/bin/python bench/embedded_restore.py --grid   # k = 0, 1, 10, 100, 1000 at N = 1k, 10k, 100k (~4 min)
    .venv/bin/python bench/embedded_restore.py --grid --sizes 1000,10000 --quick  # a short check

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

``--grid`` prints, per store (``--only`` picks one), a row for every N in 1,000,
10,000, 100,000 (``--sizes`` for others) and k in 0, 1, 10, 100, 1000, with the medians
(ms per test) of:

* ``journal``: checkpoint + rollback + release of the journal, as above, and
  ``restore``: rollback + release alone;
* ``hooks``: the time the journal's recording hooks spend inside the test's writes
  (where it takes its before-images; not part of ``journal``), timed by wrapping them;
* ``test``: the same k writes on a second store without any adapter (the test itself,
  no plugin work), paired with each journal test;
* the full-snapshot anchor: ``RedisAdapter(strategy="snapshot")`` for Redis, and
  copy-on-touch for mongomock (checkpoint + the collection's first touch, where it is
  copied whole, + rollback + release); at N >= 10,000 measured at k = 10 only (a few
  tests) and shown on that N's other rows, marked ``*``;
* ``reseed``: flush / drop + re-seed, measured once per N and shown on each of its rows;

then the ratios reseed / journal, snapshot (or copy) / journal and journal / test, and a
line saying whether the issue's target (restore of k = 10 on N = 100,000 within 1 ms)
is met. ``--quick`` takes a quarter of the grid's journal tests.

Times come from ``time.perf_counter``; the tables show medians and the ratios to the
journal. The script only prints: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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


def redis_table(quick: bool, sizes: Sequence[int] = SIZES) -> None:
    service = embedded.redis(StoreSettings("redis", "embedded", None, "", False, None, None))  # type: ignore[arg-type]
    client = redis.Redis(host=service.host, port=service.port)
    server = service.extra["fakeredis"]
    print(f"embedded Redis: {service.version}, over TCP from a thread of this process")
    print("per test: checkpoint + rollback + release (restore: the rollback alone), medians in ms\n")
    table_header("snapshot")
    try:
        for n in sizes:
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


def mongomock_table(quick: bool, sizes: Sequence[int] = SIZES) -> None:
    import mongomock

    from pytest_rollback.adapters.mongomock import MongomockAdapter

    print(f"\nembedded MongoDB: mongomock {mongomock.__version__}, in this process; one collection of N documents")
    print("per test: checkpoint + rollback + release (restore: the rollback alone), medians in ms\n")
    table_header("copy")
    for n in sizes:
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


# -- --grid: every k at every N, next to the anchors and to the test itself ---------------------------------

GRID_SIZES = (1_000, 10_000, 100_000)
GRID_WRITES = (0, 1, 10, 100, 1000)
#: the issue's target: a test that wrote this many keys / documents, on a store of this size, ...
TARGET_K, TARGET_N = 10, 100_000
#: ... restores (rollback + release) within this many ms
TARGET_MS = 1.0

#: journal tests per row (after warm-up ones), by N then k; each is paired with the same test on a plain store
REDIS_REPS = {n: {0: 500, 1: 500, 10: 400, 100: 150, 1000: 30} for n in GRID_SIZES}
MONGOMOCK_REPS = {
    1_000: {0: 500, 1: 200, 10: 200, 100: 100, 1000: 30},
    10_000: {0: 500, 1: 30, 10: 30, 100: 20, 1000: 8},  # mongomock's own update_many scans every document
    100_000: {0: 500, 1: 11, 10: 11, 100: 7, 1000: 3},
}
#: full-snapshot anchor, by N: (the k it is measured at, tests); the other rows of that N show its k = 10 figure
REDIS_SNAPSHOT = {1_000: (GRID_WRITES, 10), 10_000: ((10,), 3), 100_000: ((10,), 2)}
MONGOMOCK_COPY = {1_000: (GRID_WRITES, 30), 10_000: ((0, 10), 7), 100_000: ((0, 10), 3)}
#: flush / drop + re-seed, by N (it does not depend on k)
RESEEDS = {1_000: 20, 10_000: 5, 100_000: 2}


def planned(table: dict[int, Any], n: int) -> Any:
    """``table``'s entry for N = n (for sizes outside the grid: the nearest smaller one, else the smallest)."""
    smaller = [size for size in table if size <= n]
    return table[max(smaller) if smaller else min(table)]


def warmups(reps: int) -> int:
    return 0 if reps <= 3 else (1 if reps < 10 else 3)


def fewer(reps: int, quick: bool) -> int:
    return max(1, reps // 4) if quick else reps


class HookClock:
    """Time spent inside one recording hook of a journal: ``owner.name`` wrapped on that instance only.

    The journal takes its before-images there, inside the test's writes, where the checkpoint, rollback
    and release timings do not see them. The wrapper adds two ``perf_counter`` calls to each hook call.
    """

    def __init__(self, owner: Any, *names: str) -> None:
        self.spent = 0.0
        for name in names:
            setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return hook(*args, **kwargs)
            finally:
                self.spent += clock() - start

        return timed


def journal_tests(
    adapter: Any,
    hooks: HookClock,
    adapted: Callable[[int], object],
    plain: Callable[[int], object],
    undo: Callable[[int], object],
    reps: int,
) -> dict[str, list[float]]:
    """Per simulated test, in ms: the journal's ``total`` (checkpoint + rollback + release), ``restore``
    (rollback + release), ``hooks`` (its recording hooks during the writes) and ``test`` (the same writes
    on a store without any adapter, undone untimed; before or after the journal's test, alternately)."""
    out: dict[str, list[float]] = {"total": [], "restore": [], "hooks": [], "test": []}
    for r in range(-warmups(reps), reps):
        bare = 0.0
        if r % 2:
            t = time.perf_counter()
            plain(r)
            bare = time.perf_counter() - t
            undo(r)
        t0 = time.perf_counter()
        token = adapter.checkpoint("test")
        t1 = time.perf_counter()
        hooks.spent = 0.0
        adapted(r)
        hooked = hooks.spent
        t2 = time.perf_counter()
        adapter.rollback(token)
        adapter.release(token)
        t3 = time.perf_counter()
        if not r % 2:
            t = time.perf_counter()
            plain(r)
            bare = time.perf_counter() - t
            undo(r)
        if r >= 0:
            out["total"].append((t1 - t0 + t3 - t2) * 1000)
            out["restore"].append((t3 - t2) * 1000)
            out["hooks"].append(hooked * 1000)
            out["test"].append(bare * 1000)
    return out


def ms(value: float) -> str:
    if abs(value) < 10:
        return f"{value:.3f}"
    return f"{value:.1f}" if abs(value) < 10_000 else f"{value:,.0f}"


def times(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


class Grid:
    """One store's grid table: printed row by row, and the target's line at the end."""

    def __init__(self, snapshot: str) -> None:
        self.head = (
            f"{'N':>7} {'k':>5} | {'journal':>8} {'restore':>8} {'hooks':>8} {'test':>8} "
            f"| {snapshot:>10} {'reseed':>9} | {'reseed/j':>9} {snapshot + '/j':>10} {'j/test':>8}"
        )
        print(self.head)
        print("-" * len(self.head))
        self.restores: dict[tuple[int, int], float] = {}

    def row(self, n: int, k: int, journal: dict[str, list[float]], snap: float, snap_k: int, reseed: float) -> None:
        total, restore, hooks, test = (statistics.median(journal[key]) for key in ("total", "restore", "hooks", "test"))
        self.restores[(n, k)] = restore
        mark = " " if snap_k == k else "*"
        print(
            f"{n:>7,} {k:>5} | {ms(total):>8} {ms(restore):>8} {ms(hooks):>8} {ms(test):>8} "
            f"| {ms(snap) + mark:>10} {ms(reseed):>9} | {times(reseed / total):>9} {times(snap / total):>10} "
            f"{times(total / test) if k else '-':>8}",
            flush=True,
        )

    def footer(self, store: str, notes: list[str]) -> None:
        print("-" * len(self.head))
        for note in notes:
            print(note)
        restore = self.restores.get((TARGET_N, TARGET_K))
        if restore is None:
            verdict = f"not measured in this run (needs N = {TARGET_N:,}, k = {TARGET_K})"
        else:
            verdict = f"{'MET' if restore <= TARGET_MS else 'NOT MET'} (median {ms(restore)} ms)"
        print(f"target, {store}: restore of k = {TARGET_K} on N = {TARGET_N:,} <= {TARGET_MS:g} ms: {verdict}\n")


def plan_notes(reps: dict[int, dict[int, int]], anchor: dict[int, Any], name: str, sizes: Sequence[int],
               quick: bool) -> list[str]:  # fmt: skip
    notes = []
    for n in sizes:
        ks, tests = planned(anchor, n)
        which = "every k" if tuple(ks) == GRID_WRITES else "k = " + ", ".join(map(str, ks))
        notes.append(
            f"  N = {n:,}: journal tests per k "
            + ", ".join(f"{k}: {fewer(r, quick)}" for k, r in planned(reps, n).items())
            + f"; {name} {tests} per k measured ({which}); reseed {planned(RESEEDS, n)}"
        )
    return notes


def unwrite(client: redis.Redis, n: int, k: int, round_: int) -> None:
    """Undo ``write(client, n, k, round_)`` on a store without an adapter (untimed)."""
    if not k:
        return
    pipe = client.pipeline(transaction=False)
    for i in range(k):
        if i % 2:
            pipe.set(f"seed:{(i * 7919 + round_) % n}", VALUE)
        else:
            pipe.delete(f"new:{round_}:{i}")
    pipe.execute()


def redis_grid(sizes: Sequence[int], quick: bool) -> None:
    settings = StoreSettings("redis", "embedded", None, "", False, None, None)  # type: ignore[arg-type]
    plain_service = embedded.redis(settings)
    service = embedded.redis(settings)
    plain = redis.Redis(host=plain_service.host, port=plain_service.port)
    client = redis.Redis(host=service.host, port=service.port)
    started = time.perf_counter()
    print(f"embedded Redis grid: {service.version}, two servers over TCP from threads of this process")
    print("(one with the journal; one without any adapter, for the test alone and the anchors); medians, ms\n")
    grid = Grid("snapshot")
    try:
        for n in sizes:
            reseed_ms = statistics.median(reseed(plain, n, planned(RESEEDS, n)))  # leaves the plain server seeded
            seed(client, n)
            snap_ks, snap_reps = planned(REDIS_SNAPSHOT, n)
            snaps: dict[int, float] = {}
            for k in snap_ks:
                snapshot = RedisAdapter(plain_service.url, strategy="snapshot")
                snap_root = snapshot.checkpoint("session")
                snaps[k] = statistics.median(per_test(snapshot, functools.partial(write, plain, n, k), snap_reps)[0])
                snapshot.rollback(snap_root)
                snapshot.close()
            journal = InProcessRedisAdapter(service.url, service.extra["fakeredis"])
            hooks = HookClock(journal._journal, "note")
            root = journal.checkpoint("session")
            for k, reps in planned(REDIS_REPS, n).items():
                measured = journal_tests(
                    journal,
                    hooks,
                    functools.partial(write, client, n, k),
                    functools.partial(write, plain, n, k),
                    functools.partial(unwrite, plain, n, k),
                    fewer(reps, quick),
                )
                snap_k = k if k in snaps else TARGET_K
                grid.row(n, k, measured, snaps[snap_k], snap_k, reseed_ms)
            journal.rollback(root)
            journal.close()
            del journal._journal.note  # (the server's journal outlives the adapter: unwrap its hook)
    finally:
        client.close()
        plain.close()
        service.stop()
        plain_service.stop()
    grid.footer(
        "embedded Redis",
        [
            "journal = InProcessRedisAdapter checkpoint + rollback + release (ratios use it); restore = rollback +",
            "  release; hooks = time in the journal's recording hook during the test's writes (before-images,",
            "  taken inside the test: not in `journal`); test = the same k writes on a server without any adapter",
            "  (one pipeline over TCP; k = 0 sends nothing), paired with each journal test.",
            'snapshot = RedisAdapter(strategy="snapshot") checkpoint + rollback + release (a full copy and a full',
            "  comparison: the embedded provider's strategy before the journal); * = measured at k = 10 only for",
            "  that N (it copies and compares all N keys whatever k is), shown on every row of that N.",
            "reseed = FLUSHALL + the N keys written again by pipelines of 5,000: measured once per N (it does not",
            "  depend on k), shown on every row of that N.",
            "ratios: reseed / journal, snapshot / journal, journal / test. Tests measured (after warm-up ones):",
            *plan_notes(REDIS_REPS, REDIS_SNAPSHOT, "snapshot", sizes, quick),
            f"  {time.perf_counter() - started:.0f} s for this table",
        ],
    )


def mongomock_undo(coll: Any, k: int, round_: int) -> None:
    """Remove what ``mongomock_write`` inserted on a store without an adapter (untimed; the updated
    documents keep their decremented stock: same shape, same cost)."""
    if k:
        coll.delete_many({"sku": "added"})


def copy_per_test(adapter: Any, coll: Any, n: int, k: int, reps: int) -> list[float]:
    """copy-on-touch per test, in ms: checkpoint, the collection's first touch (where it is copied whole;
    ``index_information()`` reads no document) when the test writes at all, rollback + release."""
    out = []
    for r in range(-warmups(reps), reps):
        t0 = time.perf_counter()
        token = adapter.checkpoint("test")
        if k:
            coll.index_information()
        t1 = time.perf_counter()
        mongomock_write(coll, n, k, r)
        t2 = time.perf_counter()
        adapter.rollback(token)
        adapter.release(token)
        t3 = time.perf_counter()
        if r >= 0:
            out.append((t1 - t0 + t3 - t2) * 1000)
    return out


def mongomock_grid(sizes: Sequence[int], quick: bool) -> None:
    import mongomock

    from pytest_rollback.adapters.mongomock import MongomockAdapter

    started = time.perf_counter()
    print(f"embedded MongoDB grid: mongomock {mongomock.__version__}, in this process; one collection of N documents")
    print("(a store with the journal, one with copy-on-touch, one without any adapter); medians, ms\n")
    grid = Grid("copy")
    for n in sizes:
        plain: Any = mongomock.MongoClient().shop.products
        reseed_ms = statistics.median(mongomock_reseed(plain, n, planned(RESEEDS, n)))  # leaves it seeded
        copy_ks, copy_reps = planned(MONGOMOCK_COPY, n)
        client: Any = mongomock.MongoClient()
        coll = client.shop.products
        coll.insert_many(documents(n))
        copying = MongomockAdapter(client, strategy="copy-on-touch")
        root = copying.checkpoint("session")
        copies = {k: statistics.median(copy_per_test(copying, coll, n, k, copy_reps)) for k in copy_ks}
        copying.rollback(root)
        copying.close()
        client = mongomock.MongoClient()
        coll = client.shop.products
        coll.insert_many(documents(n))
        journal = MongomockAdapter(client, strategy="journal")
        hooks = HookClock(journal._impl, "note_doc", "note_meta", "note_name")
        root = journal.checkpoint("session")
        for k, reps in planned(MONGOMOCK_REPS, n).items():
            measured = journal_tests(
                journal,
                hooks,
                functools.partial(mongomock_write, coll, n, k),
                functools.partial(mongomock_write, plain, n, k),
                functools.partial(mongomock_undo, plain, k),
                fewer(reps, quick),
            )
            copy_k = k if k in copies else TARGET_K
            grid.row(n, k, measured, copies[copy_k], copy_k, reseed_ms)
        journal.rollback(root)
        journal.close()
    grid.footer(
        "embedded MongoDB (mongomock)",
        [
            'journal = MongomockAdapter(strategy="journal") checkpoint + rollback + release (ratios use it);',
            "  restore = rollback + release; hooks = time in the journal's recording hooks during the test's writes",
            "  (deep-copied before-images, taken inside the test: not in `journal`); test = the same k writes on a",
            "  store without any adapter (one update_many over k/2 ids, which mongomock answers by scanning all N",
            "  documents, then one insert_many; k = 0 does nothing), paired with each journal test. mongomock's two",
            "  update methods stay wrapped process-wide once a journal exists: one getattr per updated document.",
            'copy = MongomockAdapter(strategy="copy-on-touch") checkpoint + the first touch of the collection',
            "  (deep-copied whole there) + rollback + release (put back by a second copy); nothing is copied at",
            "  k = 0; * = measured at k = 10 only for that N (any k >= 1 copies the whole collection), shown on",
            "  the rows k >= 1 of that N.",
            "reseed = the collection dropped and its N documents inserted again: measured once per N (it does not",
            "  depend on k), shown on every row of that N.",
            "ratios: reseed / journal, copy / journal, journal / test. Tests measured (after warm-up ones):",
            *plan_notes(MONGOMOCK_REPS, MONGOMOCK_COPY, "copy", sizes, quick),
            f"  {time.perf_counter() - started:.0f} s for this table",
        ],
    )


def sizes_arg(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of sizes: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=("redis", "mongomock"), help="one store's table")
    parser.add_argument(
        "--grid", action="store_true", help="k = 0, 1, 10, 100, 1000 at N = 1k, 10k, 100k, with the test alone"
    )
    parser.add_argument("--sizes", type=sizes_arg, help="comma-separated store sizes N instead of the default ones")
    args = parser.parse_args()
    if args.grid:
        started = time.perf_counter()
        sizes = args.sizes or GRID_SIZES
        print(f"load average {os.getloadavg()[0]:.2f} at the start; {os.cpu_count()} CPUs\n")
        if args.only in (None, "redis"):
            redis_grid(sizes, args.quick)
        if args.only in (None, "mongomock"):
            mongomock_grid(sizes, args.quick)
        print(f"done in {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")
        return
    sizes = args.sizes or SIZES
    if args.only in (None, "redis"):
        redis_table(args.quick, sizes)
    if args.only in (None, "mongomock"):
        mongomock_table(args.quick, sizes)


if __name__ == "__main__":
    main()
