"""Elasticsearch restores that blocks used to make fail (noida-db, which enforces index blocks).

A test that writes to an index and then puts a read-only, metadata or
read-only-allow-delete block on it made the restore's delete, clone or even its
reading of the index refused. The restore lifts them first and puts back the
checkpoint's own blocks last. noida-db accepts cluster blocks but does not
enforce them: their order (lifted before any index is touched, the checkpoint's
put back after) is checked on the requests the adapter sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import INNER, clear_elasticsearch
from elasticsearch import Elasticsearch

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter
from pytest_rollback.api import Service

BLOCKS = ("read_only", "read_only_allow_delete", "read", "write", "metadata")


def _unblock(client: Elasticsearch) -> None:
    """Lift every index and cluster block, so that whatever a failed test left can be cleared."""
    client.indices.put_settings(
        index="*", settings={f"index.blocks.{b}": None for b in BLOCKS}, expand_wildcards="all", allow_no_indices=True
    )
    nulls = {f"cluster.blocks.{b}": None for b in ("read_only", "read_only_allow_delete")}
    client.cluster.put_settings(persistent=nulls, transient=nulls)


@pytest.fixture
def es(noida: Service) -> Iterator[Elasticsearch]:
    client = Elasticsearch(noida.url, request_timeout=60)
    clear_elasticsearch(client)
    yield client
    _unblock(client)
    clear_elasticsearch(client)
    client.close()


def test_blocks_a_test_put_on_its_indices_are_lifted_and_the_checkpoints_put_back(
    pytester: pytest.Pytester, noida: Service, es: Elasticsearch
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_blocks="""
        import pytest

        @pytest.fixture(scope="module", autouse=True)
        def indices(es_client):
            for name in ("logs", "users", "orders", "frozen"):
                es_client.indices.create(index=name, settings={"number_of_replicas": 0}, aliases={f"{name}-all": {}})
                for i in range(5):
                    es_client.index(index=name, id=str(i), document={"n": i})
                es_client.indices.refresh(index=name)
            es_client.indices.put_settings(index="frozen", settings={"index.blocks.write": True})  # the user's own

        def blocks(es, name):
            settings = es.indices.get_settings(index=name, flat_settings=True)[name]["settings"]
            return {k: v for k, v in settings.items() if k.startswith("index.blocks.")}

        def as_seeded(es):
            for name in ("logs", "users", "orders", "frozen"):
                es.indices.refresh(index=name)
                assert es.count(index=name)["count"] == 5, name
                assert list(es.indices.get_alias(index=name)[name]["aliases"]) == [f"{name}-all"]
            assert es.indices.get(index="*").keys() == {"logs", "users", "orders", "frozen"}
            assert blocks(es, "logs") == blocks(es, "users") == blocks(es, "orders") == {}
            assert blocks(es, "frozen") == {"index.blocks.write": "true"}
            assert es.cluster.get_settings(flat_settings=True)["persistent"] == {}

        def test_writes_then_blocks(es_client):
            es_client.index(index="logs", id="new", document={"n": 9})
            es_client.indices.put_settings(index="logs", settings={"index.blocks.read_only": True})
            es_client.delete(index="users", id="1")
            es_client.indices.put_alias(index="users", name="extra")
            es_client.indices.put_settings(index="users", settings={"index.blocks.metadata": True})
            es_client.index(index="orders", id="new", document={"n": 9})
            es_client.indices.put_settings(index="orders", settings={"index.blocks.read_only_allow_delete": True})
            es_client.indices.put_settings(index="frozen", settings={"index.blocks.write": False})
            es_client.index(index="frozen", id="new", document={"n": 9})
            es_client.indices.put_settings(index="frozen", settings={"index.blocks.read_only": True})
            es_client.indices.create(index="created", settings={"index.blocks.read_only": True})
            es_client.cluster.put_settings(persistent={"cluster.blocks.read_only": True})

        def test_after_the_blocks(es_client):
            as_seeded(es_client)
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={noida.url}")
    result.assert_outcomes(passed=2)
    assert es.indices.get(index="*", expand_wildcards="all") == {}, "the inner run left indices behind"


