"""``@pytest.mark.branch_from`` and ``rollback.branch(subtest=True)``, in inner pytest runs on real servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import INNER, clear_elasticsearch, clear_mongo, workers_log

from pytest_rollback.api import Service
from pytest_rollback.branching import (
    AMBIGUOUS_PARENT,
    BAD_BRANCH,
    CYCLE,
    FUNCTION_GIVEN,
    NO_PARENT_NAMED,
    SKIP_ERRORED,
    SKIP_FAILED,
    SKIP_NOT_SELECTED,
    SKIP_NOT_SELECTED_LF,
    SKIP_NOT_SELECTED_SW,
    SKIP_SKIPPED,
    UNKNOWN_PARENT,
)
from pytest_rollback.fixtures import NO_SUBTESTS

#: Every inner test records its name in ``order.log``: the run order, checked against the plan.
CONFTEST = """
import pathlib

import pytest

LOG = pathlib.Path(__file__).with_name("order.log")

@pytest.fixture(autouse=True)
def _record(request):
    with LOG.open("a") as f:
        f.write(request.node.nodeid.split("::", 1)[1] + "\\n")
"""

#: The issue's example, written children-first, so the plugin must reorder it.
SHOP = """
import pytest

@pytest.mark.branch_from("test_pay")
@pytest.mark.parametrize("action", ["ship", "refund", "dispute"])
def test_after_pay(redis_client, action):
    assert redis_client.hgetall("order:1") == {b"status": b"paid", b"total": b"30"}
    assert redis_client.get("action") is None          # siblings never see each other
    redis_client.set("action", action)

def test_unrelated_before(redis_client):
    assert redis_client.keys() == [b"catalogue"]

@pytest.mark.branch_from("test_order")
def test_pay(redis_client):
    assert redis_client.hgetall("order:1") == {b"status": b"new", b"total": b"30"}
    redis_client.hset("order:1", "status", "paid")

@pytest.fixture(scope="module", autouse=True)
def catalogue(redis_client):
    redis_client.set("catalogue", "3 items")

def test_order(redis_client):
    redis_client.hset("order:1", mapping={"status": "new", "total": 30})

@pytest.mark.branch_from("test_order")
def test_cancel(redis_client):
    assert redis_client.hget("order:1", "status") == b"new"   # a sibling branch: never sees payment
    redis_client.hset("order:1", "status", "cancelled")

def test_unrelated_after(redis_client):
    assert redis_client.keys() == [b"catalogue"]
"""


def _order(pytester: pytest.Pytester) -> list[str]:
    return (pytester.path / "order.log").read_text().splitlines()


def test_parents_run_first_children_start_from_their_end_state_and_the_rest_is_untouched(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_shop=SHOP)
    result = run("--strict-markers", "-v")
    result.assert_outcomes(passed=8)
    assert _order(pytester) == [
        "test_unrelated_before",
        "test_order",
        "test_pay",
        "test_after_pay[ship]",
        "test_after_pay[refund]",
        "test_after_pay[dispute]",
        "test_cancel",
        "test_unrelated_after",
    ]


def test_verify_holds_for_every_restore_of_a_tree(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_shop=SHOP)
    run("--rollback-verify").assert_outcomes(passed=8)


def test_without_rollback_the_tree_still_runs_in_order(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.branch_from("test_a")
        def test_b():
            pass

        def test_a():
            pass
        """
    )
    run("--no-rollback").assert_outcomes(passed=2)
    assert _order(pytester) == ["test_a", "test_b"]


