"""Per-test restore cost of the Elasticsearch adapter against the anchors.

    python bench/es_restore.py [--quick] [--sizes 1000,20000,100000]

Starts noida-db on a free loopback port (the plugin's embedded provider; a
server given with --url is used instead), seeds a ``products`` index of N
documents, and for each kind of test times what the plugin does around it:

* untouched - a test that only searches
* one       - a test that updates 1 document
* light     - a test that updates 10 documents
* hundred   - a test that updates 100 documents in one bulk request
* heavy     - a test that updates 1,000 documents and deletes a tenth by query

Columns (medians, ms per test; the test's own writes are not timed):

* clone     - ElasticsearchAdapter, the test writing through a plain client:
              checkpoint at test start + rollback at test end (a touched index
              is cloned back from its snapshot)
* rt        - round trips of that checkpoint and rollback
* noted     - the same, the test writing through a client made with
              ``node_class=adapter.node_class()``: the adapter notes the
              answers, and puts back only the documents written when the notes
              account for every sequence number (the heavy test's
              delete_by_query is not: a clone)
* rt        - round trips of that checkpoint and rollback
* snapshot  - anchor: full snapshot restore (delete the index, clone a copy kept
              aside), whatever the test did
* reseed    - anchor: delete, recreate and bulk-index the N documents again

Ratios: reseed/clone, reseed/noted and snapshot/noted. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elasticsearch import Elasticsearch, helpers  # noqa: E402

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter  # noqa: E402
from pytest_rollback.options import StoreSettings  # noqa: E402
from pytest_rollback.services import embedded  # noqa: E402

INDEX = "products"
MAPPINGS = {"properties": {"name": {"type": "text"}, "tag": {"type": "keyword"}, "price": {"type": "integer"}}}


def docs(n: int) -> list[dict[str, Any]]:
    return [
        {"_index": INDEX, "_id": str(i),
         "_source": {"name": f"product number {i} in the catalogue", "tag": f"t{i % 10}", "price": i}}
        for i in range(n)
    ]


def reseed(es: Elasticsearch, n: int) -> None:
    es.options(ignore_status=404).indices.delete(index=INDEX)
    es.indices.create(index=INDEX, mappings=MAPPINGS, settings={"number_of_replicas": 0})
    helpers.bulk(es, docs(n), refresh=True, chunk_size=5000)


def one(es: Elasticsearch) -> None:
    es.update(index=INDEX, id="3", doc={"price": -1})


def hundred(es: Elasticsearch) -> None:
    updates = ({"_op_type": "update", "_index": INDEX, "_id": str(i * 3), "doc": {"price": -1}} for i in range(100))
    helpers.bulk(es, updates)


def light(es: Elasticsearch) -> None:
    for i in range(10):
        es.update(index=INDEX, id=str(i * 7), doc={"price": -1})


def heavy(es: Elasticsearch) -> None:
    updates = ({"_op_type": "update", "_index": INDEX, "_id": str(i), "doc": {"price": -1}} for i in range(1000))
    helpers.bulk(es, updates)
    es.delete_by_query(index=INDEX, query={"term": {"tag": "t3"}}, conflicts="proceed")


def untouched(es: Elasticsearch) -> None:
    es.search(index=INDEX, query={"match": {"name": "number"}}, size=5)


TESTS: dict[str, Callable[[Elasticsearch], None]] = {
    "untouched": untouched, "one": one, "light": light, "hundred": hundred, "heavy": heavy,
}


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_adapter(
    writer: Elasticsearch, adapter: ElasticsearchAdapter, test: Callable[[Elasticsearch], None], reps: int
) -> tuple[float, float]:
    """Median ms of checkpoint + rollback around ``test`` (writing through ``writer``), and median round trips."""
    samples, trips = [], []
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
    return median_ms(samples), statistics.median(trips)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sizes", default="1000,20000", help="index sizes (comma-separated)")
    parser.add_argument("--url", help="an Elasticsearch to use instead of starting noida-db (its indices are deleted)")
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    service = None
    if args.url:
        url, what = args.url, args.url
    else:
        settings = StoreSettings("elasticsearch", "embedded", None, "", False, None, None)  # type: ignore[arg-type]
        service = embedded.elasticsearch(settings)
        url, what = service.url, service.version
    es = Elasticsearch(url, request_timeout=120)
    try:
        ping = []
        for _ in range(200):
            t0 = time.perf_counter()
            es.perform_request("GET", "/", headers={"accept": "application/json"})
            ping.append(time.perf_counter() - t0)
        print(f"server: {what}; one round trip (GET /): {median_ms(ping):.2f} ms; load {os.getloadavg()[0]:.2f}")
        print(f"{'N':>7} {'test':>9} {'clone':>9} {'rt':>4} {'noted':>9} {'rt':>4} {'snapshot':>9} {'reseed':>9}"
              f" {'reseed/clone':>13} {'reseed/noted':>13} {'snapshot/noted':>15}")
        for n in (int(s) for s in args.sizes.split(",")):
            reseed(es, n)
            adapter = ElasticsearchAdapter(url)
            noted = Elasticsearch(url, request_timeout=120, node_class=adapter.node_class())
            session = adapter.checkpoint("session")
            for name, test in TESTS.items():
                clone_ms, clone_rt = time_adapter(es, adapter, test, reps)
                adapter.rollback(session)
                noted_ms, noted_rt = time_adapter(noted, adapter, test, reps)
                adapter.rollback(session)
                snap_ms = time_snapshot(es, test, reps)
                adapter.rollback(session)
                reseed_ms = time_reseed(es, test, n, max(3, reps // 3))
                adapter.rollback(session)
                print(f"{n:>7} {name:>9} {clone_ms:9.1f} {clone_rt:4.0f} {noted_ms:9.1f} {noted_rt:4.0f} {snap_ms:9.1f}"
                      f" {reseed_ms:9.1f} {reseed_ms / clone_ms:12.1f}x {reseed_ms / noted_ms:12.1f}x"
                      f" {snap_ms / noted_ms:14.1f}x", flush=True)
            noted.close()
            adapter.close()
            es.indices.delete(index=INDEX)
    finally:
        es.close()
        if service is not None:
            service.stop()


if __name__ == "__main__":
    main()
