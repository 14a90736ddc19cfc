"""Per-test restore cost of the Elasticsearch adapter against the anchors.

    python bench/es_restore.py [--quick] [--sizes 1000,20000]

Starts noida-db on a free loopback port (the plugin's embedded provider; a
server given with --url is used instead), seeds a ``products`` index of N
documents, and for each kind of test times what the plugin does around it:

* untouched - a test that only searches
* light     - a test that updates 10 documents
* heavy     - a test that updates 1,000 documents and deletes a tenth by query

Columns (medians, ms per test; the test's own writes are not timed):

* clone     - ElasticsearchAdapter: checkpoint at test start + rollback at test end
* rt        - round trips of that rollback
* doc-level - the alternative the adapter does not use: refresh, find the
              documents whose _seq_no moved, and write their old versions back
              from the snapshot (light test only: it cannot see deletions)
* snapshot  - anchor: full snapshot restore (delete the index, clone a copy kept
              aside), whatever the test did
* reseed    - anchor: delete, recreate and bulk-index the N documents again

Ratios: reseed/clone and snapshot/clone. Prints only; asserts nothing. A
doc-level "n/a" means the server did not find the moved documents by _seq_no
(noida-db 0.2.3 does not query that field), so it cannot be restored that way.
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


def light(es: Elasticsearch) -> None:
    for i in range(10):
        es.update(index=INDEX, id=str(i * 7), doc={"price": -1})


def heavy(es: Elasticsearch) -> None:
    updates = ({"_op_type": "update", "_index": INDEX, "_id": str(i), "doc": {"price": -1}} for i in range(1000))
    helpers.bulk(es, updates)
    es.delete_by_query(index=INDEX, query={"term": {"tag": "t3"}}, conflicts="proceed")


def untouched(es: Elasticsearch) -> None:
    es.search(index=INDEX, query={"match": {"name": "number"}}, size=5)


TESTS: dict[str, Callable[[Elasticsearch], None]] = {"untouched": untouched, "light": light, "heavy": heavy}


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_clone(es: Elasticsearch, adapter: ElasticsearchAdapter, test: Callable[[Elasticsearch], None], reps: int):
    samples, trips = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        cp = adapter.checkpoint("test")
        t1 = time.perf_counter()
        test(es)
        t2 = time.perf_counter()
        adapter.rollback(cp)
        trips.append(adapter.last_round_trips)
        adapter.release(cp)
        samples.append((t1 - t0) + (time.perf_counter() - t2))
    return median_ms(samples), statistics.median(trips)


def keep_aside(es: Elasticsearch, keep: str) -> None:
    """A hidden clone of the index, as it is now."""
    es.options(ignore_status=404).indices.delete(index=keep)
    es.indices.add_block(index=INDEX, block="write")
    es.indices.clone(index=INDEX, target=keep, settings={"index.hidden": True})
    es.indices.put_settings(index=INDEX, settings={"index.blocks.write": None})


def max_seq_no(es: Elasticsearch) -> int:
    shards = es.indices.stats(index=INDEX, level="shards")["indices"][INDEX]["shards"]
    return max(copy["seq_no"]["max_seq_no"] for copies in shards.values() for copy in copies)


def time_doc_level(es: Elasticsearch, reps: int) -> float | None:
    """Undo ``light`` document by document: the seq_no search needs a refresh first.

    None when the server does not find the moved documents by ``_seq_no``.
    """
    keep = ".bench-doc-level"
    keep_aside(es, keep)
    samples = []
    for _ in range(reps):
        mark = max_seq_no(es)
        light(es)
        t0 = time.perf_counter()
        es.indices.refresh(index=INDEX)
        moved = es.search(index=INDEX, query={"range": {"_seq_no": {"gt": mark}}}, size=10000, source=False)
        ids = [hit["_id"] for hit in moved["hits"]["hits"]]
        if len(ids) != 10:
            es.indices.delete(index=keep)
            return None
        if ids:
            old = es.mget(index=keep, ids=ids)["docs"]
            actions = [
                {"_index": INDEX, "_id": d["_id"], "_source": d["_source"]} if d.get("found")
                else {"_op_type": "delete", "_index": INDEX, "_id": d["_id"]}
                for d in old
            ]
            helpers.bulk(es, actions)
        samples.append(time.perf_counter() - t0)
    es.indices.delete(index=keep)
    return median_ms(samples)


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
        print(f"{'N':>7} {'test':>9} {'clone':>9} {'rt':>4} {'doc-level':>10} {'snapshot':>9} {'reseed':>9}"
              f" {'reseed/clone':>13} {'snapshot/clone':>15}")
        for n in (int(s) for s in args.sizes.split(",")):
            reseed(es, n)
            adapter = ElasticsearchAdapter(url)
            session = adapter.checkpoint("session")
            for name, test in TESTS.items():
                clone_ms, trips = time_clone(es, adapter, test, reps)
                adapter.rollback(session)
                doc_ms = time_doc_level(es, reps) if name == "light" else None
                adapter.rollback(session)
                doc = f"{doc_ms:10.1f}" if doc_ms is not None else f"{'-' if name != 'light' else 'n/a':>10}"
                snap_ms = time_snapshot(es, test, reps)
                adapter.rollback(session)
                reseed_ms = time_reseed(es, test, n, max(3, reps // 3))
                adapter.rollback(session)
                print(f"{n:>7} {name:>9} {clone_ms:9.1f} {trips:4.0f} {doc} {snap_ms:9.1f} {reseed_ms:9.1f}"
                      f" {reseed_ms / clone_ms:12.1f}x {snap_ms / clone_ms:14.1f}x", flush=True)
            adapter.close()
            es.indices.delete(index=INDEX)
    finally:
        es.close()
        if service is not None:
            service.stop()


if __name__ == "__main__":
    main()
