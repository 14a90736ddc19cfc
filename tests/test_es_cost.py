"""What the Elasticsearch adapter sends around a test, counted at the server (noida-db's per-client
request counts, ``_nodes/stats/http``), not timed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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


def test_reads_of_a_noting_client_leave_the_look_at_one_request_however_many(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noida: Service
) -> None:
    """A test that searched, counted and read many times through a client made with the adapter's node
    class costs the same two requests as one that read once; a second read of a client that notes
    nothing, or a write, sends the adapter to the cluster state and the statistics."""
    client, adapter = es
    seed(client, "idx", 300)
    noting = Elasticsearch(noida.url, request_timeout=60, node_class=adapter.node_class())
    adapter.checkpoint("session")
    count = Requests(noida.url, adapter)

    def one_test(body: Callable[[], object]) -> tuple[str, int]:
        before = count()
        cp = adapter.checkpoint("test")
        body()
        report = adapter.rollback(cp)
        adapter.release(cp)
        return report.mode, count() - before

    def reads() -> None:
        for i in range(5):
            noting.search(index="idx", query={"match": {"name": f"p{i}"}})
        noting.count(index="idx")
        noting.get(index="idx", id="3")
        noting.mget(index="idx", ids=["1", "2"])

    assert one_test(reads) == ("none", 2)
    assert one_test(reads) == ("none", 2), "and again: the totals are counted from each reading"
    mode, sent = one_test(lambda: (client.search(index="idx"), client.search(index="idx")))
    assert (mode, sent) == ("none", 4), "two reads of a client that notes nothing: cluster state and statistics"
    mode, sent = one_test(lambda: (reads(), noting.index(index="idx", id="3", document={"n": -1})))
    assert mode == "incremental" and sent > 2
    assert noting.get(index="idx", id="3")["_source"] == {"name": "p3", "n": 3}
    noting.close()


class Sent:
    """The adapter's requests (method, path, body), recorded by wrapping its Http."""

    def __init__(self, adapter: ElasticsearchAdapter) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.http = adapter.http
        adapter.http = self  # type: ignore[assignment]

    def __call__(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Any:
        self.calls.append((method, path, body))
        return self.http(method, path, body, ok, **params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)

    def take(self) -> list[tuple[str, str, Any]]:
        calls, self.calls = self.calls, []
        return calls

    @staticmethod
    def clones(calls: list[tuple[str, str, Any]]) -> list[str]:
        return [path for _method, path, _body in calls if "/_clone/" in path]

    @staticmethod
    def statistics(calls: list[tuple[str, str, Any]]) -> int:
        """Readings of the index statistics among ``calls`` (noida-db reads every document for one)."""
        return sum(1 for _m, path, _b in calls if path.endswith("/_stats"))

    @staticmethod
    def documents_written(calls: list[tuple[str, str, Any]]) -> int:
        """Actions of the bulk requests among ``calls``."""
        lines = [json.loads(line) for _m, path, body in calls if path == "/_bulk" for line in body.splitlines()]
        return sum(1 for line in lines if set(line) & {"index", "delete"} and len(line) == 1)


@pytest.fixture
def noted(es: tuple[Elasticsearch, ElasticsearchAdapter], noida: Service) -> Iterator[Elasticsearch]:
    """A client of the same server whose answers the adapter notes."""
    _client, adapter = es
    client = Elasticsearch(noida.url, request_timeout=60, node_class=adapter.node_class())
    yield client
    client.close()


def uuid_of(client: Elasticsearch, index: str) -> str:
    return str(client.indices.get_settings(index=index)[index]["settings"]["index"]["uuid"])


@pytest.mark.parametrize("docs", [300, 3000])
def test_k_noted_writes_are_put_back_as_k_documents(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noted: Elasticsearch, docs: int
) -> None:
    """Writes whose answers the adapter noted are rolled back document by document: as many documents
    written back as the test wrote, no clone, whatever the index's size; the next checkpoint knows the
    index equals its snapshot."""
    client, adapter = es
    seed(client, "products", docs)
    adapter.checkpoint("session")
    before = state(adapter)
    uuid = uuid_of(client, "products")
    sent = Sent(adapter)
    for test in range(2):
        cp = adapter.checkpoint(f"test {test}")
        for i in range(4):
            noted.update(index="products", id=str(i * 7), doc={"n": -1})
        noted.index(index="products", id="new", document={"name": "new", "n": 0})
        noted.index(index="products", document={"name": "auto id", "n": 0})
        noted.delete(index="products", id="5")
        helpers.bulk(noted, [
            {"_op_type": "delete", "_index": "products", "_id": "6"},
            {"_index": "products", "_id": "7", "_source": {"name": "x", "n": 7}},
            {"_op_type": "update", "_index": "products", "_id": "new", "doc": {"n": 1}},
        ], refresh=test == 1)
        sent.take()
        report = adapter.rollback(cp)
        calls = sent.take()
        assert Sent.clones(calls) == []
        # 0, 7, 14, 21 updated (7 indexed again); "new" indexed and updated; the auto id; 5, 6 deleted
        assert Sent.documents_written(calls) == 8
        # the server answered others only what the adapter noted: no reading of the statistics
        assert Sent.statistics(calls) == 0
        assert report.mode == "incremental"
        assert state(adapter) == before
        assert uuid_of(client, "products") == uuid
        adapter.release(cp)
        sent.take()
    adapter.checkpoint("after")
    assert Sent.clones(sent.take()) == []  # the index is known to equal its snapshot


@pytest.mark.parametrize("what", ["a client that notes nothing", "delete_by_query", "a new field"])
def test_writes_the_notes_do_not_account_for_are_cloned_back(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noted: Elasticsearch, what: str
) -> None:
    """A sequence number no noted answer names (another client's write, a delete_by_query), or a mapping
    the writes extended: the index is cloned back from its snapshot, as before."""
    client, adapter = es
    seed(client, "products", 300)
    adapter.checkpoint("session")
    before = state(adapter)
    sent = Sent(adapter)
    cp = adapter.checkpoint("test")
    noted.update(index="products", id="1", doc={"n": -1})
    if what == "a client that notes nothing":
        client.update(index="products", id="2", doc={"n": -1})
    elif what == "delete_by_query":
        noted.delete_by_query(index="products", query={"range": {"n": {"lt": 50}}}, refresh=True, conflicts="proceed")
    else:
        noted.index(index="products", id="3", document={"name": "x", "colour": "blue"})
    noted.update(index="products", id="204", doc={"n": -1})
    sent.take()
    adapter.rollback(cp)
    calls = sent.take()
    assert len(Sent.clones(calls)) == 1
    assert Sent.documents_written(calls) == 0
    # a write nobody noted: the statistics are read; a mapping extended by noted writes is seen without them
    assert Sent.statistics(calls) == (0 if what == "a new field" else 1)
    assert state(adapter) == before


def document_write(client: Elasticsearch, kind: str, index: str, doc_id: str, round_: int) -> bool:
    """One write of ``kind`` (index, update, delete, create, bulk) through ``client``, refusals (a missing
    document, a version conflict) let through; False for another kind."""
    quiet = client.options(ignore_status=(404, 409))
    if kind == "index":
        quiet.index(index=index, id=doc_id, document={"name": f"w{round_}", "n": round_})
    elif kind == "update":
        quiet.update(index=index, id=doc_id, doc={"n": -round_})
    elif kind == "delete":
        quiet.delete(index=index, id=doc_id)
    elif kind == "create":
        quiet.create(index=index, id=doc_id, document={"name": "created", "n": 5})
    elif kind == "bulk":
        helpers.bulk(client, [{"_op_type": "delete", "_index": index, "_id": doc_id},
                              {"_index": index, "_source": {"name": "auto", "n": 1}}], raise_on_error=False)
    else:
        return False
    return True


def test_noted_and_other_writes_at_random_are_rolled_back_exactly(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noted: Elasticsearch
) -> None:
    """Random writes through the noting client, mixed with writes it does not see, refreshes and
    definitions changes, over two indices and nested checkpoints: every rollback gives back the exact
    state of its checkpoint."""
    import random

    client, adapter = es
    rng = random.Random(15)
    seed(client, "a", 120)
    seed(client, "b", 40)
    adapter.checkpoint("session")
    modes: set[str] = set()
    sent = Sent(adapter)
    for round_ in range(25):
        before = state(adapter)
        cp = adapter.checkpoint(f"test {round_}")
        inner = None
        for _ in range(rng.randint(1, 6)):
            index, doc_id = rng.choice("ab"), str(rng.randrange(150))
            kind = rng.choices(["index", "update", "delete", "bulk", "plain", "dbq", "refresh", "field", "inner"],
                               [5, 5, 4, 3, 1, 1, 1, 1, 1])[0]
            if document_write(noted, kind, index, doc_id, round_):
                continue
            if kind == "plain":
                client.index(index=index, id=doc_id, document={"name": "plain", "n": 2})
            elif kind == "dbq":
                noted.delete_by_query(index=index, query={"term": {"n": rng.randrange(40)}}, refresh=True,
                                      conflicts="proceed")
            elif kind == "refresh":
                noted.indices.refresh(index=index)
            elif kind == "field":
                noted.index(index=index, id=doc_id, document={"name": "f", f"f{round_}": "x"})
            elif inner is None:
                inner = adapter.checkpoint("inner"), state(adapter)
                noted.index(index=index, id=doc_id, document={"name": "in inner", "n": 3})
                adapter.rollback(inner[0])
                assert state(adapter) == inner[1], f"round {round_}: inner"
        sent.take()
        adapter.rollback(cp)
        calls = sent.take()
        modes.add("clone" if Sent.clones(calls) else "documents" if Sent.documents_written(calls) else "none")
        assert state(adapter) == before, f"round {round_}"
        adapter.release(cp)
    assert {"clone", "documents"} <= modes


@pytest.mark.parametrize("what", ["a new index", "two shards", "a write in a nested level"])
def test_noted_writes_the_fingerprints_cannot_follow_are_read_from_the_statistics(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noted: Elasticsearch, what: str
) -> None:
    """Only noted writes, but to an index the last look did not know (the cluster state moved), or to an
    index of several shards (its sequence numbers are per shard): the statistics are read, and the
    rollback is exact. Noted writes on both sides of a nested checkpoint are followed through it."""
    client, adapter = es
    seed(client, "products", 200)
    if what == "two shards":
        client.indices.create(index="sharded", settings={"number_of_shards": 2, "number_of_replicas": 0})
        client.index(index="sharded", id="1", document={"name": "s1", "n": 1}, refresh=True)
    adapter.checkpoint("session")
    before = state(adapter)
    sent = Sent(adapter)
    cp = adapter.checkpoint("test")
    noted.update(index="products", id="1", doc={"n": -1})
    if what == "a new index":
        noted.index(index="fresh", id="1", document={"name": "new", "n": 0})
    elif what == "two shards":
        noted.index(index="sharded", id="2", document={"name": "s2", "n": 2})
    else:
        inner = adapter.checkpoint("inner")
        inside = state(adapter)
        noted.update(index="products", id="2", doc={"n": -2})
        sent.take()
        adapter.rollback(inner)
        assert Sent.statistics(sent.take()) == 0
        assert state(adapter) == inside
        noted.update(index="products", id="3", doc={"n": -3})
    sent.take()
    adapter.rollback(cp)
    calls = sent.take()
    assert Sent.statistics(calls) == (0 if what == "a write in a nested level" else 1)
    assert state(adapter) == before
    assert client.get(index="products", id="1")["_source"] == {"name": "p1", "n": 1}


def test_noted_writes_at_random_are_followed_without_the_statistics(
    es: tuple[Elasticsearch, ElasticsearchAdapter], noted: Elasticsearch
) -> None:
    """Random writes only through the noting client (some refused: a missing document, a version
    conflict), with nested checkpoints: each rollback is exact, and where the server answered others
    only what was noted, the indices' fingerprints come from the notes (no statistics read)."""
    import random

    client, adapter = es
    rng = random.Random(16)
    seed(client, "a", 80)
    seed(client, "b", 30)
    adapter.checkpoint("session")
    sent = Sent(adapter)
    without = 0
    for round_ in range(30):
        before = state(adapter)
        cp = adapter.checkpoint(f"test {round_}")
        for _ in range(rng.randint(1, 5)):
            index, doc_id = rng.choice("ab"), str(rng.randrange(100))
            kind = rng.choice(["index", "update", "delete", "bulk", "create", "inner"])
            if not document_write(noted, kind, index, doc_id, round_):
                inside = state(adapter)
                inner = adapter.checkpoint("inner")
                noted.index(index=index, id=doc_id, document={"name": "in inner", "n": 3})
                adapter.rollback(inner)
                assert state(adapter) == inside, f"round {round_}: inner"
                adapter.release(inner)
        sent.take()
        adapter.rollback(cp)
        calls = sent.take()
        without += Sent.statistics(calls) == 0 and Sent.documents_written(calls) > 0
        assert state(adapter) == before, f"round {round_}"
        adapter.release(cp)
    assert 5 <= without < 30, f"{without} of 30 rollbacks went without the statistics (refusals: with them)"