def test_a_failed_errored_or_skipped_parent_skips_its_subtree_with_the_parent_named(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_fail="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("no")

        def test_fails(redis_client):
            redis_client.set("half", "done")
            assert False

        @pytest.mark.branch_from("test_fails")
        def test_child_of_failed():
            pass

        @pytest.mark.branch_from("test_child_of_failed")
        def test_grandchild():
            pass

        def test_errors(broken):
            pass

        @pytest.mark.branch_from("test_errors")
        def test_child_of_errored():
            pass

        def test_skips():
            pytest.skip("not today")

        @pytest.mark.branch_from("test_skips")
        def test_child_of_skipped():
            pass

        @pytest.mark.xfail(reason="known bug")
        def test_xfails():
            assert False

        @pytest.mark.branch_from("test_xfails")
        def test_child_of_xfailed():
            pass

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = run("-rs")
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=6, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED [[]1[]] test_fail.py:*: {SKIP_FAILED.format(parent='test_fail.py::test_fails')}",
            f"SKIPPED [[]1[]] test_fail.py:*: {SKIP_SKIPPED.format(parent='test_fail.py::test_child_of_failed')}",
            f"SKIPPED [[]1[]] test_fail.py:*: {SKIP_ERRORED.format(parent='test_fail.py::test_errors')}",
            f"SKIPPED [[]1[]] test_fail.py:*: {SKIP_SKIPPED.format(parent='test_fail.py::test_skips')}",
            f"SKIPPED [[]1[]] test_fail.py:*: {SKIP_FAILED.format(parent='test_fail.py::test_xfails')}",
        ]
    )


def test_a_parent_whose_teardown_fails_counts_as_errored(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_td="""
        import pytest

        @pytest.fixture
        def breaks_at_teardown():
            yield
            raise RuntimeError("teardown")

        def test_parent(redis_client, breaks_at_teardown):
            redis_client.set("k", "v")

        @pytest.mark.branch_from("test_parent")
        def test_child():
            pass

        def test_after(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = run("-rs")
    result.assert_outcomes(passed=2, errors=1, skipped=1)
    result.stdout.fnmatch_lines([f"*{SKIP_ERRORED.format(parent='test_td.py::test_parent')}"])


@pytest.mark.parametrize(
    "selection",
    [("-k", "not test_order"), ("--deselect", "test_shop.py::test_order"), ("test_shop.py::test_pay",)],
    ids=["-k", "--deselect", "node-id-argument"],
)
def test_a_parent_not_selected_skips_the_child_saying_so(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], selection: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_shop=SHOP)
    result = run("-rs", *selection)
    result.stdout.fnmatch_lines([f"*{SKIP_NOT_SELECTED.format(parent='test_shop.py::test_order')}"])
    assert "failed" not in result.stdout.lines[-1] and "error" not in result.stdout.lines[-1]


@pytest.mark.parametrize(("option", "reason"), [("--lf", SKIP_NOT_SELECTED_LF), ("--sw", SKIP_NOT_SELECTED_SW)])
def test_a_rerun_of_a_failed_child_says_how_to_run_its_parent_too(
    pytester: pytest.Pytester, server: Service, monkeypatch: pytest.MonkeyPatch, option: str, reason: str
) -> None:
    pytester.makepyfile(
        test_rerun="""
        import os
        import pytest

        def test_parent(redis_client):
            redis_client.set("parent", "done")

        @pytest.mark.branch_from("test_parent")
        def test_child(redis_client):
            assert redis_client.get("parent") == b"done"
            assert os.environ.get("CHILD_PASSES")
        """
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    # the cache provider on (it keeps what failed), and a run that records the failure
    args = ("-p", "no:hypothesispytest", f"--rollback-redis-url={server.url}")
    pytester.runpytest(*args, option).assert_outcomes(passed=1, failed=1)
    result = pytester.runpytest(*args, option, "-rs")
    result.assert_outcomes(skipped=1)
    parent, child = "test_rerun.py::test_parent", "test_rerun.py::test_child"
    result.stdout.fnmatch_lines([f"*{reason.format(parent=parent, child=child)}"])
    # what the reason proposes works
    monkeypatch.setenv("CHILD_PASSES", "1")
    pytester.runpytest(*args, parent, child).assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("marker", "problem"),
    [
        ('"test_nowhere"', UNKNOWN_PARENT.format(name="test_nowhere", where="test_bad.py")),
        (
            '"test_bad.py::test_nowhere"',
            UNKNOWN_PARENT.format(name="test_bad.py::test_nowhere", where="the collected tests"),
        ),
        ('"test_param"', AMBIGUOUS_PARENT.format(name="test_param", count=2, some="test_param[1], test_param[2]")),
        ("", NO_PARENT_NAMED),
        ("3", "3 is not a test name or node id"),
        ('"test_child"', "a test cannot branch from itself"),
    ],
    ids=["unknown-name", "unknown-node-id", "ambiguous", "no-argument", "not-a-string", "itself"],
)
def test_a_bad_parent_errors_that_test_with_one_line(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], marker: str, problem: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n):
            pass

        @pytest.mark.branch_from({marker})
        def test_child():
            pass

        def test_other():
            pass
        """
    )
    result = run()
    result.assert_outcomes(passed=3, errors=1)
    line = BAD_BRANCH.format(nodeid="test_bad.py::test_child", problem=problem)
    result.stdout.fnmatch_lines([line.replace("[", "[[]")])
    assert sum(text == line for text in result.stdout.lines) == 1, "one line, no traceback"
    assert "Traceback" not in result.stdout.str()


