"""Elasticsearch for the randomized isolation suite: documents, indices, settings, mappings, aliases, templates.

Every write stays inside the worker's index prefix as the plugin gives it
(``elasticsearch_service.extra["prefix"]``: ``gw0-`` ... on a shared external
server, ``""`` where each worker has a server of its own, as with the default
embedded noida-db; ``ROLLBACK_ISOLATION_ES_URL`` runs both workers on one
server instead). This file is loaded into the inner run as a plugin
(``-p iso_store``) for its ``iso_es`` fixture, which knows that prefix.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from elasticsearch import ApiError, Elasticsearch, helpers
from elasticsearch.helpers import BulkIndexError

STORE = "elasticsearch"
CLIENT_FIXTURE = "iso_es"
#: ``ROLLBACK_ISOLATION_ES_URL=http://...`` runs both workers on that one server, each in its prefix
_SHARED = os.environ.get("ROLLBACK_ISOLATION_ES_URL")
INNER_ARGS = ("-p", "iso_store", *((f"--rollback-elasticsearch-url={_SHARED}",) if _SHARED else ()))
#: refusals a random op can meet (a missing index, a closed one, a mapping conflict), not bugs
EXPECTED_ERRORS = (ApiError, BulkIndexError)

INDICES = ("a", "b", "c", "d")  # written to (and so made) by document writes
NEW = ("e", "f", "a")  # created (or cloned to) by name
#: settings that differ between equal copies of an index (a restore makes a new copy): left out of the dump
VOLATILE = ("index.uuid", "index.creation_date", "index.provided_name", "index.history.uuid")
VOLATILE_PREFIXES = ("index.version.",)


class Es:
    """The session's client and this worker's prefix."""

    def __init__(self, client: Elasticsearch, prefix: str, owns_cluster: bool) -> None:
        self.es, self.prefix, self.owns_cluster = client, prefix, owns_cluster

    def name(self, rng: random.Random, among: tuple[str, ...] = INDICES) -> str:
        return self.prefix + rng.choice(among)


@pytest.fixture(scope="session")
def iso_es(es_client: Elasticsearch, elasticsearch_service: Any) -> Es:
    prefix = str(elasticsearch_service.extra.get("prefix") or "")
    return Es(es_client.options(request_timeout=60), prefix, owns_cluster=not prefix)


def dump(c: Es) -> dict[str, Any]:
    """Every index of the prefix with its settings (without uuids and dates), mappings, aliases (with their
    filters and routing), open or closed state and documents (source and routing); index, component and
    legacy templates; the cluster's persistent and transient settings when the worker owns them."""
    es = c.es
    state: dict[str, Any] = {}
    pattern = f"{c.prefix}*" if c.prefix else "*,-.*"
    indices = es.indices.get(index=pattern, expand_wildcards="all", flat_settings=True)
    meta = es.cluster.state(metric="metadata", index=pattern, expand_wildcards="all")["metadata"]["indices"]
    for name, data in indices.items():
        if name.startswith("."):
            continue
        settings = {
            k: v for k, v in data["settings"].items() if k not in VOLATILE and not k.startswith(VOLATILE_PREFIXES)
        }
        closed = meta.get(name, {}).get("state") == "close"
        docs = None
        if not closed:
            es.options(ignore_status=(403,)).indices.refresh(index=name)
            hits = es.options(ignore_status=(403,)).search(index=name, size=400, sort=["_doc"],
                                                             query={"match_all": {}})
            docs = sorted(
                (h["_id"], repr(h.get("_source")), h.get("_routing")) for h in hits.get("hits", {}).get("hits", [])
            )
        state[f"index {name}"] = {"settings": settings, "mappings": data.get("mappings"),
                                  "aliases": data.get("aliases"), "closed": closed, "docs": docs}
    for item in es.indices.get_index_template().get("index_templates", []):
        if item["name"].startswith(c.prefix) and not item["name"].startswith("."):
            state[f"index_template {item['name']}"] = item["index_template"]
    for item in es.cluster.get_component_template().get("component_templates", []):
        if item["name"].startswith(c.prefix) and not item["name"].startswith("."):
            state[f"component_template {item['name']}"] = item["component_template"]
    for name, body in es.indices.get_template().items():
        if name.startswith(c.prefix) and not name.startswith("."):
            state[f"template {name}"] = body
    if c.owns_cluster:
        got = es.cluster.get_settings(flat_settings=True)
        state["cluster settings"] = {"persistent": got["persistent"], "transient": got["transient"]}
    return state


