"""Hypothesis, per example: every example and every run of a state machine starts from the test's starting state.

Inner pytest runs against a real Redis (and SecantusDB), with Hypothesis's own
pytest plugin loaded (its health checks are part of what is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_reports import mongo  # noqa: F401  (SecantusDB, emptied before and after)

from pytest_rollback.api import Service
from pytest_rollback.per_example import EXAMPLE_SECTION_TITLE

pytest.importorskip("hypothesis")

#: Inner runs: no cache files; Hypothesis's plugin stays loaded.
OPTIONS = ("-p", "no:cacheprovider", "-p", "no:randomly")

SEEDED = """
import pytest
import redis as redis_py
from hypothesis import HealthCheck, given, settings, strategies as st

SEEN = []  # (examples run, examples that saw something of another's writes)

@pytest.fixture(scope="module")
def catalogue(redis_client):
    redis_client.set("seed", "1")
    redis_client.hset("stock", mapping={"apple": 3})

@pytest.fixture
def basket(redis_client, catalogue):
    redis_client.set("basket", "empty")   # a function fixture: part of the starting state

def starting_state(r):
    return (sorted(r.keys()), r.get("basket"), r.hgetall("stock"))
"""


@pytest.fixture
def run(pytester: pytest.Pytester, server: Service) -> Callable[..., pytest.RunResult]:
    """An inner pytest against the real Redis, with Hypothesis's plugin."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*OPTIONS, f"--rollback-redis-url={server.url}", *args)

    return run


