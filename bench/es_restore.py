"""Per-test restore cost of the Elasticsearch adapter against the anchors.

    python bench/es_restore.py [--quick] [--sizes 1000,20000,100000]
    python bench/es_restore.py --grid                  # N = 1k, 10k, 100k: about 8 min (see below)
    python bench/es_restore.py --provider docker --quick --sizes 1000,10000
    python bench/es_restore.py --url http://127.0.0.1:9200

Starts noida-db on a free loopback port (``--provider embedded``, the default: the
plugin's embedded provider), or the default Elasticsearch image through the plugin's
Docker provider (``--provider docker``: needs a Docker engine that has the image; the
container is removed at the end); a server given with ``--url`` is used instead of
either. It seeds a ``products`` index of N documents (one shard), and for each kind of
test times what the plugin does around it:

* k = 0        a test that only searches
* k = 1        a test that updates 1 document
* k = 10       a test that updates 10 documents, one request each
* k = 100      a test that updates 100 documents in one bulk request
* k = 1000     a test that updates 1,000 documents in one bulk request
* k = 1000+dbq a test that updates 1,000 documents and deletes a tenth of the index
               by query (N/10 documents; a write no answer names: always a clone)

Columns (medians, ms per test):

* test      - anchor: the test's own requests, through a plain client, with no
              plugin work in them (timed inside the clone pass)
* clone     - ElasticsearchAdapter, the test writing through a plain client:
              checkpoint at test start + rollback at test end (a touched index
              is cloned back from its snapshot); the test's own writes not timed
* rt        - round trips of that checkpoint and rollback
* noted     - the same, the test writing through a client made with
              ``node_class=adapter.node_class()`` (as the plugin's ``es_client``):
              the adapter notes the answers, and puts back only the documents
              written when the notes account for every sequence number and they
              are few enough against N (else a clone: k = 1000+dbq always)
* rt        - round trips of that checkpoint and rollback
* snapshot  - anchor: full snapshot restore (delete the index, clone a copy kept
              aside), whatever the test did
* reseed    - anchor: delete, recreate and bulk-index the N documents again

Ratios: noted/test (the plugin's time per test against the test's own), reseed/clone,
reseed/noted and snapshot/noted. Under the table, per N: what noting the answers added to the
test's own requests (the test timed through the noting client, minus ``test``), and
what the index's ``_stats`` and one ``_refresh`` cost after a single write (a rollback
reads the first when anything moved; a put-back is written with ``refresh=true``):
noida-db reads the whole index for each, so there a touched index's restore grows
with N whichever way it is put back.

``--grid`` runs N = 1,000, 10,000 and 100,000 with fewer repetitions as N grows (the
counts are printed under the table): per test kind, the clone and noted passes time
15, 11 and 7 tests, the snapshot anchor 15, 7 and 3, the reseed anchor 5, 3 and 1
(at 100k one reseed costs ~8 s and one snapshot restore ~1-2 s on noida-db, and the
k = 1000+dbq test itself ~7 s). It took 7 min 49 s on 2 CPUs that other benches were
using too (load 2-4); quiet ones should take less (not measured).

Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elasticsearch import Elasticsearch, helpers  # noqa: E402

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter  # noqa: E402
from pytest_rollback.api import Service, StoreUnavailable  # noqa: E402
from pytest_rollback.options import DEFAULT_IMAGES, StoreSettings  # noqa: E402
from pytest_rollback.services import embedded  # noqa: E402

INDEX = "products"
MAPPINGS = {"properties": {"name": {"type": "text"}, "tag": {"type": "keyword"}, "price": {"type": "integer"}}}
GRID_SIZES = "1000,10000,100000"


@dataclasses.dataclass(frozen=True)
class Reps:
    """Tests timed per measurement: each adapter pass (clone, noted), the snapshot anchor, the reseed anchor."""

    adapter: int
    snapshot: int
    reseed: int


def plan(n: int, quick: bool, grid: bool) -> Reps:
    if grid:  # the whole grid in about 6-8 min on 2 CPUs; at 100k a clone or snapshot costs ~1 s, a reseed ~8 s
        if n <= 1_000:
            return Reps(15, 15, 5)
        if n <= 10_000:
            return Reps(11, 7, 3)
        return Reps(7, 3, 1)
    reps = 5 if quick else 15
    return Reps(reps, reps, max(3, reps // 3))


def docs(n: int) -> list[dict[str, Any]]:
    return [
        {"_index": INDEX, "_id": str(i),
         "_source": {"name": f"product number {i} in the catalogue", "tag": f"t{i % 10}", "price": i}}
        for i in range(n)
    ]


def reseed(es: Elasticsearch, n: int) -> None:
    es.options(ignore_status=404).indices.delete(index=INDEX)
    es.indices.create(index=INDEX, mappings=MAPPINGS, settings={"number_of_replicas": 0, "number_of_shards": 1})
    helpers.bulk(es, docs(n), refresh=True, chunk_size=5000)


def one(es: Elasticsearch) -> None:
    es.update(index=INDEX, id="3", doc={"price": -1})


def light(es: Elasticsearch) -> None:
    for i in range(10):
        es.update(index=INDEX, id=str(i * 7), doc={"price": -1})


def hundred(es: Elasticsearch) -> None:
    updates = ({"_op_type": "update", "_index": INDEX, "_id": str(i * 3), "doc": {"price": -1}} for i in range(100))
    helpers.bulk(es, updates)


def thousand(es: Elasticsearch) -> None:
    updates = ({"_op_type": "update", "_index": INDEX, "_id": str(i), "doc": {"price": -1}} for i in range(1000))
    helpers.bulk(es, updates)


def heavy(es: Elasticsearch) -> None:
    thousand(es)
    es.delete_by_query(index=INDEX, query={"term": {"tag": "t3"}}, conflicts="proceed")


def untouched(es: Elasticsearch) -> None:
    es.search(index=INDEX, query={"match": {"name": "number"}}, size=5)


#: by the k the table shows: documents the test writes ("1000+dbq": heavy, 1,000 updated and N/10 deleted by query)
TESTS: dict[str, Callable[[Elasticsearch], None]] = {
    "0": untouched, "1": one, "10": light, "100": hundred, "1000": thousand, "1000+dbq": heavy,
}


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@dataclasses.dataclass
class Timed:
    """Medians of one adapter pass: checkpoint + rollback (ms), their round trips, the test's own requests (ms)."""

    plugin_ms: float
    round_trips: float
    test_ms: float


