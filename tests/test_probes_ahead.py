"""Probes sent ahead (``prefetch``): a reply no rollback used is never taken for a later one.

For each built-in adapter on a real server: the probe of a rollback sent ahead and the block
left without that rollback (a strategy hook did it, a store before it failed, an interrupt), then
a write, then the rollback: the write is undone, whatever the reply left behind said. For
Redis, whose reply waits on the adapter's own connection, the reply is read and dropped; after an
interrupt the connection is dropped, and the next rollback restores fully.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from pytest_rollback.adapters.elasticsearch import ElasticsearchAdapter
from pytest_rollback.adapters.mongo import MongoAdapter
from pytest_rollback.adapters.redis import RedisAdapter
from pytest_rollback.api import Service


def test_redis_a_reply_sent_ahead_and_not_used_is_read_and_dropped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("own", "data")
    adapter = RedisAdapter(redis_url)
    try:
        cp = adapter.checkpoint("test")
        with adapter.prefetch(cp):
            pass  # no rollback in the block
        client.set("written", "1")
        report = adapter.rollback(cp)
        assert report.mode == "incremental" and report.restored == 1
        assert client.keys() == [b"own"]
        with adapter.prefetch(cp):
            report = adapter.rollback(cp)  # used: the reply is this rollback's barrier
        assert report.mode == "none"
        newer = adapter.checkpoint("newer")
        with adapter.prefetch(newer):
            client.set("written", "2")
            assert adapter.rollback(cp).mode == "incremental"  # another level's reply is read, not used
        assert client.keys() == [b"own"]
    finally:
        adapter.close()
        client.close()


def test_redis_a_reply_sent_ahead_when_an_interrupt_came_drops_the_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    adapter = RedisAdapter(redis_url)
    try:
        cp = adapter.checkpoint("test")
        with pytest.raises(KeyboardInterrupt), adapter.prefetch(cp):
            raise KeyboardInterrupt
        client.set("written", "1")
        report = adapter.rollback(cp)
        assert report.mode == "full" and "connection was lost" in str(report.reason)
        assert client.keys() == []
        assert adapter.rollback(cp).mode == "none"  # the new connection is in step
    finally:
        adapter.close()
        client.close()


def test_mongo_a_reply_sent_ahead_and_not_used_is_not_taken_for_a_later_look(
    secantus: Service, secantus_client: Any
) -> None:
    secantus_client.app.people.insert_one({"_id": 1})
    adapter = MongoAdapter(secantus.url)
    try:
        cp = adapter.checkpoint("test")
        assert adapter.rollback(cp).mode == "none"
        with adapter.prefetch(cp):
            pass  # no rollback in the block: the serverStatus sent counts one command more
        secantus_client.app.people.insert_one({"_id": 2})
        report = adapter.rollback(cp)
        assert report.mode == "incremental" and report.restored == 1
        assert [d["_id"] for d in secantus_client.app.people.find()] == [1]
        with adapter.prefetch(cp):
            assert adapter.rollback(cp).mode == "none"
    finally:
        adapter.close()


def test_elasticsearch_a_reply_sent_ahead_and_not_used_is_not_taken_for_a_later_look(
    cleared_noida: Service,
) -> None:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(cleared_noida.url)
    client.index(index="own", id="1", document={"a": 1}, refresh=True)
    adapter = ElasticsearchAdapter(cleared_noida.url)
    try:
        cp = adapter.checkpoint("test")
        with adapter.prefetch(cp):
            pass  # no rollback in the block
        client.index(index="own", id="2", document={"a": 2}, refresh=True)
        assert adapter.rollback(cp).mode != "none"
        assert client.count(index="own")["count"] == 1
        with adapter.prefetch(cp):
            report = adapter.rollback(cp)
        assert report.mode == "none" and adapter.last_round_trips == 1
    finally:
        adapter.close()
        client.close()
