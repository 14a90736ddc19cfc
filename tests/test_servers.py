"""Additional servers declared in one line of a conftest.py: their own fixtures, rolled back like the built-ins."""

from __future__ import annotations

import pytest
from conftest import INNER, docker_unavailable

from pytest_rollback.options import DEFAULT_IMAGES, ELASTICSEARCH_9_IMAGE

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

CONFTEST = """
import pytest_rollback

pytest_rollback.server("redis", name="redis_lru", args=["--maxmemory-policy", "allkeys-lru"])
pytest_rollback.server("mongo", name="mongo_b")
pytest_rollback.server("elasticsearch", name="search_b")
"""

TESTS = """
import pytest

def test_own_servers(redis_service, redis_lru_service, mongo_service, mongo_b_service, elasticsearch_service,
                     search_b_service):
    assert redis_lru_service.name == "redis_lru" and redis_lru_service.port != redis_service.port
    assert mongo_b_service.name == "mongo_b" and mongo_b_service.port != mongo_service.port
    assert search_b_service.name == "search_b" and search_b_service.port != elasticsearch_service.port

@pytest.mark.parametrize("n", range(2))
def test_rolled_back(redis_client, redis_lru_client, mongo_db, mongo_b_db, search_b_client, rollback, n):
    assert redis_lru_client.dbsize() == 0 and redis_client.dbsize() == 0
    assert mongo_b_db.list_collection_names() == []
    assert not search_b_client.indices.exists(index="items")
    redis_lru_client.set("k", n)
    redis_client.set("k", n)
    mongo_b_db.items.insert_one({"_id": n})
    search_b_client.index(index="items", id=str(n), document={"n": n}, refresh=True)
    assert {"redis", "redis_lru", "mongo_b", "search_b"} <= set(rollback.stores)

@pytest.mark.rollback("redis")
def test_marker_names_it(redis_lru_client):
    redis_lru_client.set("kept", "1")  # not rolled back: the marker names only the built-in one

def test_after_marker(redis_lru_client):
    assert redis_lru_client.keys() == [b"kept"]
"""


@pytest.mark.docker
def test_declared_servers_in_containers(pytester: pytest.Pytester) -> None:
    for image in (DEFAULT_IMAGES["redis"], DEFAULT_IMAGES["mongo"], ELASTICSEARCH_9_IMAGE):
        reason = docker_unavailable(image)
        if reason is not None:
            pytest.skip(f"needs a Docker engine with the stand-in images: {reason}")
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_servers=TESTS + """
def test_args_reach_the_server(redis_lru_client, redis_client):
    assert redis_lru_client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
    assert redis_client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
""")
    result = pytester.runpytest_subprocess(*INNER, "-p", "no:randomly", "--rollback-provider=docker", timeout=300)
    result.assert_outcomes(passed=6)
    for name in ("redis_lru", "mongo_b", "search_b"):
        result.stdout.fnmatch_lines([f"pytest-rollback: {name} via docker at *127.0.0.1:*, container "
                                     f"pytest-rollback-{name}-*"])


def test_declared_servers_without_docker(pytester: pytest.Pytester) -> None:
    """auto without an engine: a second local redis-server, a second embedded SecantusDB and noida-db."""
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_servers=TESTS)
    result = pytester.runpytest_subprocess(*INNER, "-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["pytest-rollback: redis_lru via local at redis://127.0.0.1:*"])
    result.stdout.fnmatch_lines(["pytest-rollback: mongo_b via embedded at mongodb://127.0.0.1:*"])


def test_declared_servers_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.replace('pytest_rollback.server("elasticsearch", name="search_b")\n', ""))
    pytester.makepyfile(test_a="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_own_database(mongo_db, mongo_b_db, mongo_service, mongo_b_service, n):
    assert mongo_b_db.name == mongo_db.name  # this worker's database, on each server
    assert mongo_b_service.port != mongo_service.port
    assert mongo_b_db.list_collection_names() == []
    mongo_b_db.items.insert_one({"_id": n})
""")
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", timeout=300)
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize(
    ("call", "what"),
    [
        ('server("postgres", name="pg")', "the store must be one of ('redis', 'mongo', 'elasticsearch')"),
        ('server("redis", name="redis")', "the name must be a Python identifier other than a built-in store's"),
        ('server("redis", name="my-redis")', "the name must be a Python identifier other than a built-in store's"),
    ],
)
def test_a_bad_declaration_is_one_line(pytester: pytest.Pytester, call: str, what: str) -> None:
    pytester.makeconftest(f"from pytest_rollback import server\n\n{call}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess(*INNER)
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*pytest-rollback: {call.split('(', 1)[0]}(*): {what}"])