def time_adapter(
    writer: Elasticsearch, adapter: ElasticsearchAdapter, test: Callable[[Elasticsearch], None], reps: int
) -> Timed:
    """Checkpoint + rollback around ``test`` (writing through ``writer``), and the test itself, timed apart."""
    samples, trips, tests = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        cp = adapter.checkpoint("test")
        t1 = time.perf_counter()
        before = adapter.last_round_trips
        test(writer)
        t2 = time.perf_counter()
        adapter.rollback(cp)
        trips.append(before + adapter.last_round_trips)
        adapter.release(cp)
        samples.append((t1 - t0) + (time.perf_counter() - t2))
        tests.append(t2 - t1)
    return Timed(median_ms(samples), statistics.median(trips), median_ms(tests))


def keep_aside(es: Elasticsearch, keep: str) -> None:
    """A hidden clone of the index, as it is now."""
    es.options(ignore_status=404).indices.delete(index=keep)
    es.indices.add_block(index=INDEX, block="write")
    es.indices.clone(index=INDEX, target=keep, settings={"index.hidden": True})
    es.indices.put_settings(index=INDEX, settings={"index.blocks.write": None})


def time_snapshot(es: Elasticsearch, test: Callable[[Elasticsearch], None], reps: int) -> float:
    keep = ".bench-full-snapshot"
    keep_aside(es, keep)
    samples = []
    for _ in range(reps):
        test(es)
        t0 = time.perf_counter()
        es.indices.delete(index=INDEX)
        es.indices.clone(index=keep, target=INDEX, settings={"index.hidden": None, "index.blocks.write": None})
        samples.append(time.perf_counter() - t0)
    es.indices.delete(index=keep)
    return median_ms(samples)


def time_reseed(es: Elasticsearch, test: Callable[[Elasticsearch], None], n: int, reps: int) -> float:
    samples = []
    for _ in range(reps):
        test(es)
        t0 = time.perf_counter()
        reseed(es, n)
        samples.append(time.perf_counter() - t0)
    return median_ms(samples)


def time_after_write(es: Elasticsearch, reps: int) -> tuple[float, float]:
    """After a single update (not timed): the index's ``_stats`` (what the adapter reads first when something moved),
    then one ``_refresh`` of the index (a put-back is written with ``refresh=true``); medians, ms."""
    stats, refresh = [], []
    for i in range(reps):
        es.update(index=INDEX, id=str(i), doc={"price": -2})
        t0 = time.perf_counter()
        es.indices.stats(index=INDEX)
        t1 = time.perf_counter()
        es.indices.refresh(index=INDEX)
        stats.append(t1 - t0)
        refresh.append(time.perf_counter() - t1)
    return median_ms(stats), median_ms(refresh)