def test_each_example_starts_from_the_state_after_the_fixtures(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(SEEDED + """
START = []
COUNT = [0]

@settings(max_examples=400, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # basket is the user's
@given(keys=st.lists(st.text("abc", min_size=1, max_size=3), max_size=5), n=st.integers(0, 9))
def test_writes(redis_client, basket, keys, n):
    state = starting_state(redis_client)
    START.append(state)
    COUNT[0] += 1
    for key in keys:
        redis_client.set("k:" + key, n)
    redis_client.set("basket", "full")
    redis_client.hincrby("stock", "apple", -1)
    redis_client.delete("seed")

def test_every_example_saw_the_same_state(redis_client):
    assert COUNT[0] >= 300
    assert len(set(map(repr, START))) == 1, set(map(repr, START))
    assert START[0] == ([b"basket", b"seed", b"stock"], b"empty", {b"apple": b"3"})
    assert sorted(redis_client.keys()) == [b"seed", b"stock"]   # the function fixture's key is gone too
""", conftest="")
    result = run("-q")
    result.assert_outcomes(passed=2)


def test_shrinking_replays_start_from_the_starting_state(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(SEEDED + """
EXAMPLES = []

@settings(max_examples=500, database=None, deadline=None, derandomize=True)  # the same examples every run
@given(n=st.integers(0, 10_000))
def test_property(redis_client, catalogue, n):
    EXAMPLES.append(starting_state(redis_client))
    redis_client.set(f"order:{n}", n)
    redis_client.hincrby("stock", "apple", -1)
    assert n < 1000

def test_every_replay_saw_the_starting_state(redis_client):
    assert len(EXAMPLES) >= 20   # the search, the shrinking and the final replay
    assert set(map(repr, EXAMPLES)) == {repr(([b"seed", b"stock"], None, {b"apple": b"3"}))}
""")
    result = run("-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*test_property(",
        "*n=1000,",
        f"*{EXAMPLE_SECTION_TITLE}*",
        "redis: 1 added, 1 modified",
        "  + *order:1000",
        "  ~ *stock",
    ])
    assert "per_example.py" not in result.stdout.str()  # Hypothesis's explain phase never names the plugin


def test_a_state_machine_test_case_runs_from_the_seeded_state(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(SEEDED + """
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

RUNS = []

@pytest.fixture(scope="module", autouse=True)
def seeded(catalogue):
    pass

class Basket(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.r = redis_py.Redis.from_url(pytest.redis_url)
        RUNS.append(starting_state(self.r))
        self.added = 0

    @rule(item=st.sampled_from(["apple", "pear"]))
    def add(self, item):
        self.r.hincrby("basket:items", item, 1)
        self.added += 1

    @rule()
    def eat(self):
        self.r.delete("seed")

    @invariant()
    def counts(self):
        assert sum(int(v) for v in self.r.hvals("basket:items")) == self.added

    def teardown(self):
        self.r.close()

Basket.TestCase.settings = settings(max_examples=60, stateful_step_count=8, database=None, deadline=None)
TestBasket = Basket.TestCase

def test_runs_started_alike(redis_client):
    assert len(RUNS) >= 50
    assert set(map(repr, RUNS)) == {repr(([b"seed", b"stock"], None, {b"apple": b"3"}))}
""")
    pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session", autouse=True)
def _url(redis_service):
    pytest.redis_url = redis_service.url
""")
    result = run("-q")
    result.assert_outcomes(passed=2)


def test_a_state_machine_run_inside_a_test_starts_from_what_the_test_seeded(
    pytester: pytest.Pytester, run: Any
) -> None:
    pytester.makepyfile(SEEDED + """
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

RUNS = []

def test_machine(redis_client, catalogue):
    redis_client.set("seeded-by-the-test", "yes")

    class Orders(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            RUNS.append(sorted(redis_client.keys()))

        @rule(n=st.integers(0, 5))
        def order(self, n):
            redis_client.set(f"order:{n}", n)
            assert redis_client.dbsize() < 7, "too many orders"

    with pytest.raises(AssertionError, match="too many orders"):
        run_state_machine_as_test(Orders, settings=settings(max_examples=200, database=None, deadline=None))
    assert sorted(redis_client.keys()) == [b"seed", b"seeded-by-the-test", b"stock"]

def test_runs_started_alike():
    assert len(RUNS) >= 10
    assert set(map(repr, RUNS)) == {repr([b"seed", b"seeded-by-the-test", b"stock"])}
""")
    result = run("-q")
    result.assert_outcomes(passed=2)


def test_the_plugin_fixtures_raise_no_health_check_and_a_user_fixture_still_does(
    pytester: pytest.Pytester, run: Any
) -> None:
    pytester.makepyfile(SEEDED + """
@settings(max_examples=20, database=None)
@given(n=st.integers())
def test_uses_rollback(rollback, redis_client, n):
    with rollback.branch():
        redis_client.set("x", n)
    assert redis_client.get("x") is None

@settings(max_examples=5, database=None)
@given(n=st.integers())
def test_uses_basket(rollback, basket, n):
    pass

@settings(max_examples=5, database=None)
@given(n=st.integers())
def test_only_the_user_fixture(basket, n):
    pass

@settings(max_examples=5, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers())
def test_suppressed(rollback, basket, n):
    pass
""")
    result = run("-q")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*FailedHealthCheck: *test_uses_basket* uses a function-scoped fixture 'basket'*",
    ])
    assert "fixture 'rollback'" not in result.stdout.str()


def test_examples_on_redis_and_mongo_together(
    pytester: pytest.Pytester, server: Service, mongo: Service  # noqa: F811
) -> None:
    pytester.makepyfile("""
import pytest
from hypothesis import given, settings, strategies as st

SEEN = []

@pytest.fixture(scope="module")
def seeded(redis_client, mongo_db):
    redis_client.set("seed", 1)
    mongo_db.orders.insert_one({"_id": "o1", "state": "new"})

@settings(max_examples=150, database=None, deadline=None)
@given(n=st.integers(0, 1000), state=st.sampled_from(["paid", "cancelled"]))
def test_writes_both(redis_client, mongo_db, seeded, n, state):
    SEEN.append((sorted(redis_client.keys()), list(mongo_db.orders.find()), mongo_db.list_collection_names()))
    redis_client.set(f"cart:{n}", n)
    mongo_db.orders.update_one({"_id": "o1"}, {"$set": {"state": state}})
    mongo_db.orders.insert_one({"_id": f"o{n + 2}"})
    mongo_db.payments.insert_one({"n": n})

def test_same_start_each_time():
    assert len(SEEN) >= 100
    assert set(map(repr, SEEN)) == {repr(([b"seed"], [{"_id": "o1", "state": "new"}], ["orders"]))}
""")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest(
        *OPTIONS, f"--rollback-redis-url={server.url}", f"--rollback-mongo-url={mongo.url}", "-q"
    )
    result.assert_outcomes(passed=2)
