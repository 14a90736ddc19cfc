"""What the plugin reports: a failing test's changes per store, and the rollback summary at the end.

Inner pytest runs (pytester) against the real servers of ``conftest.py``: Redis,
MongoDB on SecantusDB, Elasticsearch on noida-db; plus in-memory adapters
registered through ``pytest_rollback_register``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest
import redis
from conftest import INNER, clear_mongo

from pytest_rollback.api import Service
from pytest_rollback.reporting import (
    CHANGED,
    CHANGED_NAME,
    CHANGES_FAILED,
    KEPT,
    MORE_NAMES,
    NO_CHANGES_METHOD,
    NOT_KNOWN,
    SECTION_TITLE,
    SUMMARY_FULL,
    SUMMARY_MISSING,
    SUMMARY_TITLE,
)

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
FLUSHALL_REASON = "FLUSHALL ran (keyspace events do not show its effect)"

#: Registers ``mem`` (a DictAdapter over ``MEM``) and logs every restore the
#: plugin makes to ``restores.log`` ("<worker> <store> <mode>"), to check the
#: summary's counts against.
COUNTING_CONFTEST = """
import os
import pathlib

from pytest_rollback.adapters.memory import DictAdapter

MEM = {"seed": 1}
LOG = pathlib.Path(__file__).with_name("restores.log")


def pytest_rollback_register(registry):
    registry.add_adapter(DictAdapter("mem", MEM))


def pytest_rollback_after_rollback(adapter, report):
    with LOG.open("a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', '-')} {adapter.name} {report.mode}\\n")
"""


def section(*lines: str) -> list[str]:
    """The lines of a change section, as ``fnmatch_lines`` patterns (the title is padded with dashes)."""
    return [f"*- {SECTION_TITLE} -*", *lines]


def added(name: str) -> str:
    return CHANGED_NAME.format(sign="+", name=name)


def modified(name: str) -> str:
    return CHANGED_NAME.format(sign="~", name=name)


def removed(name: str) -> str:
    return CHANGED_NAME.format(sign="-", name=name)


def restores_logged(pytester: pytest.Pytester) -> Counter[str]:
    """How many restores per store the conftest's hook saw."""
    return Counter(line.split()[1] for line in (pytester.path / "restores.log").read_text().splitlines())


def summary(result: pytest.RunResult) -> list[str]:
    """The lines of the rollback summary ([] when there is none)."""
    lines = result.stdout.lines
    start = [i for i, line in enumerate(lines) if re.fullmatch(rf"=+ {SUMMARY_TITLE} =+", line)]
    if not start:
        return []
    out = []
    for line in lines[start[0] + 1 :]:
        if line.startswith("="):
            break
        out.append(line)
    return out


@pytest.fixture
def server(real_redis: Service) -> Iterator[Service]:
    """``real_redis``, emptied; the inner run must leave it empty."""
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    yield real_redis
    assert client.dbsize() == 0, "the inner run left keys on the external server"
    client.close()


@pytest.fixture
def run(pytester: pytest.Pytester, server: Service) -> Callable[..., pytest.RunResult]:
    """An inner pytest on the Redis server, with the counting conftest."""
    pytester.makeini(INI)
    pytester.makeconftest(COUNTING_CONFTEST)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", *args)

    return run


# -- what a test changed: Redis ----------------------------------------------------------------------------------

REDIS_TESTS = """
import pytest

@pytest.fixture(scope="module")
def seeded(redis_client):
    redis_client.mset({"seed:1": "a", "seed:2": "b", "seed:3": "c"})

def test_fails(seeded, redis_client):
    redis_client.set("cart:1", "x")
    redis_client.set("seed:1", "changed")
    redis_client.delete("seed:2")
    assert False, "boom"

def test_passes(seeded, redis_client):
    redis_client.set("written:by:a:passing:test", "1")

def test_passes_writing_nothing(seeded, redis_client):
    assert redis_client.get("seed:1") == b"a"

def test_many(seeded, redis_client):
    redis_client.mset({f"k:{i}": i for i in range(25)})
    redis_client.delete("seed:1", "seed:2", "seed:3")
    assert False
"""


