"""What the Elasticsearch adapter sends around a test, counted at the server (noida-db's per-client
request counts, ``_nodes/stats/http``), not timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from conftest import clear_elasticsearch
from elasticsearch import Elasticsearch, helpers

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter
from pytest_rollback.api import Service


@pytest.fixture
def es(noida: Service) -> Iterator[tuple[Elasticsearch, ElasticsearchAdapter]]:
    """A cleared noida-db, its client and an adapter."""
    client = Elasticsearch(noida.url, request_timeout=60)
    clear_elasticsearch(client)
    adapter = ElasticsearchAdapter(noida.url)
    yield client, adapter
    adapter.close()
    clear_elasticsearch(client)
    client.close()


def seed(client: Elasticsearch, index: str, n: int) -> None:
    client.indices.create(index=index, settings={"number_of_replicas": 0})
    docs = ({"_index": index, "_id": str(i), "_source": {"name": f"p{i}", "n": i}} for i in range(n))
    helpers.bulk(client, docs, refresh=True, chunk_size=2000)


class Requests:
    """The requests the server has answered for the adapter's client (its user agent), each reading on
    a connection of its own (one read per client: the adapter's probe allows it)."""

    def __init__(self, url: str, adapter: ElasticsearchAdapter) -> None:
        self.url, self.agent = url, adapter.http.headers["user-agent"]

    def __call__(self) -> int:
        pool = urllib3.PoolManager(maxsize=1)
        got = json.loads(pool.request("GET", self.url + "/_nodes/stats/http").data)
        pool.clear()
        clients = [c for node in got["nodes"].values() for c in node["http"]["clients"]]
        return sum(c["request_count"] for c in clients if c["agent"] == self.agent)


def state(adapter: ElasticsearchAdapter) -> dict[Any, Any]:
    return dict(adapter.observe().state)


@pytest.mark.parametrize(("indices", "docs"), [(1, 100), (3, 4000)])
def test_an_untouched_test_costs_two_requests_whatever_the_indices(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noida: Service, indices: int, docs: int
) -> None:
    """Checkpoint and rollback of a test that only searched: one reading of the request counts each,
    at any number and size of indices (the index statistics, which noida-db answers by reading every
    document, are not asked for)."""
    client, adapter = es
    for i in range(indices):
        seed(client, f"idx{i}", docs)
    adapter.checkpoint("session")
    count = Requests(noida.url, adapter)
    for test in range(3):
        before = count()
        cp = adapter.checkpoint(f"test {test}")
        client.search(index="idx0", query={"match": {"name": "p1"}})
        report = adapter.rollback(cp)
        adapter.release(cp)
        assert report.mode == "none"
        assert count() - before == 2, f"test {test}"
