"""Idle stores: what a test that touches no store sends to each started server, counted at the server,
and that its restore has the three probes in flight at once; and the end-of-run restore of a server the
plugin started and stops, which nobody can observe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import INNER

#: An inner conftest that starts the three stores for the whole session (no test touches them) and
#: counts, at the start of every test, the commands each server has answered so far.
COUNTING_CONFTEST = '''
import json, os
import pymongo, pytest, redis, urllib3

READINGS = {"redis": [], "elasticsearch": [], "mongo": []}


def _redis_calls(client):
    return sum(v["calls"] for k, v in client.info("commandstats").items() if k.startswith("cmdstat_"))


def _mongo_ops(client):
    return sum(client.admin.command("serverStatus")["opcounters"].values())


def _es_requests(http, url):
    got = json.loads(http.request("GET", url + "/_nodes/stats/http").data)
    return sum(c["request_count"] for n in got["nodes"].values() for c in n["http"]["clients"])


@pytest.fixture(scope="session", autouse=True)
def _stores(redis_client, mongo_db, es_client, redis_service, mongo_service, elasticsearch_service):
    r = redis.Redis.from_url(redis_service.url)
    m = pymongo.MongoClient(mongo_service.url, heartbeatFrequencyMS=60000)
    h = urllib3.PoolManager(maxsize=1)

    def read(mongo=False):
        READINGS["redis"].append(_redis_calls(r))
        READINGS["elasticsearch"].append(_es_requests(h, elasticsearch_service.url))
        if mongo:
            READINGS["mongo"].append(_mongo_ops(m))

    yield read
    READINGS["mongo"].append(_mongo_ops(m))
    with open(os.environ["COUNTS_FILE"], "w") as f:
        json.dump(READINGS, f)


@pytest.fixture(autouse=True)
def _count(_stores, request):
    # MongoDB's counters move with every command, a reading too: read them in two tests only
    _stores(mongo=request.node.name in ("test_5", "test_6"))
'''

TESTS = "\n".join(f"def test_{i}():\n    assert True\n" for i in range(25))

#: a reading is one command to the server, counted by the next reading
OWN_READING = 1


def _idle_run(pytester: pytest.Pytester, out: Path, conftest: str, env: str) -> dict[str, list[Any]]:
    """The 25 untouched tests with ``conftest`` (which writes to the file named by ``env``); what it wrote."""
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_idle=TESTS)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env, str(out))
        result = pytester.runpytest_subprocess(*INNER, "-p", "no:randomly", "--rollback-provider=auto")
    result.assert_outcomes(passed=25)
    result.stdout.fnmatch_lines(["*redis via local*", "*mongo via embedded*", "*elasticsearch via embedded*"])
    return dict(json.loads(out.read_text()))


def _readings(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    return _idle_run(pytester, tmp_path_factory.mktemp("counts") / "counts.json", COUNTING_CONFTEST, "COUNTS_FILE")


def test_an_untouched_test_costs_one_command_per_started_store(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With Redis, MongoDB and Elasticsearch started, a test that touches none of them costs each
    server one command (its restore's look; the next test shares the checkpoint), counted at the server."""
    readings = _readings(pytester, tmp_path_factory)
    for store in ("redis", "elasticsearch"):  # read at the start of every test: what came between
        deltas = [b - a - OWN_READING for a, b in zip(readings[store][5:-1], readings[store][6:], strict=True)]
        assert deltas == [1] * len(deltas), f"{store}: commands per test {deltas}"
    # MongoDB, read in test_5, test_6 and at the end: test_5's restore saw the reading (a full look),
    # test_6's too, and the 18 tests after it cost one command each
    first, second, end = readings["mongo"]
    slow = second - first - OWN_READING
    rest = end - second - OWN_READING - slow
    assert 18 <= rest <= 18 + 2, f"mongo: {rest} commands for 18 untouched tests (a full look costs {slow})"
    assert slow < 18, slow  # the bound above says something


#: An inner conftest that holds each Redis probe sent ahead unread until the MongoDB and Elasticsearch
#: probes of the same restore were answered (at most 5 s, so that a run without overlap still ends),
#: and writes down, per restore, whether they were. The MongoDB and Elasticsearch probes are written on
#: sockets of their adapters: answered, their replies are there to read.
OVERLAP_CONFTEST = '''
import json, os, select
import pytest
from pytest_rollback import engine
from pytest_rollback.adapters import _mongo_probe, redis
from pytest_rollback.adapters._http import Http

PROBES = {"mongo": None, "elasticsearch": None}  # the socket each one's last probe was written on
SEEN = []
FIRST = []
_send, _write, _reply = _mongo_probe.ProbeSocket._send, Http._write, redis.RedisAdapter._ahead_reply


def send(self):
    got = _send(self)
    PROBES["mongo"] = self._sock
    return got


def write(self, method, tail, *args):
    conn = _write(self, method, tail, *args)
    if tail == "/_nodes/stats/http":
        PROBES["elasticsearch"] = conn.sock
    return conn


def answered(sock, patience):
    return sock is not None and bool(select.select([sock], [], [], patience)[0])


def reply(self):
    patience = 5 if all(SEEN) else 0
    SEEN.append(all([answered(sock, patience) for sock in PROBES.values()]))
    PROBES.update(mongo=None, elasticsearch=None)
    return _reply(self)


_mongo_probe.ProbeSocket._send = send
Http._write = write
redis.RedisAdapter._ahead_reply = reply


def rollback(self, adapter, token, label):  # not an after-rollback hook: one of those turns the probes off
    if label and label.startswith("test ") and label not in {f[0] for f in FIRST}:
        FIRST.append((label, adapter.name))
    return _rollback(self, adapter, token, label)


_rollback = engine.Engine._rollback
engine.Engine._rollback = rollback


@pytest.fixture(scope="session", autouse=True)
def _stores(redis_client, mongo_db, es_client):
    yield


def pytest_unconfigure(config):
    with open(os.environ["OVERLAP_FILE"], "w") as f:
        json.dump({"seen": SEEN, "first": [name for _, name in FIRST]}, f)
'''