def test_a_failing_test_shows_the_keys_it_added_modified_and_removed(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(test_r=REDIS_TESTS)
    result = run()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*_ test_fails _*", "E       AssertionError: boom"])
    result.stdout.fnmatch_lines(
        section(
            CHANGED.format(store="redis", counts="1 added, 1 modified, 1 removed"),
            added("0:cart:1"),
            modified("0:seed:1"),
            removed("0:seed:2"),
        ),
        consecutive=True,
    )
    # a large change set: ten names of each kind, in natural order, then how many more
    result.stdout.fnmatch_lines(
        [
            "*_ test_many _*",
            "*",
            *section(
                CHANGED.format(store="redis", counts="25 added, 3 removed"),
                *(added(f"0:k:{i}") for i in range(10)),
                MORE_NAMES.format(count=15, kind="added"),
                *(removed(f"0:seed:{i}") for i in (1, 2, 3)),
            ),
        ],
        consecutive=False,
    )
    text = result.stdout.str()
    assert text.count(SECTION_TITLE) == 2, "passing tests get no section by default"
    assert "written:by:a:passing:test" not in text


def test_rA_shows_what_a_passing_test_changed(pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]) -> None:
    pytester.makepyfile(test_r=REDIS_TESTS)
    result = run("-rA", "-k", "passes")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*= PASSES =*",
            "*_ test_passes _*",
            *section(
                CHANGED.format(store="redis", counts="1 added"),
                added("0:written:by:a:passing:test"),
            ),
        ],
        consecutive=True,
    )
    # a passing test that changed nothing gets no section, so no block under PASSES
    assert "_ test_passes_writing_nothing _" not in result.stdout.str()
    assert result.stdout.str().count(SECTION_TITLE) == 1
    # -rP alone asks for it too; -rAN takes it back
    assert run("-rP", "-k", "passes").stdout.str().count(SECTION_TITLE) == 1
    assert SECTION_TITLE not in run("-rAN", "-k", "passes").stdout.str()


# -- what a test changed: MongoDB and Elasticsearch -----------------------------------------------------------


@pytest.fixture
def mongo(secantus: Service) -> Iterator[Service]:
    client: Any = pymongo.MongoClient(secantus.url)
    clear_mongo(client)
    yield secantus
    clear_mongo(client)
    client.close()


def test_a_failing_test_shows_the_documents_it_changed_in_mongodb(pytester: pytest.Pytester, mongo: Service) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module")
        def catalogue(mongo_db):
            mongo_db.products.insert_many([{"_id": i, "stock": 10} for i in range(5)])
            mongo_db.carts.insert_one({"_id": "c1"})

        def test_checkout(catalogue, mongo_db):
            mongo_db.products.update_one({"_id": 1}, {"$inc": {"stock": -1}})
            mongo_db.products.delete_one({"_id": 2})
            mongo_db.products.insert_one({"_id": "new"})
            mongo_db.orders.insert_one({"_id": "o1"})
            mongo_db.carts.drop()
            assert False
        """
    )
    url = f"mongodb://{mongo.host}:{mongo.port}/shop?directConnection=true"
    result = pytester.runpytest(*INNER, f"--rollback-mongo-url={url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        section(
            CHANGED.format(store="mongo", counts="3 added, 1 modified, 2 removed"),
            added("shop.orders"),
            added("shop.orders:'o1'"),
            added("shop.products:'new'"),
            modified("shop.products:1"),
            removed("shop.carts"),
            removed("shop.products:2"),
        ),
        consecutive=True,
    )


def test_a_failing_test_shows_the_indices_and_documents_it_changed_in_elasticsearch(
    pytester: pytest.Pytester, cleared_noida: Service
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module")
        def products(es_client):
            es_client.indices.create(index="products", settings={"number_of_replicas": 0})
            es_client.indices.create(index="old", settings={"number_of_replicas": 0})
            for i in range(3):
                es_client.index(index="products", id=str(i), document={"n": i})
            es_client.indices.refresh(index="products")

        def test_reindex(products, es_client):
            es_client.index(index="products", id="1", document={"n": 100})
            es_client.delete(index="products", id="2")
            es_client.index(index="products", id="3", document={"n": 3})
            es_client.indices.create(index="orders", settings={"number_of_replicas": 0})
            es_client.indices.delete(index="old")
            assert False
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={cleared_noida.url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        section(
            CHANGED.format(store="elasticsearch", counts="2 added, 1 modified, 2 removed"),
            added("orders"),
            added("products/3"),
            modified("products/1"),
            removed("old"),
            removed("products/2"),
        ),
        consecutive=True,
    )


# -- what a test changed: the cases where it cannot be said --------------------------------------------------

EDGE_CONFTEST = """
from pytest_rollback.adapters.memory import DictAdapter