def docker_service(state_dir: str) -> Service:
    """Elasticsearch through the plugin's Docker provider (the image the plugin would pick); exits with one line
    when the engine or the image is missing or the container does not start."""
    from pytest_rollback.services import docker

    reason = docker.engine_answers()
    if reason is not None:
        raise SystemExit(f"es_restore.py --provider docker: {reason}")
    settings = StoreSettings("elasticsearch", "docker", None, DEFAULT_IMAGES["elasticsearch"], False, None,
                             None, extra={"reuse": False}, state_dir=state_dir)  # type: ignore[arg-type]
    image = docker.elasticsearch_image(settings)  # 9.0.0 in place of the default with a 9.x client
    if not docker.has_image(image):
        raise SystemExit(f"es_restore.py --provider docker: image {image} is not on the Docker engine "
                         "(pull it, or build or load a stand-in under that name)")
    try:
        return docker.elasticsearch(settings)
    except StoreUnavailable as exc:
        raise SystemExit(f"es_restore.py --provider docker: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sizes", default="1000,20000", help="index sizes (comma-separated)")
    parser.add_argument("--grid", action="store_true",
                        help=f"sizes {GRID_SIZES}, fewer repetitions as N grows (about 6-8 min on 2 CPUs)")
    parser.add_argument("--provider", choices=("embedded", "docker"), default="embedded",
                        help="embedded: noida-db (default); docker: the plugin's Docker provider and default image")
    parser.add_argument("--url", help="an Elasticsearch to use instead of starting one (its indices are deleted)")
    args = parser.parse_args()
    sizes = [int(s) for s in (GRID_SIZES if args.grid else args.sizes).split(",")]
    started = time.perf_counter()
    service = None
    state = tempfile.TemporaryDirectory(prefix="es-restore-")
    try:
        if args.url:
            url, what = args.url, args.url
        elif args.provider == "docker":
            service = docker_service(state.name)
            url = service.url
            what = (f"{service.version} via docker, image {service.extra.get('image')}, "
                    f"container {service.extra.get('container_name')}, started in {service.startup_ms:.0f} ms")
        else:
            settings = StoreSettings("elasticsearch", "embedded", None, "", False, None, None)  # type: ignore[arg-type]
            service = embedded.elasticsearch(settings)
            url, what = service.url, f"{service.version} via embedded, started in {service.startup_ms:.0f} ms"
        run(url, what, sizes, args.quick, args.grid)
    finally:
        if service is not None:
            service.stop()  # noida-db: its process, by PID; docker: its container removed
        state.cleanup()
    print(f"done in {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.2f}")


def run(url: str, what: str, sizes: list[int], quick: bool, grid: bool) -> None:
    es = Elasticsearch(url, request_timeout=300)
    counts: dict[int, Reps] = {}
    notes: list[str] = []
    try:
        ping = []
        for _ in range(200):
            t0 = time.perf_counter()
            es.perform_request("GET", "/", headers={"accept": "application/json"})
            ping.append(time.perf_counter() - t0)
        print(f"server: {what}; one round trip (GET /): {median_ms(ping):.2f} ms; load {os.getloadavg()[0]:.2f}")
        print(f"{'N':>7} {'k':>9} {'test':>8} {'clone':>8} {'rt':>3} {'noted':>8} {'rt':>3} {'snapshot':>8}"
              f" {'reseed':>8} {'noted/test':>11} {'reseed/clone':>13} {'reseed/noted':>13} {'snapshot/noted':>15}",
              flush=True)
        for n in sizes:
            begin = time.perf_counter()
            reps = counts[n] = plan(n, quick, grid)
            t0 = time.perf_counter()
            reseed(es, n)
            seeded_s = time.perf_counter() - t0
            adapter = ElasticsearchAdapter(url)
            noted = Elasticsearch(url, request_timeout=300, node_class=adapter.node_class())
            session = adapter.checkpoint("session")
            stats_ms, refresh_ms = time_after_write(es, 3)
            adapter.rollback(session)
            noting: list[str] = []
            for name, test in TESTS.items():
                clone = time_adapter(es, adapter, test, reps.adapter)
                adapter.rollback(session)
                note = time_adapter(noted, adapter, test, reps.adapter)
                adapter.rollback(session)
                snap_ms = time_snapshot(es, test, reps.snapshot)
                adapter.rollback(session)
                reseed_ms = time_reseed(es, test, n, reps.reseed)
                adapter.rollback(session)
                noting.append(f"k={name} {note.test_ms - clone.test_ms:+.1f}")
                print(f"{n:>7} {name:>9} {clone.test_ms:8.1f} {clone.plugin_ms:8.1f} {clone.round_trips:3.0f}"
                      f" {note.plugin_ms:8.1f} {note.round_trips:3.0f} {snap_ms:8.1f} {reseed_ms:8.1f}"
                      f" {note.plugin_ms / clone.test_ms:10.2f}x {reseed_ms / clone.plugin_ms:12.1f}x"
                      f" {reseed_ms / note.plugin_ms:12.1f}x {snap_ms / note.plugin_ms:14.1f}x", flush=True)
            noted.close()
            adapter.close()
            es.indices.delete(index=INDEX)
            notes.append(f"  N={n:>7,}: seeded in {seeded_s:.1f} s; after one write, _stats {stats_ms:.1f} ms"
                         f" and _refresh {refresh_ms:.1f} ms;"
                         f" noting added to the test (ms): {', '.join(noting)};"
                         f" {time.perf_counter() - begin:.0f} s for this N")
    finally:
        es.close()
    print()
    print("\n".join(notes))
    print("tests timed per measurement (clone and noted passes / snapshot / reseed): "
          + "; ".join(f"N={n:,}: {r.adapter} / {r.snapshot} / {r.reseed}" for n, r in counts.items()))


if __name__ == "__main__":
    main()