def test_an_untouched_test_sends_the_three_probes_before_it_reads_a_reply(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The restore of a test sends every store's probe before it reads the first reply: the Redis
    probe's reply, read first, is still unread when the MongoDB and Elasticsearch probes have been
    answered (their replies waited for, not timed)."""
    got = _idle_run(pytester, tmp_path_factory.mktemp("overlap") / "overlap.json", OVERLAP_CONFTEST, "OVERLAP_FILE")
    assert got["first"] == ["redis"] * 25, got["first"]  # each test's restore reads Redis's reply first
    assert len(got["seen"]) >= 25 and all(got["seen"]), got["seen"]


def test_a_hook_that_writes_a_store_restored_later_is_seen_by_its_restore(pytester: pytest.Pytester) -> None:
    """An after-rollback hook of another plugin that writes to a store restored after the one it is called
    for turns the probes sent ahead off: that store's restore sees the write, and the next test starts
    without it (a probe sent before the write would have found the store untouched)."""
    pytester.makeconftest(
        """
import pytest

STORES = {}

@pytest.fixture(scope="session", autouse=True)
def _stores(redis_client, mongo_db, es_client):  # restored in this order
    STORES["mongo"] = mongo_db
    yield

def pytest_rollback_after_rollback(adapter, checkpoint, report):
    if adapter.name == "redis" and report.label and report.label.startswith("test ") and STORES:
        STORES["mongo"].hooked.insert_one({"after": report.label})
"""
    )
    pytester.makepyfile(
        test_hooked="\n".join(
            f"def test_{i}(mongo_db):\n    assert list(mongo_db.hooked.find({{}}, {{'_id': 0}})) == []\n"
            for i in range(6)
        )
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess(*INNER, "-p", "no:randomly", "--rollback-provider=auto")
    result.assert_outcomes(passed=6)


SEEDING_CONFTEST = '''
import pytest


@pytest.fixture(scope="session", autouse=True)
def _seed(redis_client):
    for i in range(50):
        redis_client.set(f"seed:{i}", i)
    yield
'''


def _end_restores(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The after-rollback reports of the session's teardown, as ``label mode``."""
    pytester.makeconftest(
        SEEDING_CONFTEST
        + '''
import json, os
REPORTS = []
ENDING = []


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None:
        ENDING.append(True)


def pytest_rollback_after_rollback(adapter, checkpoint, report):
    if ENDING:
        REPORTS.append(f"{report.label} {report.mode}")


def pytest_unconfigure(config):
    with open(os.environ["REPORTS_FILE"], "w") as f:
        json.dump(REPORTS, f)
'''
    )
    pytester.makepyfile(test_a="def test_a(redis_client):\n    redis_client.set('t', 1)\n")
    reports = pytester.path / "reports.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPORTS_FILE", str(reports))
        result = pytester.runpytest_subprocess(*INNER, *args)
    result.assert_outcomes(passed=1)
    return list(json.loads(reports.read_text()))


def test_a_server_the_plugin_stops_is_not_restored_at_the_end(pytester: pytest.Pytester) -> None:
    """The session fixture's level and the store's start are not restored when the server is thrown
    away: the test's own level is, and nothing after it."""
    done = _end_restores(pytester, "--rollback-provider=local")
    assert done == ["test test_a.py::test_a incremental"], done


def test_an_external_server_is_restored_at_the_end(pytester: pytest.Pytester, server: object) -> None:
    """Pointed at a server it did not start, the plugin puts everything back at the end."""
    url = server.url  # type: ignore[attr-defined]
    done = _end_restores(pytester, f"--rollback-redis-url={url}")
    assert done[:2] == ["test test_a.py::test_a incremental", "session scope incremental"], done
    assert done[-1] == "redis start none", done


def test_a_user_fixture_torn_down_later_sees_the_state_it_expects(pytester: pytest.Pytester) -> None:
    """An outer session fixture's teardown reads the store: the inner session fixture's writes are
    restored before it runs, throwaway server or not."""
    pytester.makeconftest(
        '''
import pytest


@pytest.fixture(scope="session")
def outer(redis_client):
    redis_client.set("outer", 1)
    yield
    assert sorted(redis_client.keys()) == [b"outer"], redis_client.keys()


@pytest.fixture(scope="session")
def inner(outer, redis_client):
    redis_client.set("inner", 1)
    yield
'''
    )
    pytester.makepyfile(test_b="def test_b(inner, redis_client):\n    redis_client.set('t', 1)\n")
    result = pytester.runpytest_subprocess(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=1)