MEM = {}
PLAIN = {}


class Plain:
    '''The required methods only: no changes().'''
    name = "plain"

    def checkpoint(self, label):
        return dict(PLAIN)

    def rollback(self, token):
        PLAIN.clear()
        PLAIN.update(token)


class Broken(DictAdapter):
    def changes(self, token):
        raise RuntimeError("the store is unreachable\\nsecond line")


def pytest_rollback_register(registry):
    registry.add_adapter(DictAdapter("mem", MEM))
    registry.add_adapter(Plain())
    registry.add_adapter(Broken("broken", {}))
"""

EDGE_TESTS = """
import pytest
from conftest import MEM

def test_fails():
    MEM["a"] = 1
    assert False

@pytest.mark.rollback(enabled=False)
def test_not_rolled_back():
    assert False

@pytest.mark.rollback("plain")
def test_keeps_mem():
    MEM["kept"] = 1
    assert False

@pytest.fixture
def writes_then_breaks():
    MEM["from a fixture"] = 1
    raise RuntimeError("fixture broke")

def test_setup_error(writes_then_breaks):
    pass
"""


def test_no_checkpoint_no_changes_method_and_a_raising_changes_are_one_line_each(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(EDGE_CONFTEST)
    pytester.makepyfile(test_e=EDGE_TESTS)
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(failed=3, errors=1)
    assert "INTERNALERROR" not in result.stdout.str()
    broken = CHANGES_FAILED.format(store="broken", error="RuntimeError: the store is unreachable")
    plain = NO_CHANGES_METHOD.format(store="plain")
    result.stdout.fnmatch_lines(
        [
            # the setup error comes first (ERRORS before FAILURES): the fixture's write is listed
            "*_ ERROR at setup of test_setup_error _*",
            "E       RuntimeError: fixture broke",
            "*",
            *section(broken, CHANGED.format(store="mem", counts="1 added"), added("from a fixture"), plain),
            "*_ test_fails _*",
            "*",
            *section(broken, CHANGED.format(store="mem", counts="1 added"), added("a"), plain),
            "*_ test_not_rolled_back _*",
            "*",
            "*_ test_keeps_mem _*",
            "*",
            *section(broken, CHANGED.format(store="mem", counts="1 added") + KEPT.format(store="mem"), added("kept"),
                     plain),
        ],
        consecutive=False,
    )
    # the test with rollback switched off has no checkpoint: no section at all
    assert result.stdout.str().count(SECTION_TITLE) == 3
    assert "second line" not in result.stdout.str()

    # --no-rollback: no checkpoints, no sections, no summary
    result = pytester.runpytest(*INNER, "--no-rollback")
    assert SECTION_TITLE not in result.stdout.str()
    assert summary(result) == []


# -- the summary -------------------------------------------------------------------------------------------------

SUMMARY_TESTS = """
import time

import pytest
from conftest import MEM

class Slow(Exception):
    pass

@pytest.fixture(scope="module")
def seeded(redis_client):
    redis_client.mset({f"seed:{i}": i for i in range(20)})

@pytest.mark.parametrize("i", range(4))
def test_writes(seeded, redis_client, i):
    redis_client.set(f"w:{i}", i)

def test_reads(seeded, redis_client):
    assert redis_client.dbsize() == 20