def _doc(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {"n": rng.randrange(20), "tag": rng.choice("xyz")}
    if rng.random() < 0.2:
        doc[f"f{rng.randrange(3)}"] = rng.choice(["text", 7, True])
    return doc


def _id(rng: random.Random) -> str:
    return str(rng.randrange(8))


def op_index(rng: random.Random, c: Es) -> None:
    c.es.index(index=c.name(rng), id=_id(rng), document=_doc(rng), refresh=rng.choice([False, True]),
               routing=rng.choice([None, None, "r1"]))


def op_update(rng: random.Random, c: Es) -> None:
    c.es.update(index=c.name(rng), id=_id(rng), doc=_doc(rng), doc_as_upsert=rng.random() < 0.5)


def op_delete(rng: random.Random, c: Es) -> None:
    c.es.options(ignore_status=(404,)).delete(index=c.name(rng), id=_id(rng))


def op_bulk(rng: random.Random, c: Es) -> None:
    actions = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["index", "index", "delete", "create"])
        action: dict[str, Any] = {"_op_type": kind, "_index": c.name(rng), "_id": _id(rng)}
        if kind != "delete":
            action["_source"] = _doc(rng)
        actions.append(action)
    helpers.bulk(c.es, actions, raise_on_error=False, refresh=rng.choice([False, "true"]))


def op_update_by_query(rng: random.Random, c: Es) -> None:
    c.es.update_by_query(index=c.name(rng), query={"term": {"tag": rng.choice("xyz")}}, conflicts="proceed",
                         script={"source": "ctx._source.n = params.n", "params": {"n": rng.randrange(20)}},
                         refresh=True)


def op_delete_by_query(rng: random.Random, c: Es) -> None:
    c.es.delete_by_query(index=c.name(rng), query={"range": {"n": {"lt": rng.randrange(20)}}},
                         conflicts="proceed", refresh=True)


def op_create_index(rng: random.Random, c: Es) -> None:
    settings: dict[str, Any] = {"number_of_replicas": rng.choice([0, 1])}
    if rng.random() < 0.3:
        settings["number_of_shards"] = rng.choice([1, 2])
    mappings = {"properties": {"n": {"type": "long"}, "tag": {"type": "keyword"}}} if rng.random() < 0.6 else None
    aliases = {f"{c.prefix}al{rng.randrange(2)}": {}} if rng.random() < 0.3 else None
    c.es.indices.create(index=c.name(rng, NEW), settings=settings, mappings=mappings, aliases=aliases)


def op_delete_index(rng: random.Random, c: Es) -> None:
    c.es.indices.delete(index=c.name(rng, INDICES + NEW[:2]), expand_wildcards="all")


def op_close(rng: random.Random, c: Es) -> None:
    c.es.indices.close(index=c.name(rng))


def op_open(rng: random.Random, c: Es) -> None:
    c.es.indices.open(index=c.name(rng))


def op_settings(rng: random.Random, c: Es) -> None:
    choice = rng.choice([
        {"index.refresh_interval": rng.choice(["1s", "5s", "-1", None])},
        {"index.number_of_replicas": rng.choice([0, 1, 2])},
        {"index.max_result_window": rng.choice([500, 20000, None])},
        {"index.blocks.write": rng.choice([True, False, None])},
        {"index.blocks.read_only": rng.choice([True, None])},
    ])
    c.es.indices.put_settings(index=c.name(rng), settings=choice)  # (no read or metadata block: dump reads)


def op_mapping(rng: random.Random, c: Es) -> None:
    c.es.indices.put_mapping(index=c.name(rng), properties={f"m{rng.randrange(4)}": {"type": "keyword"}})


def op_alias(rng: random.Random, c: Es) -> None:
    alias = f"{c.prefix}al{rng.randrange(3)}"
    if rng.random() < 0.6:
        spec: dict[str, Any] = {}
        if rng.random() < 0.3:
            spec["filter"] = {"term": {"tag": rng.choice("xyz")}}
        if rng.random() < 0.2:
            spec["routing"] = "r1"
        c.es.indices.update_aliases(actions=[{"add": {"index": c.name(rng), "alias": alias, **spec}}])
    else:
        c.es.indices.delete_alias(index=c.name(rng), name=alias)