def test_a_cycle_errors_every_test_on_it_and_skips_what_hangs_off_it(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_cycle="""
        import pytest

        @pytest.mark.branch_from("test_c")
        def test_a():
            pass

        @pytest.mark.branch_from("test_a")
        def test_b():
            pass

        @pytest.mark.branch_from("test_b")
        def test_c():
            pass

        @pytest.mark.branch_from("test_c")
        def test_d():
            pass
        """
    )
    result = run("-rs")
    result.assert_outcomes(errors=3, skipped=1)
    path = "test_cycle.py::test_a -> test_cycle.py::test_c -> test_cycle.py::test_b -> test_cycle.py::test_a"
    result.stdout.fnmatch_lines([CYCLE.format(nodeid=f"test_cycle.py::test_{t}", path=path) for t in "abc"])
    result.stdout.fnmatch_lines([f"*{SKIP_ERRORED.format(parent='test_cycle.py::test_c')}"])


def test_parents_named_by_node_id_parametrized_case_class_method_and_other_module(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_base="""
        import pytest

        @pytest.mark.parametrize("plan", ["basic", "pro"])
        def test_signup(redis_client, plan):
            redis_client.set("plan", plan)

        @pytest.mark.branch_from("test_signup[pro]")
        def test_pro_feature(redis_client):
            assert redis_client.get("plan") == b"pro"

        class TestAccount:
            def test_open(self, redis_client):
                redis_client.set("account", "open")

            @pytest.mark.branch_from("test_open")
            def test_close(self, redis_client):
                assert redis_client.get("account") == b"open"

        @pytest.mark.branch_from("TestAccount::test_open")
        def test_statement(redis_client):
            assert redis_client.get("account") == b"open"

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """,
        test_other="""
        import pytest

        @pytest.mark.branch_from("test_base.py::test_signup[basic]")
        def test_upgrade(redis_client):
            assert redis_client.get("plan") == b"basic"

        def test_clean_here(redis_client):
            assert redis_client.keys() == []
        """,
    )
    result = run()
    result.assert_outcomes(passed=9)
    order = _order(pytester)
    assert order.index("test_upgrade") == order.index("test_signup[basic]") + 1
    assert order.index("test_pro_feature") == order.index("test_signup[pro]") + 1
    assert order.index("TestAccount::test_close") == order.index("TestAccount::test_open") + 1
    assert order.index("test_statement") == order.index("TestAccount::test_open") + 2