def test_flush(seeded, redis_client):
    redis_client.flushall()

def test_slow_restore(seeded, redis_client):
    MEM["slow"] = True  # the adapter below takes 50 ms to restore this

def test_after_flush(seeded, redis_client):
    assert redis_client.dbsize() == 20
"""

SLOW_MEM = """

class SlowDict(DictAdapter):
    def rollback(self, token):
        if self.data.get("slow"):
            import time
            time.sleep(0.05)
        super().rollback(token)


def pytest_rollback_register(registry):  # noqa: F811
    registry.add_adapter(SlowDict("mem", MEM))
"""


def test_the_summary_lists_each_store_with_provider_restores_median_slowest_and_full_restores(
    pytester: pytest.Pytester, server: Service
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(COUNTING_CONFTEST + SLOW_MEM)
    pytester.makepyfile(test_s=SUMMARY_TESTS)
    result = pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}")
    result.assert_outcomes(passed=8)
    counts = restores_logged(pytester)
    lines = summary(result)
    assert lines, result.stdout.str()
    pytester_lines = pytest.LineMatcher(lines)
    pytester_lines.fnmatch_lines(
        [
            f"mem (adapter): {counts['mem']} restores, median *, slowest * (test_s.py::test_slow_restore)",
            f"redis (external): {counts['redis']} restores, median *, slowest * (*)",
            "  * incremental, * with nothing to undo, * full",
            SUMMARY_FULL.format(count=1, reason=FLUSHALL_REASON, cause="test_s.py::test_flush"),
        ],
        consecutive=True,
    )
    slowest_mem = re.search(r"slowest (\S+) ms", lines[0])
    assert slowest_mem is not None and float(slowest_mem.group(1)) >= 50
    # every test's restore plus the fixtures' levels and the stores' own start levels
    assert counts["redis"] >= 8 + 1 + 1

    # -q keeps the summary; -qq and --no-summary hide it
    assert summary(pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", "-q"))
    assert SUMMARY_TITLE not in pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", "-qq").stdout.str()
    no_summary = pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", "--no-summary")
    assert SUMMARY_TITLE not in no_summary.stdout.str()


def test_a_flushall_makes_the_failure_section_say_the_changes_are_not_known(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        """
        def test_flush(redis_client):
            redis_client.set("a", 1)
            redis_client.flushall()
            assert False
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(section(NOT_KNOWN.format(store="redis")))
    assert "mem:" not in result.stdout.str(), "a store the test did not touch is left out"


