"""Branching tests against rebuilding their starting state: whole pytest runs, timed.

Run from the repository root::

    .venv/bin/python bench/branching.py                  # 30 variants of a 20,000-key state, 5 timed runs
    .venv/bin/python bench/branching.py --variants 30 --keys 20000 --runs 3

A suite explores ``--variants`` ways to go on from one expensive state (``--keys``
Redis hashes written by pipeline, then an order placed on top). Each variant
writes a few keys and checks that it sees the state and no other variant's
writes. The same suite is written five ways and run with ``python -m pytest``
(``--rollback-provider=local``: the plugin starts a ``redis-server`` on
127.0.0.1), interleaved run by run:

* ``branch_from``      -- one test builds the state; every variant is a test marked
  ``@pytest.mark.branch_from`` it, rolled back to the parent's end state;
* ``branch subtests``  -- one test builds the state and runs every variant in
  ``with rollback.branch(name, subtest=True)``;
* ``plugin, rebuild``  -- with the plugin, but every variant builds the state itself
  (what a suite does without branching);
* ``flush + re-seed``  -- the anchor of pytest-redis-style fixtures: ``--no-rollback``,
  every variant flushes the database and builds the state again;
* ``snapshot restore`` -- the other anchor: ``--no-rollback``, the state is built once
  and DUMPed; every variant flushes and RESTOREs all of it.

Reported: median wall time of the whole run and pytest's own "in X s", and each
variant's ratio to ``branch_from``. The script only prints: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from plugin_overhead import Variant, clean_env, other_plugins, run_once

BUILD = '''\
import pytest

KEYS = {keys}
VARIANTS = {variants}


def build(r):
    """The expensive state: KEYS hashes, then an order placed on top."""
    with r.pipeline(transaction=False) as pipe:
        for i in range(KEYS):
            pipe.hset(f"product:{{i}}", mapping={{"name": f"Product {{i}}", "price": 100 + i, "stock": 10}})
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
    r.hset("order:1", mapping={{"status": "placed", "total": 300}})
    r.hincrby("product:7", "stock", -2)


def variant(r, n):
    """One way to go on: it must see the state, and no other variant's writes."""
    assert r.hget("order:1", "status") == b"placed"
    assert r.get("variant") is None
    r.set("variant", n)
    r.hset("order:1", "status", f"path-{{n}}")
    r.hincrby("product:7", "stock", n)
    r.rpush("events", *range(3))
'''

SUITES = {
    "branch_from": '''
def test_build(redis_client):
    build(redis_client)


@pytest.mark.branch_from("test_build")
@pytest.mark.parametrize("n", range(VARIANTS))
def test_variant(redis_client, n):
    variant(redis_client, n)
''',
    "subtests": '''
def test_variants(redis_client, rollback):
    build(redis_client)
    for n in range(VARIANTS):
        with rollback.branch(f"variant {n}", subtest=True):
            variant(redis_client, n)
''',
    "rebuild": '''
def test_build(redis_client):
    build(redis_client)


@pytest.mark.parametrize("n", range(VARIANTS))
def test_variant(redis_client, n):
    build(redis_client)
    variant(redis_client, n)
''',
    "reseed": '''
def test_build(redis_client):
    redis_client.flushdb()
    build(redis_client)


@pytest.mark.parametrize("n", range(VARIANTS))
def test_variant(redis_client, n):
    redis_client.flushdb()
    build(redis_client)
    variant(redis_client, n)
''',
    "snapshot": '''
@pytest.fixture(scope="session")
def snapshot(redis_client):
    redis_client.flushdb()
    build(redis_client)
    keys = redis_client.keys()
    with redis_client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
            pipe.dump(key)
        out = pipe.execute()
    return [(k, max(out[2 * i], 0), out[2 * i + 1]) for i, k in enumerate(keys)]


def restore(r, snapshot):
    r.flushdb()
    with r.pipeline(transaction=False) as pipe:
        for n, (key, ttl, dumped) in enumerate(snapshot):
            pipe.restore(key, ttl, dumped)
            if n % 5000 == 4999:
                pipe.execute()
        pipe.execute()


def test_build(redis_client, snapshot):
    restore(redis_client, snapshot)


@pytest.mark.parametrize("n", range(VARIANTS))
def test_variant(redis_client, snapshot, n):
    restore(redis_client, snapshot)
    variant(redis_client, n)
''',
}


def write_suite(directory: Path, body: str, keys: int, variants: int) -> None:
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no ini of an enclosing project applies
    (directory / "test_variants.py").write_text(BUILD.format(keys=keys, variants=variants) + body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=30, help="ways to go on from the state (default 30)")
    parser.add_argument("--keys", type=int, default=20_000, help="hashes in the expensive state (default 20,000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant, after one warm-up (default 5)")
    args = parser.parse_args(argv)
    env = clean_env()
    others = [name for name in other_plugins() if name not in ("subtests",)]
    common = [arg for name in others for arg in ("-p", f"no:{name}")] + ["--rollback-provider=local"]
    tests = args.variants + 1
    with tempfile.TemporaryDirectory(prefix="pytest-rollback-bench-") as tmp:
        dirs = {}
        for name, body in SUITES.items():
            dirs[name] = Path(tmp, name)
            write_suite(dirs[name], body, args.keys, args.variants)
        variants = [
            Variant("branch_from", dirs["branch_from"], []),
            Variant("branch subtests (1 test)", dirs["subtests"], []),
            Variant("plugin, every variant rebuilds", dirs["rebuild"], []),
            Variant("flush + re-seed per variant (anchor)", dirs["reseed"], ["--no-rollback"]),
            Variant("snapshot restore per variant (anchor)", dirs["snapshot"], ["--no-rollback"]),
        ]
        counts = {variants[1].name: 1}
        started = time.perf_counter()
        for i in range(args.runs + 1):  # the first round warms the file cache and is not kept
            for v in variants:
                run_once(v, counts.get(v.name, tests), env, keep=i > 0, common=common)
        elapsed = time.perf_counter() - started

    base = variants[0]
    print(
        f"{args.variants} variants of a state of {args.keys:,} hashes; {args.runs} timed runs per suite (after a "
        f"warm-up), interleaved; {elapsed:.0f} s in all; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  {'suite':<40} {'whole run s':>11} {'pytest session s':>16} {'session / branch_from':>22}")
    for v in variants:
        print(f"  {v.name:<40} {v.wall_s:11.3f} {v.session_s:16.3f} {v.session_s / base.session_s:21.2f}x")
    per_variant = {v.name: statistics.median(v.session) / tests * 1000 for v in variants}
    print()
    print(
        "Per variant (pytest session / tests): "
        + "; ".join(f"{name} {ms:.1f} ms" for name, ms in per_variant.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