def op_index_template(rng: random.Random, c: Es) -> None:
    name = f"{c.prefix}it{rng.randrange(3)}"
    if rng.random() < 0.6:
        c.es.indices.put_index_template(name=name, index_patterns=[f"{c.prefix}zz{name}-*"],
                                        priority=rng.randrange(100),
                                        template={"settings": {"number_of_replicas": rng.randrange(2)}})
    else:
        c.es.indices.delete_index_template(name=name)


def op_component_template(rng: random.Random, c: Es) -> None:
    name = f"{c.prefix}ct{rng.randrange(3)}"
    if rng.random() < 0.6:
        c.es.cluster.put_component_template(name=name, template={"mappings": {"properties": {
            f"c{rng.randrange(3)}": {"type": "keyword"}}}})
    else:
        c.es.cluster.delete_component_template(name=name)


def op_legacy_template(rng: random.Random, c: Es) -> None:
    name = f"{c.prefix}lt{rng.randrange(3)}"
    if rng.random() < 0.6:
        c.es.indices.put_template(name=name, index_patterns=[f"{c.prefix}zz{name}-*"], order=rng.randrange(10))
    else:
        c.es.indices.delete_template(name=name)


def op_cluster_settings(rng: random.Random, c: Es) -> None:
    if not c.owns_cluster:  # a shared server's cluster settings belong to no worker
        return
    kind = rng.choice(["persistent", "transient"])
    key = rng.choice(["search.max_buckets", "action.auto_create_index", "indices.recovery.max_bytes_per_sec"])
    value = {"search.max_buckets": rng.choice([1000, 20000, None]),
             "action.auto_create_index": rng.choice(["true", None]),
             "indices.recovery.max_bytes_per_sec": rng.choice(["40mb", None])}[key]
    c.es.cluster.put_settings(**{kind: {key: value}})


def op_add_block(rng: random.Random, c: Es) -> None:
    c.es.indices.add_block(index=c.name(rng), block=rng.choice(["write", "read_only"]))


def op_reindex(rng: random.Random, c: Es) -> None:
    c.es.reindex(source={"index": c.name(rng)}, dest={"index": c.name(rng)}, refresh=True, conflicts="proceed")


def op_write_through_alias(rng: random.Random, c: Es) -> None:
    c.es.index(index=f"{c.prefix}al{rng.randrange(3)}", id=_id(rng), document=_doc(rng))


def op_clone(rng: random.Random, c: Es) -> None:
    source, target = c.name(rng), c.name(rng, NEW)
    c.es.indices.add_block(index=source, block="write")
    c.es.indices.clone(index=source, target=target)


OPS = [
    op_index, op_index, op_index, op_update, op_delete, op_bulk, op_bulk, op_update_by_query, op_delete_by_query,
    op_create_index, op_delete_index, op_close, op_open, op_settings, op_mapping, op_alias, op_alias,
    op_index_template, op_component_template, op_legacy_template, op_cluster_settings,
    op_add_block, op_reindex, op_write_through_alias, op_clone,
]


def seed(c: Es, rng: random.Random, scope: str) -> None:
    """An index of its own for the scope (sometimes closed, with an alias), documents in the shared ones."""
    own = f"{c.prefix}{scope[:3]}{rng.randrange(1000)}"
    c.es.options(ignore_status=(400,)).indices.create(
        index=own, settings={"number_of_replicas": 0}, aliases={f"{own}-al": {}} if rng.random() < 0.5 else None)
    for i in range(rng.randint(1, 4)):
        c.es.index(index=own, id=str(i), document={"n": rng.randrange(20), "tag": rng.choice("xyz")})
    for _ in range(rng.randint(0, 3)):
        try:
            op_index(rng, c)
        except EXPECTED_ERRORS:
            pass
    if rng.random() < 0.2:
        c.es.indices.close(index=own)
    if rng.random() < 0.3:
        c.es.indices.put_index_template(name=f"{own}-t", index_patterns=[f"{c.prefix}zz{own}-*"])
