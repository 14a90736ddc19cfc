"""``rollback.explore``: every distinct state of a small known graph, breadth first, on a real Redis.

Each inner run explores a graph whose states are counted by hand in the test's
comments, and checks the counts, the dedupe by fingerprint, the depth and
budget limits, the shortest violating sequence, and that the store is back at
the test's starting state afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import INNER

from pytest_rollback.explore import ACCEPTED_ACTIONS, ACCEPTED_BUDGET, ACCEPTED_DEPTH, ACCEPTED_KEY, BAD_ARGUMENT

#: Two flags a and b in Redis, each 0 or 1: four states. set_a and set_b in either order
#: reach a=b=1 (a state seen before the second time); clear goes back to the start.
FLAGS = """
import pytest
from pytest_rollback import Action, InvariantViolated

CALLS = []

@pytest.fixture
def flags(redis_client):
    redis_client.mset({"a": 0, "b": 0})
    r = redis_client

    def set_a():
        CALLS.append("set_a")
        r.set("a", 1)

    def set_b():
        CALLS.append("set_b")
        r.set("b", 1)

    def clear():
        CALLS.append("clear")
        r.mset({"a": 0, "b": 0})

    return r, [set_a, set_b, clear]
"""


def test_visits_exactly_the_distinct_states_and_dedupes(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(FLAGS + """
@pytest.mark.parametrize("depth, states, sequences, duplicates, stopped", [
    (1, 3, 3, 1, "depth"),        # start: set_a -> a=1, set_b -> b=1, clear -> the start again
    (2, 4, 9, 6, "depth"),        # from a=1 and from b=1: only a=b=1 is new (reached twice)
    (3, 4, 12, 9, "complete"),    # from a=b=1 nothing is new: the graph is done before depth 3
    (6, 4, 12, 9, "complete"),
])
def test_graph(rollback, flags, depth, states, sequences, duplicates, stopped):
    r, actions = flags
    CALLS.clear()
    result = rollback.explore(actions, [], max_depth=depth)
    assert (result.states, result.sequences, result.duplicates, result.stopped) == (
        states, sequences, duplicates, stopped)
    assert len(CALLS) == result.sequences + result.replays   # each action run is a sequence or a replay
    assert r.mget("a", "b") == [b"0", b"0"]   # back at the test's starting state
    r.set("written-after", 1)                 # and the test's own rollback still works

def test_nothing_left(redis_client):
    assert redis_client.keys() == []
""")
    result = run("-q")
    result.assert_outcomes(passed=5)


def test_respects_the_budget(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(FLAGS + """
def test_budget(rollback, flags):
    r, actions = flags
    result = rollback.explore(actions, max_depth=5, budget=5)
    assert (result.sequences, result.stopped, result.states) == (5, "budget", 4)
    assert r.mget("a", "b") == [b"0", b"0"]
""")
    run("-q").assert_outcomes(passed=1)


#: A counter x from 0: inc adds 1, double doubles (when x > 0). x = 4 is first reached by
#: inc -> inc -> double (three actions); inc x4 and inc -> double -> double come at the same depth or later.
COUNTER = """
import pytest
from pytest_rollback import Action, InvariantViolated

def test_counter(rollback, redis_client):
    r = redis_client
    r.set("x", 0)

    def inc():
        r.incr("x")

    def double():
        r.set("x", int(r.get("x")) * 2)

    def below_four():
        assert int(r.get("x")) < 4, "x reached 4"

    with pytest.raises(InvariantViolated) as found:
        rollback.explore([inc, Action(double, when=lambda: int(r.get("x")) > 0)], [below_four], max_depth=6)
    violation = found.value
    assert violation.sequence == ("inc", "inc", "double")
    assert violation.invariant == "below_four"
    assert [s.action for s in violation.steps] == ["inc", "inc", "double"]
    assert violation.steps[0].changes == {"redis": ["redis: 1 modified", "  ~ 0:x"]}
    assert violation.exploration.stopped == "violation"
    assert r.get("x") == b"0"          # back at the test's starting state
    raise violation                    # shown as the test's failure
"""


def test_reports_the_shortest_violating_sequence(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(COUNTER)
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "pytest-rollback explore: 4 states, 5 sequences, 1 violations, depth 3 (violation found) in *",
        "E *InvariantViolated: invariant below_four violated after 3 actions (a shortest sequence): "
        "inc -> inc -> double",
        "E *   AssertionError: x reached 4",
        "E *   step 1: inc",
        "E *     redis: 1 modified",
        "E *       ~ 0:x",
        "E *   step 3: double",
        "E * replay it as an ordinary test:",
        "E *   # in test_reports_the_shortest_violating_sequence.py::test_counter, *",
        "E *   inc()",
        "E *   inc()",
        "E *   double()",
        "E *   assert below_four() is not False",
    ])


def test_progress_line_at_the_end_and_none_with_q(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile(FLAGS + """
def test_graph(rollback, flags):
    rollback.explore(flags[1], max_depth=4)