def test_a_branch_whose_parent_state_ended_with_its_module_fixture_is_skipped(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    """A parent's end state includes its module's fixtures; a child in another module cannot keep them."""
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture(scope="module", autouse=True)
        def module_data(redis_client):
            redis_client.set("module", "a")

        def test_parent(redis_client):
            redis_client.set("k", "v")
        """,
        test_b="""
        import pytest

        @pytest.mark.branch_from("test_a.py::test_parent")
        def test_child(redis_client):
            pass

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """,
    )
    result = run("-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*branch_from: the end state of parent test_a.py::test_parent is no longer held*"])


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest(*INNER, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.branch_from(test): start this test from the state *"])


#: Every inner test records which xdist worker ran it in ``workers.log`` (read by ``workers_log``).
WORKERS_CONFTEST = """
import os
import pathlib

import pytest

LOG = pathlib.Path(__file__).with_name("workers.log")

@pytest.fixture(autouse=True)
def _record(request):
    with LOG.open("a") as f:
        f.write(f"{os.environ['PYTEST_XDIST_WORKER']} {request.node.nodeid}\\n")
"""


@pytest.mark.parametrize("dist", ["load", "loadscope", "loadfile", "loadgroup"])
def test_under_xdist_each_tree_runs_on_one_worker(pytester: pytest.Pytester, dist: str) -> None:
    """Trees whose children are in another module and another class stay whole under each --dist mode."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(WORKERS_CONFTEST)
    def roots(file: int) -> str:
        return "import pytest\n" + "\n".join(
            f"""
def test_root_{t}(redis_client):
    redis_client.set("root", {t})

@pytest.mark.parametrize("i", range(3))
def test_plain_{t}(redis_client, i):
    assert redis_client.keys() == []
"""
            for t in range(6)
            if t % 3 == file
        )

    leaves = "\n".join(
        f"""
@pytest.mark.branch_from("test_roots{t % 3}.py::test_root_{t}")
@pytest.mark.parametrize("i", range(3))
def test_leaf_{t}(redis_client, i):
    assert redis_client.get("root") == b"{t}"
    redis_client.set("leaf", i)

class TestLeaves{t}:
    @pytest.mark.branch_from("test_roots{t % 3}.py::test_root_{t}")
    def test_in_class_{t}(self, redis_client):
        assert redis_client.get("root") == b"{t}"
"""
        for t in range(6)
    )
    pytester.makepyfile(
        test_roots0=roots(0), test_roots1=roots(1), test_roots2=roots(2), test_leaves="import pytest\n" + leaves
    )
    result = pytester.runpytest_subprocess(*INNER, "-n", "3", f"--dist={dist}", "-rs", timeout=120)
    result.assert_outcomes(passed=6 * 8)
    ran = workers_log(pytester)
    assert len(ran) > 1, "the run should have used several workers"
    for t in range(6):
        on = {w for w, lines in ran.items() for (nodeid,) in lines if f"_{t}" in nodeid and "plain" not in nodeid}
        assert len(on) == 1, f"tree {t} ran on {on}"


def test_under_loadgroup_groups_stay_whole_and_a_tree_joins_its_roots_group(pytester: pytest.Pytester) -> None:
    """pytest-xdist's own loadgroup splits groups on pytest 9.2; the plugin's scheduling keeps them whole."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(WORKERS_CONFTEST)
    pytester.makepyfile(
        test_groups="""
        import time

        import pytest

        @pytest.mark.xdist_group("db")
        def test_root(redis_client):
            redis_client.set("root", "db")

        @pytest.mark.xdist_group(name="db")
        @pytest.mark.parametrize("i", range(6))
        def test_grouped(redis_client, i):
            time.sleep(0.01)

        @pytest.mark.branch_from("test_root")
        @pytest.mark.parametrize("i", range(4))
        def test_child(redis_client, i):
            assert redis_client.get("root") == b"db"

        @pytest.mark.parametrize("i", range(12))
        def test_free(redis_client, i):
            time.sleep(0.01)
        """
    )
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", "--dist=loadgroup", "-rs", timeout=120)
    result.assert_outcomes(passed=1 + 6 + 4 + 12)
    ran = workers_log(pytester)
    assert len(ran) == 2, "the run should have used both workers"
    on = {w for w, lines in ran.items() for (nodeid,) in lines if "free" not in nodeid}
    assert len(on) == 1, f"the group and the tree that joins it ran on {on}"


def test_in_test_branches_as_subtests(pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]) -> None:
    pytester.makepyfile(
        test_sub="""
        def test_actions(redis_client, rollback):
            redis_client.set("order", "paid")
            for action in ["ship", "refund", "dispute"]:
                with rollback.branch(action, subtest=True):
                    assert redis_client.get("action") is None
                    redis_client.set("action", action)
                    assert action != "refund", "refund is broken"
            assert redis_client.get("order") == b"paid"
            assert redis_client.get("action") is None

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = run("-v")
    result.stdout.fnmatch_lines(
        [
            "test_sub.py::test_actions SUBPASSED[[]ship[]] *",
            "test_sub.py::test_actions SUBFAILED[[]refund[]] *",
            "test_sub.py::test_actions SUBPASSED[[]dispute[]] *",
        ]
    )
    result.stdout.fnmatch_lines(["*SUBFAILED[[]refund[]] test_sub.py::test_actions - AssertionError: refund is broken"])
    result.assert_outcomes(failed=2, passed=1)  # the subtest, and its test ("contains 1 failed subtest")


def test_subtest_branches_without_the_subtests_fixture_say_what_to_do(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_sub="""
        def test_actions(rollback):
            with rollback.branch("ship", subtest=True):
                pass
        """
    )
    result = run("-p", "no:subtests")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([NO_SUBTESTS])


def test_branches_cover_every_store(
    pytester: pytest.Pytester, server: Service, secantus: Service, noida: Service
) -> None:
    import pymongo
    from elasticsearch import Elasticsearch

    mongo, es = pymongo.MongoClient(secantus.url), Elasticsearch(noida.url)
    clear_mongo(mongo)
    clear_elasticsearch(es)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(
        """
        from pytest_rollback.adapters.memory import DictAdapter

        MEM = {}

        def pytest_rollback_register(registry):
            registry.add_adapter(DictAdapter("mem", MEM))
        """
    )
    pytester.makepyfile(
        test_all="""
        import pytest
        from conftest import MEM

        def test_order(redis_client, mongo_db, es_client):
            redis_client.set("order", "new")
            mongo_db.orders.insert_one({"_id": 1, "status": "new"})
            es_client.index(index="orders", id="1", document={"status": "new"}, refresh=True)
            MEM["order"] = "new"

        @pytest.mark.branch_from("test_order")
        @pytest.mark.parametrize("status", ["paid", "cancelled"])
        def test_next(redis_client, mongo_db, es_client, status):
            assert redis_client.get("order") == b"new"
            assert mongo_db.orders.find_one({"_id": 1})["status"] == "new"
            assert es_client.get(index="orders", id="1")["_source"]["status"] == "new"
            assert MEM == {"order": "new"}
            redis_client.set("order", status)
            mongo_db.orders.update_one({"_id": 1}, {"$set": {"status": status}})
            es_client.index(index="orders", id="1", document={"status": status}, refresh=True)
            MEM["order"] = status

        def test_clean(redis_client, mongo_db, es_client):
            assert redis_client.keys() == []
            assert mongo_db.list_collection_names() == []
            assert not es_client.indices.exists(index="orders")
            assert MEM == {}
        """
    )
    result = pytester.runpytest(
        *INNER,
        f"--rollback-redis-url={server.url}",
        f"--rollback-mongo-url={secantus.url}",
        f"--rollback-elasticsearch-url={noida.url}",
    )
    result.assert_outcomes(passed=4)
    mongo.close()
    es.close()


def test_a_parents_state_is_released_when_its_last_child_is_skipped_by_a_marker(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    """A child skipped before any fixture runs (``skip``, ``skipif``) still ends its parent's hold."""
    pytester.makepyfile(
        test_skip="""
        import pytest

        def test_parent(redis_client):
            redis_client.set("parent", "end")

        @pytest.mark.branch_from("test_parent")
        def test_child(redis_client):
            assert redis_client.get("parent") == b"end"

        @pytest.mark.skip(reason="later")
        @pytest.mark.branch_from("test_parent")
        def test_skipped_child():
            pass

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """
    )
    run().assert_outcomes(passed=3, skipped=1)


@pytest.mark.parametrize("parent_body", ["redis_client.set('x', 1)", "pass"], ids=["raises-inside", "takes-no-arg"])
def test_a_parent_given_as_a_function_is_one_line_naming_it(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], parent_body: str
) -> None:
    """pytest applies a mark called with a lone function to it: the module's import runs the parent."""
    args = "redis_client" if "redis_client" in parent_body else ""
    pytester.makepyfile(
        test_fn=f"""
        import pytest

        def test_parent({args}):
            {parent_body}

        @pytest.mark.branch_from(test_parent)
        def test_child():
            pass
        """,
        test_fine="def test_fine(): pass",
    )
    result = run("--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=1)
    line = FUNCTION_GIVEN.format(where="test_fn.py", name="test_parent")
    assert sum(text == line for text in result.stdout.lines) == 1, result.stdout.str()
    assert "Traceback" not in result.stdout.str() and "AttributeError" not in result.stdout.str()

