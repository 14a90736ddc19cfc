"""What a container costs at session start: cold against reused, and one per store against one per worker.

    python bench/docker_start.py [--runs N]

Needs a Docker engine with the default images (``.ci/images`` builds stand-ins
under those names where no registry can be reached). Per store (Redis, MongoDB,
Elasticsearch), through the plugin's ``docker`` provider:

* cold    - a new container: create, start, publish its port, wait until it
            answers (MongoDB: elected primary; Elasticsearch: health yellow),
            then removed
* reused  - with ``--rollback-docker-reuse``: the kept container of the same
            configuration found by its labels, checked, emptied (FLUSHALL /
            drop the databases / delete the indices and templates)
* all 3 reused: the three in a row, what a second run on a laptop pays

Then whole ``pytest -n 2`` runs of a small suite that uses all three stores:

* one per store  - the plugin: the first worker that needs a store starts its
                   container, the other joins it (one container per store)
* one per worker - what one container per worker costs (each worker starting its
                   own, as before this plugin shared them), simulated by two
                   processes each starting all three containers at the same time

Medians of ``--runs`` (default 3) in milliseconds. Prints only; asserts nothing.
Removes every container it started (by the labels of its own project).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_rollback.api import Service  # noqa: E402
from pytest_rollback.options import DEFAULT_IMAGES, StoreSettings  # noqa: E402
from pytest_rollback.services import docker  # noqa: E402

STORES = ("redis", "mongo", "elasticsearch")
SUITE = """
def test_all(redis_client, mongo_db, es_client, elasticsearch_service):
    redis_client.set("k", "v")
    mongo_db.items.insert_one({"_id": 1})
    es_client.index(index=elasticsearch_service.extra["prefix"] + "items", id="1", document={"a": 1}, refresh=True)

def test_again(redis_client, mongo_db, es_client):
    assert redis_client.dbsize() == 0
"""
#: "one per worker": a conftest.py whose make_service hook gives each worker a container of its own
PER_WORKER = """
import os

import pytest

from pytest_rollback.plugin import get_session
from pytest_rollback.services import docker

@pytest.hookimpl(tryfirst=True)
def pytest_rollback_make_service(store, config):
    settings = get_session(config).settings(store)
    settings.extra["server"] = f"{store}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"  # not shared
    return getattr(docker, store)(settings)
"""


def settings(store: str, state: str, reuse: bool) -> StoreSettings:
    return StoreSettings(store, "docker", None, DEFAULT_IMAGES[store], False, None, None,  # type: ignore[arg-type]
                         extra={"reuse": reuse}, state_dir=state)


def started(store: str, state: str, reuse: bool) -> tuple[float, Service]:
    """Start (or reuse) ``store``'s container: milliseconds, and the service."""
    begin = time.perf_counter()
    service = getattr(docker, store)(settings(store, state, reuse))
    return (time.perf_counter() - begin) * 1000, service


def starts(state: str, runs: int) -> None:
    print(f"{'store':<14}{'cold ms':>10}{'reused ms':>11}{'cold/reused':>13}")
    kept: list[str] = []
    cold_of: dict[str, float] = {}
    for store in STORES:
        cold = []
        for _ in range(runs):
            ms, service = started(store, state, False)
            cold.append(ms)
            service.stop()  # removed
        _, first = started(store, state, True)
        first.stop()  # kept, released for the next start
        kept.append(first.extra["container"])
        reused = []
        for _ in range(runs):
            ms, service = started(store, state, True)
            assert service.extra["container"] == first.extra["container"]
            reused.append(ms)
            service.stop()
        cold_of[store] = statistics.median(cold)
        print(f"{store:<14}{cold_of[store]:>10.0f}{statistics.median(reused):>11.0f}"
              f"{cold_of[store] / statistics.median(reused):>13.0f}")
    reused_all = []
    for _ in range(runs):
        begin = time.perf_counter()
        services = [started(store, state, True)[1] for store in STORES]
        reused_all.append((time.perf_counter() - begin) * 1000)
        for service in services:
            service.stop()
    print(f"{'all 3':<14}{sum(cold_of.values()):>10.0f}{statistics.median(reused_all):>11.0f}"
          f"{sum(cold_of.values()) / statistics.median(reused_all):>13.0f}")
    for container in kept:
        docker.remove(container)


def xdist(runs: int) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    times: dict[str, list[float]] = {"one per store": [], "one per worker": []}
    for _ in range(runs):
        for how in times:
            with tempfile.TemporaryDirectory() as where:
                Path(where, "test_suite.py").write_text(SUITE)
                Path(where, "pytest.ini").write_text("[pytest]\n")
                if how == "one per worker":
                    Path(where, "conftest.py").write_text(PER_WORKER)
                env = {**os.environ, "PYTHONPATH": root, "PYTEST_ROLLBACK_STATE_DIR": str(Path(where, "state"))}
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                                       "--rollback-provider=docker"], cwd=where, env=env, capture_output=True,
                                      text=True)
                times[how].append((time.perf_counter() - start) * 1000)
                if done.returncode != 0:
                    print(done.stdout[-3000:])
                    raise SystemExit(f"the -n 2 run ({how}) failed")
    print()
    print("pytest -n 2, all three stores, cold containers: whole run")
    for how, values in times.items():
        count = 6 if how == "one per worker" else 3
        print(f"  {how:<16}{statistics.median(values):>8.0f} ms  ({count} containers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = docker.engine_answers()
    if reason is not None:
        raise SystemExit(f"needs a Docker engine: {reason}")
    print(f"load average {os.getloadavg()[0]:.2f}; images: {', '.join(DEFAULT_IMAGES.values())}")
    with tempfile.TemporaryDirectory() as state:
        os.chdir(state)  # the bench's own project: its containers are told from anyone else's
        starts(state, args.runs)
    xdist(args.runs)


if __name__ == "__main__":
    main()
