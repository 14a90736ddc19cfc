"""Exploring states and Hypothesis examples: rollback against flush + re-seed, in one run.

Run from the repository root::

    .venv/bin/python bench/explore.py                    # 5,000 seeded hashes, 100 examples, 3 runs
    .venv/bin/python bench/explore.py --keys 10000 --examples 200 --runs 5 --observe

Two measurements, each against its anchor on the same work, interleaved run by run:

* **Exploration.** A small known state graph on top of ``--keys`` seeded Redis
  hashes: three counters a, b and c, each 0 to 2 (``inc_a``, ``inc_b``, ``inc_c``
  while below 2, and ``reset``), 27 states, explored breadth first to depth 6.
  ``rollback.explore``'s engine (the plugin's :class:`~pytest_rollback.explore.Explorer`
  over a tracking :class:`~pytest_rollback.adapters.redis.RedisAdapter`) checkpoints
  every state and rolls back between paths; the anchor reaches every state the
  same way, breadth first, but by FLUSHDB, re-seeding the hashes and replaying
  the path from the start before each action. Both tell states apart by the same
  key (the three counters); with ``--observe`` a third row fingerprints every
  state with the adapter's full ``observe()`` instead, for what that costs.
* **Hypothesis.** A ``@given`` test of ``--examples`` examples that writes a few
  keys per example on top of the same seeded hashes, as whole pytest runs
  (``--rollback-provider=local``): with the plugin rolling back each example, and
  the anchor under ``--no-rollback`` flushing and re-seeding at the start of
  each example. The examples are the same in both (``derandomize=True``); the
  time is the test's own, from its first example to the end of its call.

Printed: medians of ``--runs`` runs, states (or examples) per second, and the
ratio. The script asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from pytest_rollback.adapters.redis import RedisAdapter
from pytest_rollback.engine import Engine
from pytest_rollback.explore import Action, Explorer
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import local

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plugin_overhead import clean_env  # noqa: E402

DEPTH = 6
#: the graph's distinct states: a, b and c each 0, 1 or 2
STATES = 27


class Hooks:
    """The plugin's default strategy hooks, for an engine driven outside pytest."""

    def pytest_rollback_checkpoint(self, adapter: Any, label: str | None) -> Any:
        return adapter.checkpoint(label)

    def pytest_rollback_rollback(self, adapter: Any, checkpoint: Any) -> Any:
        result = adapter.rollback(checkpoint)
        return True if result is None else result

    def pytest_rollback_after_rollback(self, **kwargs: Any) -> None:
        pass


def seed(r: redis.Redis, keys: int) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(keys):
            pipe.hset(f"product:{i}", mapping={"name": f"Product {i}", "price": 100 + i, "stock": 10})
            if i % 5000 == 4999:
                pipe.execute()
        pipe.mset({"a": 0, "b": 0, "c": 0})
        pipe.execute()


def graph(r: redis.Redis) -> tuple[list[Action], Callable[[], Any]]:
    """The actions of the graph, and the key that tells its states apart."""

    def below_two(name: str) -> Callable[[], bool]:
        return lambda: int(r.get(name) or 0) < 2

    def inc(name: str) -> Callable[[], None]:
        def action() -> None:
            r.incr(name)

        action.__name__ = f"inc_{name}"
        return action

    def reset() -> None:
        r.mset({"a": 0, "b": 0, "c": 0})

    actions = [Action(inc(n), when=below_two(n)) for n in "abc"] + [Action(reset)]
    return actions, lambda: tuple(r.mget("a", "b", "c"))


def explore_with_rollback(url: str, r: redis.Redis, observe: bool) -> tuple[int, int, float]:
    engine = Engine(Hooks())
    engine.activate(RedisAdapter(url, dbs=[0]))
    try:
        actions, key = graph(r)
        explorer = Explorer(
            engine, actions, [], max_depth=DEPTH, budget=None, key=None if observe else key, observe=observe,
            label="bench",
        )
        start = time.perf_counter()
        result = explorer.run()
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    return result.states, result.sequences, seconds


def explore_by_reseeding(r: redis.Redis, keys: int) -> tuple[int, int, float]:
    """The same breadth-first search, each action tried after FLUSHDB, re-seeding and replaying its path."""
    actions, key = graph(r)
    start = time.perf_counter()
    seen = {key()}
    frontier: list[tuple[int, ...]] = [()]
    sequences = 0
    for _ in range(DEPTH):
        found: list[tuple[int, ...]] = []
        for path in frontier:
            for index, action in enumerate(actions):
                r.flushdb()
                seed(r, keys)
                for step in path:
                    actions[step].fn()
                if action.when is not None and not action.when():
                    continue
                action.fn()
                sequences += 1
                state = key()
                if state not in seen:
                    seen.add(state)
                    found.append((*path, index))
        frontier = found
    return len(seen), sequences, time.perf_counter() - start


