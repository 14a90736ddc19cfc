"""Per-test restore cost of pytest-rollback's Redis strategies against the anchors.

    python bench/redis_restore.py [--quick]

Starts its own redis-server on a free loopback port (the plugin's local provider),
seeds N keys (half strings, half hashes), and for each k simulates a test that
writes k keys, timing:

* tracking   - the default strategy: checkpoint at test start, rollback at test end
* snapshot   - anchor: full snapshot at checkpoint, full compare-and-restore at rollback
* reseed     - anchor: FLUSHALL and seed the N keys again (what flush-based fixtures do)
* PING       - one redis-py round trip

Medians (and p90) in milliseconds, then ratios. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from pytest_rollback.adapters.redis import RedisAdapter  # noqa: E402
from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import local  # noqa: E402


def seed(r: redis.Redis, n: int) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            if i % 2:
                pipe.hset(f"product:{i}", mapping={"name": f"p{i}", "price": i})
            else:
                pipe.set(f"stock:{i}", i)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()


def write(r: redis.Redis, k: int, n: int, round_: int) -> None:
    if not k:
        return
    with r.pipeline(transaction=False) as pipe:
        for i in range(k):
            pipe.set(f"stock:{(i * 2) % n}", f"changed-{round_}")
        pipe.execute()


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1 if len(ordered) > 1 else 0] * 1000


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, N up to 10k")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 100_000)
    ks = (0, 10, 1000)
    settings = StoreSettings("redis", "local", None, "", False, None, None)  # type: ignore[arg-type]
    service = local.redis(settings)
    try:
        r = redis.Redis.from_url(service.url)
        pings = [timed(r.ping) for _ in range(3000)]
        ping_ms, _ = summary(pings)
        print(f"redis {service.version} at {service.url} (local provider); one PING: {ping_ms:.3f} ms median\n")
        rows = []
        for n in sizes:
            r.flushall()
            seed(r, n)
            reseed = [timed(lambda n=n: (r.flushall(), seed(r, n))) for _ in range(3 if n > 10_000 else 10)]
            tracking = RedisAdapter(service.url)
            tracking.checkpoint("session seed")  # the scope's checkpoint, once
            results = {}
            for k in ks:
                reps = 300 if k <= 10 else 40
                rb, per_test = [], []
                for i in range(reps):
                    t0 = time.perf_counter()
                    cp = tracking.checkpoint("test")
                    t1 = time.perf_counter()
                    write(r, k, n, i)
                    t2 = time.perf_counter()
                    report = tracking.rollback(cp)
                    t3 = time.perf_counter()
                    tracking.release(cp)
                    assert report.mode in ("none", "incremental"), report
                    rb.append(t3 - t2)
                    per_test.append((t1 - t0) + (t3 - t2))
                results[k] = (summary(rb), summary(per_test))
            tracking.close()
            snapshot = RedisAdapter(service.url, strategy="snapshot")
            snap_results = {}
            for k in ks:
                samples = []
                for i in range(3 if n > 10_000 else 10):
                    t0 = time.perf_counter()
                    cp = snapshot.checkpoint("test")
                    t1 = time.perf_counter()
                    write(r, k, n, i)
                    t2 = time.perf_counter()
                    snapshot.rollback(cp)
                    t3 = time.perf_counter()
                    snapshot.release(cp) if hasattr(snapshot, "release") else None
                    samples.append((t1 - t0) + (t3 - t2))
                snap_results[k] = summary(samples)
            snapshot.close()
            reseed_ms, _ = summary(reseed)
            for k in ks:
                (rb_ms, rb_p90), (pt_ms, _) = results[k]
                rows.append((n, k, rb_ms, rb_p90, pt_ms, snap_results[k][0], reseed_ms))
        header = (
            f"{'N':>7} {'k':>5} | {'rollback':>9} {'p90':>7} {'per test':>9} | {'snapshot':>9} {'reseed':>9} | "
            f"{'rb/PING':>8} {'reseed/tr':>10} {'snap/tr':>8}"
        )
        print("milliseconds per test (median); tracking = checkpoint + rollback of pytest-rollback's default")
        print(header)
        print("-" * len(header))
        for n, k, rb_ms, rb_p90, pt_ms, snap_ms, reseed_ms in rows:
            print(
                f"{n:>7} {k:>5} | {rb_ms:>9.3f} {rb_p90:>7.3f} {pt_ms:>9.3f} | {snap_ms:>9.2f} {reseed_ms:>9.2f} | "
                f"{rb_ms / ping_ms:>7.1f}x {reseed_ms / pt_ms:>9.0f}x {snap_ms / pt_ms:>7.0f}x"
            )
        print("\ntargets (issue 2):")
        small = [rb / ping_ms for n, k, rb, *_ in rows if k <= 10]
        print(f"  rollback of k <= 10 within 5x a PING at any N: worst {max(small):.1f}x -> "
              f"{'met' if max(small) <= 5 else 'NOT met'}")
        big = [reseed / pt for n, k, _, _, pt, _, reseed in rows if n == max(sizes) and k <= 10]
        print(f"  >= 1000x faster than flush-and-reseed at N={max(sizes)} (k <= 10): worst {min(big):.0f}x -> "
              f"{'met' if min(big) >= 1000 else 'NOT met'}")
        r.close()
    finally:
        service.stop()


if __name__ == "__main__":
    main()
