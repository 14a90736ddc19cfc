"""The restore of a test that touches no store, with Redis, MongoDB and Elasticsearch: probes one after the
other against probes sent ahead (``prefetch``), in this process, without pytest around it.

Run from the repository root::

    .venv/bin/python bench/probes_ahead.py                 # 10 rounds of 200 restores per variant
    .venv/bin/python bench/probes_ahead.py --rounds 5 --restores 100

Starts redis-server (from PATH), SecantusDB and noida-db as the plugin's local and
embedded providers do, activates the three built-in adapters in one engine, and
times ``engine.pop`` of a test's level (the level shared with the test before, as
the plugin does between untouched tests: one probe per store). The two variants
alternate round by round, so a change in the machine's load hits both:

* ``one after the other`` -- the adapters' ``prefetch`` switched off: each
  rollback sends its probe and waits for it, as before;
* ``sent ahead`` -- the engine enters every adapter's ``prefetch`` first.

Prints the median wall time per restore of each and their ratio, and each
server's round trip alone, as the adapters send them (Redis ``INFO commandstats``,
MongoDB ``serverStatus`` on the adapter's probe socket, Elasticsearch
``GET /_nodes/stats/http``, medians): sent ahead, a restore costs about the
slowest of them plus the plugin's own time. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter
from pytest_rollback.adapters.mongo import MongoAdapter
from pytest_rollback.adapters.redis import RedisAdapter
from pytest_rollback.api import Service
from pytest_rollback.engine import Engine
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import embedded, local


class _Hooks:
    """The plugin's default hook implementations, called directly (no pluggy, no signal holds)."""

    def pytest_rollback_checkpoint(self, adapter: Any, label: str | None) -> Any:
        return adapter.checkpoint(label)

    def pytest_rollback_rollback(self, adapter: Any, checkpoint: Any) -> Any:
        return adapter.rollback(checkpoint)

    def pytest_rollback_after_rollback(self, adapter: Any, checkpoint: Any, report: Any) -> None:
        pass


class _Switch:
    """An adapter whose ``prefetch`` can be switched off (then it sends nothing ahead)."""

    def __init__(self, adapter: Any) -> None:
        self.adapter, self.name, self.ahead = adapter, adapter.name, True

    def checkpoint(self, label: str | None) -> Any:
        return self.adapter.checkpoint(label)

    def rollback(self, token: Any) -> Any:
        return self.adapter.rollback(token)

    def release(self, token: Any) -> None:
        self.adapter.release(token)

    def close(self) -> None:
        self.adapter.close()

    @contextlib.contextmanager
    def prefetch(self, token: Any) -> Iterator[None]:
        with self.adapter.prefetch(token) if self.ahead else contextlib.nullcontext():
            yield


def _median_ms(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per variant (default 10)")
    parser.add_argument("--restores", type=int, default=200, help="restores per round (default 200)")
    args = parser.parse_args(argv)

    def settings(store: str, provider: str) -> StoreSettings:
        return StoreSettings(store, provider, None, "", False, None, None)  # type: ignore[arg-type]

    services: list[Service] = []
    try:
        services.append(local.redis(settings("redis", "local")))
        services.append(embedded.secantusdb(settings("mongo", "embedded")))
        services.append(embedded.elasticsearch(settings("elasticsearch", "embedded")))
        redis_url, mongo_url, es_url = (s.url for s in services)
        switches = [_Switch(RedisAdapter(redis_url)), _Switch(MongoAdapter(mongo_url)),
                    _Switch(ElasticsearchAdapter(es_url))]
        engine = Engine(_Hooks())
        for switch in switches:
            engine.activate(switch)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds + 1):  # the first round warms up and is not kept
            for ahead in (False, True):
                for switch in switches:
                    switch.ahead = ahead
                for i in range(args.restores):
                    level = engine.push(f"test t{i}", "test", reuse=True)
                    start = time.perf_counter()
                    engine.pop(level)
                    times[ahead].append(time.perf_counter() - start)
        kept = {ahead: ts[args.restores :] for ahead, ts in times.items()}
        redis_adapter, mongo_adapter, es_adapter = (s.adapter for s in switches)
        assert isinstance(redis_adapter, RedisAdapter) and redis_adapter._conn is not None
        conn, http = redis_adapter._conn, es_adapter.http
        probe = mongo_adapter._probe  # the probe's own socket (None: pymongo sends it)
        status = probe.server_status if probe is not None else functools.partial(
            mongo_adapter.client.admin.command, "serverStatus"
        )
        trips = {
            "Redis INFO commandstats": _median_ms(lambda: conn.call("INFO", "commandstats"), 500),
            "MongoDB serverStatus": _median_ms(status, 500),
            "Elasticsearch GET /_nodes/stats/http": _median_ms(lambda: http("GET", "/_nodes/stats/http"), 500),
        }
        engine.close()
    finally:
        for service in services:
            service.stop()
    one_by_one, ahead_ms = (statistics.median(kept[a]) * 1000 for a in (False, True))
    print(f"restore of an untouched test, Redis + MongoDB + Elasticsearch; {args.rounds} rounds of "
          f"{args.restores} restores per variant; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"  one after the other  median {one_by_one:6.3f} ms")
    print(f"  sent ahead           median {ahead_ms:6.3f} ms")
    print(f"  ratio {one_by_one / ahead_ms:.2f}x")
    print("  each probe alone (median of 500): " + ", ".join(f"{k} {v:.3f} ms" for k, v in trips.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