SUITE = '''
import os
import time

import pytest
from explore import seed  # this script, on PYTHONPATH: the same seeding as the exploration's
from hypothesis import HealthCheck, given, settings, strategies as st

KEYS = {keys}
EXAMPLES = {examples}
FLUSH = {flush}
TIMES = []


@pytest.fixture(scope="module")
def catalogue(redis_client):
    seed(redis_client, KEYS)


@settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(sku=st.integers(0, KEYS - 1), qty=st.integers(1, 5))
def test_examples(redis_client, catalogue, sku, qty):
    if not TIMES:
        TIMES.append(time.perf_counter())
    if FLUSH:
        redis_client.flushdb()
        seed(redis_client, KEYS)
    assert redis_client.get("order") is None
    redis_client.hincrby(f"product:{{sku}}", "stock", -qty)
    redis_client.hset("order", mapping={{"sku": sku, "qty": qty}})
    redis_client.rpush("events", "ordered")


def test_report():
    with open(os.environ["BENCH_OUT"], "w") as out:
        out.write(str(time.perf_counter() - TIMES[0]))
'''


def hypothesis_run(directory: Path, flush: bool, env: dict[str, str]) -> float:
    out = directory / "seconds.txt"
    args = ["--no-rollback"] if flush else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rollback-provider=local", *args, "."]
    proc = subprocess.run(
        cmd, cwd=directory, env={**env, "BENCH_OUT": str(out), "PYTHONPATH": str(Path(__file__).resolve().parent)},
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0 or "2 passed" not in proc.stdout:
        raise SystemExit(f"the run failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return float(out.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=5_000, help="seeded hashes under the graph (default 5,000)")
    parser.add_argument("--examples", type=int, default=100, help="Hypothesis examples per run (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--observe", action="store_true", help="also fingerprint states by observe() (slow)")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.keys:,} seeded hashes, {args.runs} runs, medians")

    rows: dict[str, list[tuple[int, int, float]]] = {"rollback": [], "reseed": []}
    if args.observe:
        rows["rollback, observe()"] = []
    service = local.redis(StoreSettings("redis", "local", None, "", False, None, None))
    try:
        r = redis.Redis.from_url(service.url)
        for _ in range(args.runs):
            r.flushdb()
            seed(r, args.keys)
            rows["rollback"].append(explore_with_rollback(service.url, r, observe=False))
            if args.observe:
                rows["rollback, observe()"].append(explore_with_rollback(service.url, r, observe=True))
            rows["reseed"].append(explore_by_reseeding(r, args.keys))
        r.close()
    finally:
        service.stop()

    print(f"\nexploration: {STATES} states to depth {DEPTH}")
    print(f"{'how':<34}{'states':>7}{'sequences':>10}{'seconds':>9}{'states/s':>10}{'vs reseed':>10}")
    base = statistics.median(s for _, _, s in rows["reseed"])
    names = {
        "rollback": "rollback, key fingerprint",
        "rollback, observe()": "rollback, observe() fingerprint",
        "reseed": "flush + re-seed per path (anchor)",
    }
    for name, runs in rows.items():
        states, sequences, _ = runs[-1]
        seconds = statistics.median(s for _, _, s in runs)
        print(f"{names[name]:<34}{states:>7}{sequences:>10}{seconds:>9.3f}{states / seconds:>10.1f}"
              f"{base / seconds:>9.1f}x")

    env = clean_env()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for flush in (False, True):
            d = dirs[flush] = Path(tmp) / ("flush" if flush else "rollback")
            d.mkdir()
            (d / "test_examples.py").write_text(SUITE.format(keys=args.keys, examples=args.examples, flush=flush))
        for _ in range(args.runs):
            for flush in (False, True):
                times[flush].append(hypothesis_run(dirs[flush], flush, env))
    print(f"\nHypothesis: {args.examples} examples of a @given test (whole pytest runs)")
    print(f"{'how':<34}{'seconds':>9}{'examples/s':>12}{'vs reseed':>10}")
    base = statistics.median(times[True])
    for flush, name in ((False, "per-example rollback"), (True, "flush + re-seed per example (anchor)")):
        seconds = statistics.median(times[flush])
        print(f"{name:<34}{seconds:>9.3f}{args.examples / seconds:>12.1f}{base / seconds:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