""")
    result = run()
    result.assert_outcomes(passed=1)
    lines = [line for line in result.outlines if "pytest-rollback explore:" in line]
    assert lines == [
        lines[0].split(" in ")[0] + " in " + lines[0].split(" in ")[1]
    ] and lines[0].startswith(
        "pytest-rollback explore: 4 states, 12 sequences, 0 violations, depth 3 "
        "(every state within depth 4 explored) in "
    )
    assert "pytest-rollback explore:" not in run("-q").stdout.str()


def test_several_stores_and_an_adapter_added_by_a_hook(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makeconftest("""
from pytest_rollback.adapters.memory import DictAdapter

FEATURES = {"beta": False}

def pytest_rollback_register(registry):
    registry.add_adapter(DictAdapter("features", FEATURES))
""")
    pytester.makepyfile("""
from conftest import FEATURES

def test_both(rollback, redis_client):
    def beta_on():
        FEATURES["beta"] = True

    def beta_off():
        FEATURES["beta"] = False

    def signup():
        redis_client.incr("users")

    result = rollback.explore([beta_on, beta_off, signup], max_depth=2)
    # beta off/on x users 0, 1, 2 (two signups reach 2 within depth 2)
    assert result.states == 5
    assert FEATURES == {"beta": False} and redis_client.get("users") is None
""")
    run("-q").assert_outcomes(passed=1)


def test_a_key_alone_fingerprints_states_when_observe_is_off(pytester: pytest.Pytester, run: Any) -> None:
    pytester.makepyfile("""
from pytest_rollback import Action

def test_key(rollback, redis_client):
    r = redis_client
    r.set("x", 0)

    def inc():
        r.incr("x")
        r.incr("visits")      # noise: every state differs in the stores

    def reset():
        r.set("x", 0)
        r.incr("visits")

    actions = [Action(inc, when=lambda: int(r.get("x")) < 2), reset]
    # start; inc, reset; inc-inc, inc-reset, reset-inc (reset-reset = inc-reset: x=0, visits=2)
    assert rollback.explore(actions, max_depth=2).states == 6
    assert rollback.explore(actions, max_depth=2, observe=False, key=lambda: r.get("x")).states == 3  # x = 0, 1, 2
    assert r.get("visits") is None
""")
    run("-q").assert_outcomes(passed=1)


@pytest.mark.parametrize("call, problem, accepted", [
    ("rollback.explore([])", "no actions were given", ACCEPTED_ACTIONS),
    ("rollback.explore([1])", "1 is not callable", ACCEPTED_ACTIONS),
    ("rollback.explore([f, f])", "two actions are named 'f' (name them with Action(fn, name=...))", ACCEPTED_ACTIONS),
    ("rollback.explore([f], max_depth=0)", "max_depth is 0", ACCEPTED_DEPTH),
    ("rollback.explore([f], budget=-1)", "budget is -1", ACCEPTED_BUDGET),
    ("rollback.explore([f], observe=False)", "observe=False without a key: every state would look the same",
     ACCEPTED_KEY),
])
def test_bad_arguments_give_one_line(
    pytester: pytest.Pytester, run: Any, call: str, problem: str, accepted: str
) -> None:
    pytester.makepyfile(f"""
def test_bad(rollback):
    def f():
        pass
    {call}
""")
    result = run("-q")
    result.assert_outcomes(failed=1)
    line = BAD_ARGUMENT.format(problem=problem, accepted=accepted)
    result.stdout.fnmatch_lines([line.replace("[", "[[]")])
    assert "Traceback" not in result.stdout.str()


def test_ctrl_c_in_the_middle_of_an_exploration_leaves_the_server_as_it_was(
    pytester: pytest.Pytester, server: Any
) -> None:
    """An action interrupted (Ctrl-C) deep in the search: the run ends, and the levels the exploration
    pushed and the test's own are restored on the way out, so the server's own data is back."""
    import redis

    client = redis.Redis.from_url(server.url)
    client.mset({"users:count": 7, "a": "theirs"})
    pytester.makepyfile(FLAGS + """
def test_interrupted(rollback, flags):
    r, actions = flags
    def boom():
        r.set("boom", 1)
        if r.get("a") == b"1" and r.get("b") == b"1":   # a state of depth 2
            raise KeyboardInterrupt
    rollback.explore([*actions, boom], [], max_depth=4)

def test_not_reached():
    pass
""")
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(*INNER, f"--rollback-redis-url={server.url}")  # Ctrl-C ends it
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "test_not_reached" not in result.stdout.str()
    assert client.mget("users:count", "a", "b", "boom") == [b"7", b"theirs", None, None]
    assert sorted(client.keys()) == [b"a", b"users:count"]
    client.delete("users:count", "a")  # this test's own seed (the server fixture wants it empty)
    client.close()