def test_no_store_used_means_no_summary_and_no_section(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_plain():\n    assert False\n")
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(failed=1)
    assert SECTION_TITLE not in result.stdout.str()
    assert summary(result) == []


# -- the summary under pytest-xdist ---------------------------------------------------------------------------

XDIST_TESTS = """
import time

import pytest

@pytest.fixture(scope="module")
def seeded(redis_client):
    redis_client.mset({"seed:1": "a", "seed:2": "b"})

@pytest.mark.parametrize("i", range(10))
def test_writes(seeded, redis_client, i):
    redis_client.set(f"w:{i}", i)
    time.sleep(0.02)  # so that both workers get tests

def test_flush(seeded, redis_client):
    redis_client.flushall()
"""


def test_under_xdist_the_controller_prints_one_summary_combining_the_workers(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(COUNTING_CONFTEST)
    pytester.makepyfile(test_x=XDIST_TESTS)
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", "--rollback-provider=local", "-v", timeout=120)
    result.assert_outcomes(passed=11)
    log = (pytester.path / "restores.log").read_text().splitlines()
    per_worker = Counter((line.split()[0], line.split()[1]) for line in log)
    assert {w for w, _ in per_worker} == {"gw0", "gw1"}, "both workers should have restored"
    total = restores_logged(pytester)
    lines = summary(result)
    services = [line for line in lines if line.startswith("pytest-rollback: ")]
    assert sorted(line.rsplit(" ", 1)[-1] for line in services) == ["(gw0)", "(gw1)"], "-v: each worker's server"
    lines = [line for line in lines if line not in services]
    assert [line for line in lines if not line.startswith(" ")] == [
        line for line in lines if re.match(r"(mem|redis) \(", line)
    ], "one line per store, not one per worker"
    pytest.LineMatcher(lines).fnmatch_lines(
        [
            f"mem (adapter): {total['mem']} restores, median *, slowest * (* on gw?)",
            f"  gw0: {per_worker['gw0', 'mem']} restores, median *, slowest * (*)",
            f"  gw1: {per_worker['gw1', 'mem']} restores, median *, slowest * (*)",
            f"redis (local): {total['redis']} restores, median *, slowest * (* on gw?)",
            "  * incremental, *1 full",  # (the end-of-run levels of the thrown-away servers are not restored)
            SUMMARY_FULL.format(count=1, reason=FLUSHALL_REASON, cause="test_x.py::test_flush on gw?"),
            f"  gw0: {per_worker['gw0', 'redis']} restores, median *, slowest * (*)",
            f"  gw1: {per_worker['gw1', 'redis']} restores, median *, slowest * (*)",
        ],
        consecutive=True,
    )


def test_under_xdist_a_crashed_worker_is_named_and_the_others_still_count(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(COUNTING_CONFTEST)  # the in-memory store only: a crashed worker leaves no server behind
    pytester.makepyfile(
        test_c="""
        import os
        import pathlib

        from conftest import MEM

        def test_crashes_once():
            MEM["x"] = 1
            flag = pathlib.Path(__file__).with_name("crashed")
            if not flag.exists():
                flag.touch()
                os._exit(1)

        def test_writes():
            MEM["y"] = 1
        """
    )
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", timeout=120)
    crashed = re.search(r"worker '(gw\d+)' crashed", result.stdout.str())
    assert crashed is not None, result.stdout.str()
    pytest.LineMatcher(summary(result)).fnmatch_lines(
        [
            "mem (adapter): * restores, median *, slowest * (* on gw?)",
            SUMMARY_MISSING.format(workers=crashed.group(1)),
        ],
        consecutive=True,
    )



def test_under_xdist_the_service_lines_reach_the_summary_once_per_store(pytester: pytest.Pytester) -> None:
    """Workers have no terminal: their servers are named in the controller's summary, one line per store."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x="""
        import time
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_both(redis_client, mongo_db, i):
            time.sleep(0.05)
            redis_client.set("k", i)
            mongo_db.things.insert_one({"i": i})
        """
    )
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", "--rollback-provider=embedded",
                                           "--rollback-mongo-embedded=secantusdb", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=6)
    lines = summary(result)
    services = [line for line in lines if line.startswith("pytest-rollback: ")]
    assert len(services) == 2, lines
    redis_line = next(line for line in services if " redis via " in line)
    mongo_line = next(line for line in services if " mongo via " in line)
    assert redis_line.endswith(" (gw0; 1 more worker(s) started one of their own)"), redis_line
    assert mongo_line.endswith(" (gw0, gw1)"), "one SecantusDB shared by both workers"
    assert "0.00 ms" not in result.stdout.str()


def test_the_summary_names_the_users_fixtures_not_internal_ones(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def _internal_setup(redis_client):
            redis_client.set("internal", 1)

        @pytest.fixture(scope="session")
        def catalogue(redis_client):
            redis_client.set("catalogue", 1)

        LABELS = []

        def pytest_rollback_after_rollback(adapter, checkpoint, report):
            LABELS.append(report.label)

        def pytest_sessionfinish():
            import pathlib
            pathlib.Path("labels.txt").write_text("\\n".join(map(str, LABELS)))
        """
    )
    pytester.makepyfile("def test_a(catalogue): pass")
    # an external server: every level is restored at the end (a thrown-away one's last levels are not)
    result = pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    labels = (pytester.path / "labels.txt").read_text().splitlines()
    assert "session fixture catalogue" in labels, labels
    assert "session scope" in labels and not any("_internal_setup" in label for label in labels), labels
    assert "_internal_setup" not in result.stdout.str()