def test_cluster_blocks_are_lifted_before_any_index_is_touched_and_the_checkpoints_put_back_last(
    noida: Service, es: Elasticsearch
) -> None:
    es.indices.create(index="items", settings={"number_of_replicas": 0})
    es.index(index="items", id="1", document={"n": 1}, refresh=True)
    es.cluster.put_settings(persistent={"cluster.blocks.read_only_allow_delete": True})  # at the checkpoint
    adapter = ElasticsearchAdapter(noida.url)
    try:
        cp = adapter.checkpoint("blocked")
        es.index(index="items", id="2", document={"n": 2}, refresh=True)  # noida-db does not enforce it
        es.cluster.put_settings(persistent={"cluster.blocks.read_only": True})
        sent: list[tuple[str, str, Any]] = []
        call = adapter._call

        def record(method: str, path: str, body: Any = None, *args: Any, **params: Any) -> Any:
            sent.append((method, path, body))
            return call(method, path, body, *args, **params)

        adapter._call = record  # type: ignore[method-assign]
        adapter.rollback(cp)
        cluster = [(i, body) for i, (method, path, body) in enumerate(sent) if path == "/_cluster/settings" and body]
        touched = [i for i, (method, path, _) in enumerate(sent) if method != "GET" and path.startswith("/items")]
        lift = {"persistent": {"cluster.blocks.read_only": None, "cluster.blocks.read_only_allow_delete": None}}
        assert touched, "the index was restored"
        assert cluster[0] == (cluster[0][0], lift) and cluster[0][0] < min(touched), "lifted before"
        assert cluster[-1][1]["persistent"] == {"cluster.blocks.read_only_allow_delete": "true"}
        assert cluster[-1][0] > max(touched), "the checkpoint's put back after"
        assert es.cluster.get_settings(flat_settings=True)["persistent"] == {
            "cluster.blocks.read_only_allow_delete": "true"
        }
        assert es.count(index="items")["count"] == 1
    finally:
        _unblock(es)
        adapter.close()


def _aliases(client: Elasticsearch) -> dict[str, Any]:
    return {name: data["aliases"] for name, data in client.indices.get(index="*,-.*").items()}


@pytest.mark.parametrize("what", ["alias removed", "alias changed", "documents written", "index deleted"])
def test_an_alias_named_as_an_index_is_put_back(noida: Service, es: Elasticsearch, what: str) -> None:
    """noida-db lets an index be created with an alias that names another index, but refuses to add such
    an alias afterwards (``_aliases``). An index cloned back gets its aliases in the clone request, and one
    whose alias was taken away is cloned back too: the restore neither fails nor marks the store broken."""
    es.index(index="al1", id="1", document={"n": 1}, refresh=True)
    es.indices.create(index="a", aliases={"al1": {}, "other": {}})
    es.index(index="a", id="1", document={"n": 1}, refresh=True)
    adapter = ElasticsearchAdapter(noida.url)
    try:
        adapter.checkpoint("session")
        before = dict(adapter.observe().state)
        cp = adapter.checkpoint("test")
        if what == "alias removed":
            es.indices.delete_alias(index="a", name="al1")
        elif what == "alias changed":
            es.indices.delete_alias(index="a", name="al1")
            es.indices.create(index="b", aliases={"al1": {"filter": {"term": {"n": 1}}}})
            es.indices.delete(index="b")
            es.indices.put_alias(index="a", name="other", filter={"term": {"n": 2}})
        elif what == "documents written":
            es.index(index="a", id="2", document={"n": 2}, refresh=True)
        else:
            es.indices.delete(index="a")
        adapter.rollback(cp)
        assert dict(adapter.observe().state) == before
        assert _aliases(es)["a"] == {"al1": {}, "other": {}}
        adapter.release(cp)
    finally:
        adapter.close()
