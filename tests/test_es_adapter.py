"""The Elasticsearch adapter against a server that speaks the API (noida-db here; a real node where one runs).

Every test compares the whole state after a rollback with the state at the
checkpoint: every owned index's documents (ids, sources, routing), mappings,
settings, aliases, and the templates and cluster settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import clear_elasticsearch, real_server
from elasticsearch import Elasticsearch, helpers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter
from pytest_rollback.api import RollbackWarning, Service

MAPPINGS = {"properties": {"name": {"type": "text"}, "tag": {"type": "keyword"}, "n": {"type": "long"}}}


def _real_node() -> Iterator[Service]:
    """A real Elasticsearch node: Docker if an engine answers, else ``elasticsearch`` on PATH."""
    from pytest_rollback.options import DEFAULT_IMAGES
    from pytest_rollback.services import docker, local

    starts = (docker.elasticsearch, local.elasticsearch)
    yield from real_server("elasticsearch", DEFAULT_IMAGES["elasticsearch"], starts)


@pytest.fixture(scope="module", params=["noida-db", "elasticsearch"])
def server(request: pytest.FixtureRequest) -> Iterator[Service]:
    if request.param == "noida-db":
        yield request.getfixturevalue("noida")
    else:
        yield from _real_node()


@pytest.fixture(params=["auto", "hidden"])
def es(server: Service, request: pytest.FixtureRequest) -> Iterator[tuple[Elasticsearch, ElasticsearchAdapter]]:
    """A cleared server, its client and an adapter (snapshots parked as the server needs, or hidden only)."""
    client = Elasticsearch(server.url, request_timeout=60)
    clear_elasticsearch(client)
    adapter = ElasticsearchAdapter(server.url, park=request.param)
    yield client, adapter
    adapter.close()
    clear_elasticsearch(client)
    client.close()


def seed(client: Elasticsearch, index: str = "products", n: int = 200) -> None:
    aliases = {f"{index}-all": {}}
    client.indices.create(index=index, mappings=MAPPINGS, settings={"number_of_replicas": 0}, aliases=aliases)
    docs = (
        {"_index": index, "_id": str(i), "_source": {"name": f"p{i}", "tag": "ab"[i % 2], "n": i}} for i in range(n)
    )
    helpers.bulk(client, docs, refresh=True)


def state(adapter: ElasticsearchAdapter) -> dict[Any, Any]:
    return dict(adapter.observe().state)


def assert_same(adapter: ElasticsearchAdapter, before: dict[Any, Any]) -> None:
    after = state(adapter)
    if after != before:
        from pytest_rollback.api import Observation

        diff = Observation("elasticsearch", before).diff(Observation("elasticsearch", after))
        pytest.fail("state differs after rollback: " + "; ".join(diff))


def test_the_issue_example_is_restored_exactly(es: Any) -> None:
    client, adapter = es
    seed(client)
    before = state(adapter)
    cp = adapter.checkpoint("test")
    client.delete_by_query(index="products", query={"term": {"tag": "a"}}, refresh=True)
    client.indices.create(index="tmp")
    client.index(index="products", id="late", document={"name": "never refreshed", "extra": "new field"})
    client.update(index="products", id="1", doc={"n": -1})
    report = adapter.rollback(cp)
    assert report.mode == "incremental"
    assert_same(adapter, before)
    assert not client.indices.exists(index="tmp")
    assert client.count(index="products")["count"] == 200
    adapter.checkpoint("next test")  # the restored index is known to equal its snapshot: nothing to clone
    assert adapter.last_round_trips == 3  # the request counts (the test's client read since), then the look


def test_untouched_costs_two_round_trips(es: Any) -> None:
    client, adapter = es
    seed(client)
    seed(client, "other", 50)
    adapter.checkpoint("session")
    cp = adapter.checkpoint("test")
    assert adapter.last_round_trips == 1  # the request counts: nothing but our own since the last look
    client.search(index="products", query={"match": {"name": "p1"}})
    report = adapter.rollback(cp)
    # one round trip: the server's request counts show our own requests and one search since the checkpoint
    assert (report.mode, report.restored, adapter.last_round_trips) == ("none", 0, 1)


def test_only_the_touched_index_is_restored(es: Any) -> None:
    client, adapter = es
    for name in ("a", "b", "c"):
        seed(client, name, 30)
    adapter.checkpoint("session")
    before = state(adapter)
    cp = adapter.checkpoint("test")
    assert adapter.last_round_trips == 1  # nothing moved since the session's checkpoint: no look, no clone
    client.index(index="b", id="x", document={"name": "x"})
    report = adapter.rollback(cp)
    assert report.restored == 1
    assert_same(adapter, before)


def test_definitions_templates_and_cluster_settings(es: Any) -> None:
    client, adapter = es
    seed(client)
    one_shard = {"settings": {"number_of_shards": 1}}
    client.indices.put_index_template(name="logs", index_patterns=["logs-*"], template=one_shard)
    client.cluster.put_component_template(name="base", template={"mappings": {"properties": {"ts": {"type": "date"}}}})
    before = state(adapter)
    cp = adapter.checkpoint("test")
    client.indices.update_aliases(actions=[
        {"remove": {"index": "products", "alias": "products-all"}},
        {"add": {"index": "products", "alias": "cheap", "filter": {"range": {"n": {"lt": 10}}}}},
    ])
    client.indices.put_settings(index="products", settings={"refresh_interval": "7s", "max_result_window": 500})
    client.indices.put_mapping(index="products", properties={"added": {"type": "keyword"}})
    client.indices.delete_index_template(name="logs")
    client.indices.put_index_template(name="tmp", index_patterns=["tmp-*"], priority=7)
    client.cluster.put_component_template(name="base", template={"settings": {"number_of_replicas": 0}})
    client.indices.put_template(name="legacy", index_patterns=["old-*"], order=1)
    client.cluster.put_settings(persistent={"search.max_buckets": 1234})
    changes = adapter.changes(cp)
    assert {"products (aliases)", "products (settings)", "products (mapping)", "cluster settings"} <= changes.modified
    assert "index_template logs" in changes.removed and "index_template tmp" in changes.added
    adapter.rollback(cp)
    assert_same(adapter, before)


def test_deleted_and_recreated_indices(es: Any) -> None:
    client, adapter = es
    seed(client)
    before = state(adapter)
    cp = adapter.checkpoint("test")
    client.indices.delete(index="products")
    client.indices.create(index="products", mappings={"properties": {"other": {"type": "keyword"}}})
    client.index(index="products", id="0", document={"other": "x"}, refresh=True)
    adapter.rollback(cp)
    assert_same(adapter, before)
    client.indices.delete(index="products")
    adapter.rollback(cp)
    assert_same(adapter, before)


def test_nested_checkpoints(es: Any) -> None:
    client, adapter = es
    seed(client, n=20)
    at_outer = state(adapter)
    outer = adapter.checkpoint("outer")
    client.index(index="products", id="a", document={"name": "a"})
    at_middle = state(adapter)
    middle = adapter.checkpoint("middle")
    client.delete(index="products", id="3")
    client.indices.create(index="inner-only")
    inner = adapter.checkpoint("inner")
    client.index(index="inner-only", id="1", document={"x": 1})
    adapter.rollback(middle)  # rolls past inner
    assert_same(adapter, at_middle)
    with pytest.raises(Exception, match="released or rolled past"):
        adapter.rollback(inner)
    client.index(index="products", id="b", document={"name": "b"})
    adapter.release(middle)
    adapter.rollback(outer)
    assert_same(adapter, at_outer)
    adapter.rollback(outer)  # a token stays usable
    assert_same(adapter, at_outer)


def test_changes_name_documents_and_indices(es: Any) -> None:
    client, adapter = es
    seed(client, n=10)
    cp = adapter.checkpoint("test")
    client.index(index="products", id="new", document={"name": "n"})
    client.index(index="products", id="1", document={"name": "changed"})
    client.delete(index="products", id="2")
    client.indices.create(index="tmp")
    changes = adapter.changes(cp)
    assert changes.added == {"products/new", "tmp"}
    assert changes.modified == {"products/1", "products (mapping)"} or changes.modified == {"products/1"}
    assert changes.removed == {"products/2"}
    adapter.rollback(cp)
    assert not adapter.changes(cp)


def test_closed_index_at_checkpoint_is_restored_exactly_and_closed_again(es: Any) -> None:
    """An index closed at the checkpoint, opened and written, re-mapped and re-set while closed: all undone."""
    client, adapter = es
    seed(client, "archive", 5)
    client.indices.close(index="archive")
    before = state(adapter)
    settings_before = client.indices.get_settings(index="archive", flat_settings=True)["archive"]["settings"]
    cp = adapter.checkpoint("test")
    if not adapter._clones_closed:
        pytest.skip("this server cannot clone a closed index (see the next test)")
    client.indices.put_settings(index="archive", settings={"index.refresh_interval": "9s"})
    client.indices.put_mapping(index="archive", properties={"late": {"type": "keyword"}})
    adapter.rollback(cp)
    assert_same(adapter, before)
    client.indices.open(index="archive")
    client.index(index="archive", id="x", document={"name": "x"})
    client.indices.update_aliases(actions=[{"add": {"index": "archive", "alias": "extra"}}])
    adapter.rollback(cp)
    assert_same(adapter, before)
    assert client.cluster.state(metric="metadata")["metadata"]["indices"]["archive"]["state"] == "close"
    assert _volatile_free(client.indices.get_settings(index="archive", flat_settings=True)["archive"]["settings"]) \
        == _volatile_free(settings_before)
    client.indices.open(index="archive")
    assert client.count(index="archive")["count"] == 5


def _volatile_free(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ("index.uuid", "index.creation_date")}


def test_closed_index_a_server_cannot_clone_is_put_back_where_it_can_and_reported_in_one_line(es: Any) -> None:
    client, adapter = es
    adapter._clones_closed = False  # as on a server that refuses to clone a closed index
    seed(client, "archive", 5)
    client.indices.close(index="archive")
    before = state(adapter)
    cp = adapter.checkpoint("test")
    client.indices.put_settings(index="archive", settings={"index.refresh_interval": "9s"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter.rollback(cp)  # a setting of a closed index is put back in place: nothing to say
    assert_same(adapter, before)
    client.indices.put_mapping(index="archive", properties={"late": {"type": "keyword"}})
    with pytest.warns(RollbackWarning, match="'archive' was closed at checkpoint 'test'.*mapping changed"):
        adapter.rollback(cp)
    client.indices.open(index="archive")
    client.index(index="archive", id="x", document={"name": "x"})
    with pytest.warns(RollbackWarning) as caught:
        adapter.rollback(cp)
    (warning,) = caught
    message = str(warning.message)
    assert "'archive' was closed at checkpoint 'test'" in message and "\n" not in message
    assert client.cluster.state(metric="metadata")["metadata"]["indices"]["archive"]["state"] == "close"


def test_snapshots_are_hidden_and_gone_after_close(server: Service) -> None:
    client = Elasticsearch(server.url)
    clear_elasticsearch(client)
    adapter = ElasticsearchAdapter(server.url)  # parks snapshots the way this server needs
    seed(client)
    adapter.checkpoint("session")
    assert client.count(index="*")["count"] == 200  # the snapshot is not in wildcard searches
    assert list(client.indices.get(index="*")) == ["products"]
    adapter.close()
    names = client.indices.get(index="*", expand_wildcards="all")
    assert [n for n in names if n.startswith(".pytest-rollback-")] == []
    clear_elasticsearch(client)
    client.close()


def test_prefixes_keep_two_adapters_apart(server: Service) -> None:
    client = Elasticsearch(server.url)
    clear_elasticsearch(client)
    one, two = ElasticsearchAdapter(server.url, prefix="gw0-"), ElasticsearchAdapter(server.url, prefix="gw1-")
    try:
        seed(client, "gw0-items", 10)
        seed(client, "gw1-items", 10)
        cp1, cp2 = one.checkpoint("one"), two.checkpoint("two")
        client.indices.create(index="gw0-tmp")
        client.indices.create(index="gw1-tmp")
        client.delete(index="gw1-items", id="1", refresh=True)
        one.rollback(cp1)
        assert not client.indices.exists(index="gw0-tmp") and client.indices.exists(index="gw1-tmp")
        assert client.count(index="gw1-items")["count"] == 9
        two.rollback(cp2)
        assert not client.indices.exists(index="gw1-tmp")
        assert client.count(index="gw1-items")["count"] == 10
    finally:
        one.close()
        two.close()
        clear_elasticsearch(client)
        client.close()


# -- property-based: random sequences of writes, rolled back exactly -----------------
INDICES = ("alpha", "beta", "gamma")
ids = st.sampled_from([str(i) for i in range(12)])
index = st.sampled_from(INDICES)
source = st.fixed_dictionaries({"name": st.text(max_size=8), "n": st.integers(-5, 5)}, optional={
    "tag": st.sampled_from(["a", "b"]), "fresh_field": st.booleans()})
refresh = st.sampled_from([False, True])

operations = st.one_of(
    st.tuples(st.just("index"), index, ids, source, refresh),
    st.tuples(st.just("update"), index, ids, source, refresh),
    st.tuples(st.just("delete"), index, ids, refresh),
    st.tuples(st.just("delete_by_query"), index, st.integers(-5, 5)),
    st.tuples(
        st.just("bulk"), index, st.lists(st.tuples(st.sampled_from(["index", "delete"]), ids, source), max_size=6)
    ),
    st.tuples(st.just("create_index"), index),
    st.tuples(st.just("delete_index"), index),
    st.tuples(st.just("put_mapping"), index, st.sampled_from(["k1", "k2"])),
    st.tuples(st.just("alias"), index, st.sampled_from(["al", "bl"]), st.booleans()),
    st.tuples(st.just("settings"), index, st.sampled_from(["1s", "5s", "-1"])),
    st.tuples(st.just("template"), st.sampled_from(["t1", "t2"]), st.booleans()),
    st.tuples(st.just("checkpoint"),),
)


def apply(client: Elasticsearch, op: tuple[Any, ...]) -> None:
    kind, *args = op
    quiet = client.options(ignore_status=(400, 404, 409))
    if kind == "index":
        name, doc_id, doc, fresh = args
        quiet.index(index=name, id=doc_id, document=doc, refresh=fresh)
    elif kind == "update":
        name, doc_id, doc, fresh = args
        quiet.update(index=name, id=doc_id, doc=doc, refresh=fresh)
    elif kind == "delete":
        name, doc_id, fresh = args
        quiet.delete(index=name, id=doc_id, refresh=fresh)
    elif kind == "delete_by_query":
        name, below = args
        quiet.delete_by_query(index=name, query={"range": {"n": {"lt": below}}}, refresh=True, conflicts="proceed")
    elif kind == "bulk":
        name, items = args
        actions = [
            {"_op_type": op_type, "_index": name, "_id": doc_id, **({"_source": doc} if op_type == "index" else {})}
            for op_type, doc_id, doc in items
        ]
        if actions and client.indices.exists(index=name):
            helpers.bulk(client, actions, raise_on_error=False)
    elif kind == "create_index":
        quiet.indices.create(index=args[0], mappings=MAPPINGS)
    elif kind == "delete_index":
        quiet.indices.delete(index=args[0])
    elif kind == "put_mapping":
        quiet.indices.put_mapping(index=args[0], properties={args[1]: {"type": "keyword"}})
    elif kind == "alias":
        name, alias, add = args
        if add:
            quiet.indices.put_alias(index=name, name=alias)
        else:
            quiet.indices.delete_alias(index=name, name=alias)
    elif kind == "settings":
        quiet.indices.put_settings(index=args[0], settings={"refresh_interval": args[1]})
    elif kind == "template":
        name, add = args
        if add:
            quiet.indices.put_index_template(name=name, index_patterns=[f"{name}-*"], priority=len(name))
        else:
            quiet.indices.delete_index_template(name=name)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, max_size=12))
def test_random_writes_roll_back_exactly(es: Any, ops: list[tuple[Any, ...]]) -> None:
    client, adapter = es
    for name in INDICES[:2]:
        if not client.indices.exists(index=name):
            seed(client, name, 12)
    base = adapter.checkpoint("base")
    at_base = state(adapter)
    inner: tuple[Any, dict[Any, Any]] | None = None
    for op in ops:
        if op[0] == "checkpoint":
            if inner is None:
                inner = (adapter.checkpoint("inner"), state(adapter))
            continue
        apply(client, op)
    if inner is not None:
        adapter.rollback(inner[0])
        assert_same(adapter, inner[1])
    adapter.rollback(base)
    assert_same(adapter, at_base)
    adapter.release(base)


# -- leaks the randomized isolation suite found (issue 12) ----------------------------
def test_a_cluster_state_version_that_comes_back_to_a_remembered_number_is_not_trusted(es: Any) -> None:
    """noida-db lowers the version when several indices are deleted at once (here the adapter's own
    snapshots, rolled past); three changes later it is back at the number the adapter remembered."""
    client, adapter = es
    for name in ("a", "b", "c", "d"):
        seed(client, name, 3)
    client.indices.put_index_template(name="logs", index_patterns=["logs-*"], priority=3)
    outer = adapter.checkpoint("outer")
    at_outer = state(adapter)
    for name in ("a", "b", "c", "d"):
        client.index(index=name, id="w1", document={"n": 1})
    adapter.checkpoint("rollback.checkpoint()")  # four snapshots, rolled past below: deleted in one request
    for name in ("a", "b", "c", "d"):
        client.index(index=name, id="w2", document={"n": 2})
    adapter.rollback(outer)
    assert_same(adapter, at_outer)
    client.indices.put_alias(index="a", name="late")
    client.indices.delete_index_template(name="logs")
    client.cluster.put_component_template(name="late", template={"settings": {"number_of_replicas": 0}})
    adapter.rollback(outer)
    assert_same(adapter, at_outer)


def test_restored_indices_keep_their_settings_as_get_settings_shows_them(es: Any) -> None:
    """No ``index.routing_partition_size: 1`` from a clone, no empty ``index.blocks`` group from a lifted block."""
    client, adapter = es
    seed(client, n=5)
    client.indices.create(index="explicit", settings={"index.blocks.write": False, "number_of_replicas": 0})

    def shown() -> dict[str, Any]:
        out = {}
        for name in ("products", "explicit"):
            for api in (client.indices.get_settings, client.indices.get):
                got = api(index=name, flat_settings=True)[name]["settings"]
                out[(name, api.__name__)] = _volatile_free(got)
        return out

    before = shown()
    cp = adapter.checkpoint("test")
    assert shown() == before, "the checkpoint changed the settings"
    client.index(index="products", id="x", document={"n": 1})
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": True})
    client.indices.put_settings(index="explicit", settings={"index.blocks.write": True})
    adapter.rollback(cp)
    assert shown() == before, "the restore changed the settings"
    adapter.checkpoint("next")
    assert shown() == before, "the next checkpoint changed the settings"


def test_data_streams_are_reported_in_one_warning_naming_the_checkpoint(es: Any) -> None:
    """A server with data streams (noida-db has none: answered here as Elasticsearch does) gets one warning."""
    client, adapter = es
    seed(client, n=3)
    streams = {"data_streams": [{"name": "logs-app", "generation": 1, "template": "logs",
                                 "indices": [{"index_name": ".ds-logs-app-000001"}]}]}
    call = adapter._call

    def answer(method: str, path: str, body: Any = None, *args: Any, **params: Any) -> Any:
        if path.startswith("/_data_stream/"):
            return streams
        return call(method, path, body, *args, **params)

    adapter._call = answer  # type: ignore[method-assign]
    adapter._has_streams = True
    cp = adapter.checkpoint("test tests/test_logs.py::test_ingest")
    client.index(index="products", id="x", document={"n": 1})
    with pytest.warns(RollbackWarning) as caught:
        adapter.rollback(cp)
    (warning,) = caught
    message = str(warning.message)
    assert "data stream 'logs-app'" in message and "test_ingest" in message and "\n" not in message
    assert ("data_stream", "logs-app") in adapter.observe().state


def test_a_write_to_a_data_stream_templates_name_on_noida_makes_an_index_that_is_rolled_back(es: Any) -> None:
    client, adapter = es
    client.indices.put_index_template(name="logs", index_patterns=["logs-*"], data_stream={}, priority=5)
    before = state(adapter)
    cp = adapter.checkpoint("test")
    try:
        client.index(index="logs-app", document={"@timestamp": "2024-01-01T00:00:00Z", "n": 1}, op_type="create")
    except Exception:
        pytest.skip("this server has data streams: the previous test covers it")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter.rollback(cp)
    assert_same(adapter, before)


def test_a_block_the_checkpoint_itself_had_is_lifted_before_a_later_restore(es: Any) -> None:
    client, adapter = es
    seed(client, n=3)
    outer = adapter.checkpoint("outer")
    at_outer = state(adapter)
    client.index(index="products", id="x", document={"n": 1})
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": True})
    inner = adapter.checkpoint("inner")
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": None})
    client.index(index="products", id="y", document={"n": 2})
    adapter.rollback(inner)  # puts the block back: the cluster state moves by the adapter's own hand
    adapter.rollback(outer)  # replaces the blocked index
    assert_same(adapter, at_outer)


def test_an_empty_blocks_group_a_users_null_left_is_kept(es: Any) -> None:
    client, adapter = es
    seed(client, n=3)
    client.indices.put_settings(index="products", settings={"index.blocks.write": None})
    shown = client.indices.get(index="products", flat_settings=True)["products"]["settings"]
    before = state(adapter)
    cp = adapter.checkpoint("test")
    client.index(index="products", id="x", document={"n": 1})
    client.indices.put_settings(index="products", settings={"index.blocks": None})
    adapter.rollback(cp)
    assert_same(adapter, before)
    after = client.indices.get(index="products", flat_settings=True)["products"]["settings"]
    assert _volatile_free(after) == _volatile_free(shown)


def test_a_block_the_index_had_at_the_checkpoint_is_lifted_before_reopening_it(es: Any) -> None:
    """Read-only at the checkpoint, closed by the test and read-only again: nothing but its state differs,
    and the cluster state has not moved since the last checkpoint; replacing it needs the block lifted."""
    client, adapter = es
    seed(client, n=3)
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": True})
    outer = adapter.checkpoint("test")
    at_outer = state(adapter)
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": None})
    client.indices.close(index="products")
    client.indices.put_settings(index="products", settings={"index.blocks.read_only": True})
    adapter.checkpoint("rollback.checkpoint()")
    try:
        adapter.rollback(outer)
        assert_same(adapter, at_outer)
    finally:
        client.indices.put_settings(index="products", settings={"index.blocks.read_only": None})
