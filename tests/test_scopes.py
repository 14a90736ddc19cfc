"""Scope guarantees, seen from a user's sub-pytest run against a real Redis.

Each test writes a small project with ``pytester`` and runs it with
``--rollback-redis-url`` pointed at the session's ``real_redis``; inner tests
assert what they must see, the outer test checks outcomes and that the server is
left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from pytest_rollback.api import Service

#: Data that exists on the server before the inner run; it must be there after it
#: and must not be visible in database 0, where the inner tests look.
OUTSIDE_DB = 7
#: Every inner run: no cache files, and no hypothesis plugin (re-importing it costs ~1 s).
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def _server_state(service: Service) -> dict[tuple[int, bytes], object]:
    """Every key of every database with its type and value (DUMP for non-strings)."""
    state: dict[tuple[int, bytes], object] = {}
    with redis.Redis(host=service.host, port=service.port) as client:
        dbs = [int(name[2:]) for name in client.info("keyspace")]
    for db in dbs:
        with redis.Redis(host=service.host, port=service.port, db=db) as c:
            for key in c.scan_iter():
                kind = c.type(key)
                state[(db, key)] = (kind, c.get(key) if kind == b"string" else c.dump(key))
    return state


@pytest.fixture
def server(real_redis: Service) -> Iterator[Service]:
    """``real_redis`` with database 0 empty and a key in another database; unchanged after the test.

    The server's own keyspace-notification setting (which the plugin widens while
    it runs) must be put back too.
    """
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    client.config_set("notify-keyspace-events", "Ex")
    flags = client.config_get("notify-keyspace-events")
    redis.Redis(host=real_redis.host, port=real_redis.port, db=OUTSIDE_DB).set("outside:keep", "me")
    before = _server_state(real_redis)
    yield real_redis
    assert _server_state(real_redis) == before, "the inner run left the external server changed"
    assert client.config_get("notify-keyspace-events") == flags
    client.config_set("notify-keyspace-events", "")
    client.close()


def test_every_scope_keeps_its_data_for_its_tests_and_drops_it_after(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def session_seed(redis_client):
            redis_client.set("session", "s")
        """
    )
    pytester.makepyfile(
        test_a_module="""
        import pytest

        @pytest.fixture(scope="module")
        def mod_a(redis_client):
            redis_client.set("mod_a", "a")
            redis_client.sadd("mod_a:set", 1, 2)

        @pytest.fixture
        def func_seed(redis_client):
            redis_client.set("func", "f")

        def keys(client):
            return sorted(client.keys())

        def test_a1(session_seed, mod_a, redis_client):
            assert keys(redis_client) == [b"mod_a", b"mod_a:set", b"session"]
            redis_client.set("written", "a1")
            redis_client.delete("mod_a")
            redis_client.sadd("mod_a:set", 3)
            redis_client.set("session", "changed")

        def test_a2(mod_a, redis_client):
            assert keys(redis_client) == [b"mod_a", b"mod_a:set", b"session"]
            assert redis_client.get("mod_a") == b"a"
            assert redis_client.smembers("mod_a:set") == {b"1", b"2"}
            assert redis_client.get("session") == b"s"

        def test_a3_function_fixture(mod_a, func_seed, redis_client):
            assert redis_client.get("func") == b"f"

        def test_a4_function_fixture_gone(mod_a, redis_client):
            assert redis_client.get("func") is None

        class TestClassScope:
            @pytest.fixture(scope="class")
            @classmethod
            def cls_seed(cls, redis_client):
                redis_client.hset("cls", "k", "v")

            def test_c1(self, mod_a, cls_seed, redis_client):
                assert keys(redis_client) == [b"cls", b"mod_a", b"mod_a:set", b"session"]
                redis_client.hset("cls", "k2", "v2")
                redis_client.rpush("c1", "x")

            def test_c2(self, mod_a, cls_seed, redis_client):
                assert redis_client.hgetall("cls") == {b"k": b"v"}
                assert redis_client.exists("c1") == 0

        def test_a5_after_class(mod_a, redis_client):
            assert keys(redis_client) == [b"mod_a", b"mod_a:set", b"session"]
        """,
        test_c_after="""
        def test_other_module_sees_only_session_data(session_seed, redis_client):
            assert sorted(redis_client.keys()) == [b"session"]
            assert redis_client.get("session") == b"s"
        """,
    )
    pkg = pytester.mkpydir("test_b_pkg")
    (pkg / "conftest.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture(scope='package')\n"
        "def pkg_seed(redis_client):\n"
        "    redis_client.set('pkg', 'p')\n"
    )
    (pkg / "test_p1.py").write_text(
        "def test_p1(session_seed, pkg_seed, redis_client):\n"
        "    assert sorted(redis_client.keys()) == [b'pkg', b'session']\n"
        "    redis_client.set('p1', 'x')\n"
        "    redis_client.set('pkg', 'overwritten')\n"
    )
    (pkg / "test_p2.py").write_text(
        "def test_p2(pkg_seed, redis_client):\n"
        "    assert sorted(redis_client.keys()) == [b'pkg', b'session']\n"
        "    assert redis_client.get('pkg') == b'p'\n"
    )
    result = run("-v")
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(
        [
            "*test_a_module.py::test_a1 PASSED*",
            "*test_a_module.py::TestClassScope::test_c2 PASSED*",
            "*test_a_module.py::test_a5_after_class PASSED*",
            "*test_b_pkg/test_p2.py::test_p2 PASSED*",
            "*test_c_after.py::test_other_module_sees_only_session_data PASSED*",
        ]
    )


def test_session_fixture_first_requested_inside_a_module(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    """A session fixture set up above a module level is torn down with it and rebuilt later."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def lazy(redis_client):
            redis_client.set("lazy", "L")
            redis_client.rpush("lazy:list", "a", "b")
        """
    )
    pytester.makepyfile(
        test_d_lazy="""
        import pytest

        @pytest.fixture(scope="module")
        def mod_d(redis_client):
            redis_client.set("mod_d", "d")

        def test_d1(mod_d, redis_client):
            assert sorted(redis_client.keys()) == [b"mod_d"]

        def test_d2(mod_d, lazy, redis_client):
            assert sorted(redis_client.keys()) == [b"lazy", b"lazy:list", b"mod_d"]
            redis_client.delete("lazy")

        def test_d3(mod_d, lazy, redis_client):
            assert sorted(redis_client.keys()) == [b"lazy", b"lazy:list", b"mod_d"]
        """,
        test_e_later="""
        def test_e1(lazy, redis_client):
            assert sorted(redis_client.keys()) == [b"lazy", b"lazy:list"]
            assert redis_client.lrange("lazy:list", 0, -1) == [b"a", b"b"]
            redis_client.set("e1", "x")

        def test_e2(lazy, redis_client):
            assert sorted(redis_client.keys()) == [b"lazy", b"lazy:list"]
        """,
        test_f_last="""
        def test_f1(lazy, redis_client):
            assert sorted(redis_client.keys()) == [b"lazy", b"lazy:list"]
        """,
    )
    result = run("-v")
    result.assert_outcomes(passed=6)


def test_unittest_testcase_class_and_method_levels(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    pytester.makepyfile(
        test_unit=f"""
        import unittest

        import redis

        URL = {server.url!r}

        class TestWithRedis(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.r = redis.Redis.from_url(URL)
                cls.r.set("class:data", "c")

            @classmethod
            def tearDownClass(cls):
                cls.r.close()

            def setUp(self):
                self.assertIsNone(self.r.get("per:test"))
                self.r.set("per:test", "set up")

            def test_1(self):
                self.assertEqual(sorted(self.r.keys()), [b"class:data", b"per:test"])
                self.r.set("written", "1")
                self.r.set("class:data", "overwritten")

            def test_2(self):
                self.assertEqual(sorted(self.r.keys()), [b"class:data", b"per:test"])
                self.assertEqual(self.r.get("class:data"), b"c")
                self.r.set("written", "2")

        def test_after_the_class():
            r = redis.Redis.from_url(URL)
            assert r.keys() == []
            r.close()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=3)


def test_tests_without_plugin_fixtures_are_rolled_back_when_a_url_is_configured(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    pytester.makepyfile(
        test_plain=f"""
        import redis

        URL = {server.url!r}

        def test_writes():
            r = redis.Redis.from_url(URL)
            r.set("mine", "1")
            r.hset("h", "f", "v")
            r.close()

        def test_sees_nothing():
            r = redis.Redis.from_url(URL)
            assert r.keys() == []
            r.close()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=2)


def test_the_test_level_comes_before_function_fixtures_and_again_on_a_rerun(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    """The test's level is pushed when its first function-scoped fixture is set up (after the wider
    scopes' fixtures, whose writes stay for the module), or after the set-up of a test without one, and
    popped after its fixtures end; a test run twice by a plugin (a rerun of the same item) is rolled
    back each time."""
    pytester.makeconftest(
        """
        from _pytest.runner import runtestprotocol


        def pytest_runtest_protocol(item, nextitem):
            if item.get_closest_marker("twice"):
                item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
                runtestprotocol(item, nextitem=nextitem, log=True)
                runtestprotocol(item, nextitem=nextitem, log=True)
                item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
                return True
        """
    )
    pytester.makeini("[pytest]\nmarkers = twice\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_levels="""
        import pytest


        @pytest.fixture(scope="module")
        def shelf(redis_client):
            redis_client.set("shelf", "module")


        @pytest.fixture
        def basket(redis_client, shelf):
            assert redis_client.get("basket") is None
            redis_client.set("basket", "function")
            yield
            redis_client.set("basket", "torn down")  # written after the test: rolled back too


        def test_with_a_function_fixture(redis_client, basket):
            assert redis_client.get("shelf") == b"module"
            redis_client.set("test", "1")


        @pytest.mark.twice
        def test_run_twice(redis_client, shelf):
            assert redis_client.get("twice") is None, "the first run's write was not rolled back"
            redis_client.set("twice", "1")


        def test_after(redis_client, shelf):
            assert sorted(redis_client.keys()) == [b"shelf"]
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=4)


def test_rollback_handle_checkpoint_restore_branch_changes(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_handle="""
        import pytest

        from pytest_rollback import Checkpoint

        @pytest.fixture(scope="module")
        def seeded(redis_client):
            redis_client.set("keep", "k")
            redis_client.set("change", "c")
            redis_client.set("drop", "d")

        def test_checkpoint_and_restore(seeded, rollback, redis_client):
            redis_client.set("a", "1")
            cp = rollback.checkpoint("after a")
            assert isinstance(cp, Checkpoint)
            redis_client.set("b", "2")
            redis_client.delete("a", "keep")
            rollback.restore(cp)
            assert sorted(redis_client.keys()) == [b"a", b"change", b"drop", b"keep"]
            redis_client.set("c", "3")
            rollback.restore(cp)  # a checkpoint can be restored again and again
            assert redis_client.get("c") is None

        def test_branch(seeded, rollback, redis_client):
            redis_client.set("before", "x")
            with rollback.branch("try") as cp:
                assert isinstance(cp, Checkpoint)
                redis_client.set("inside", "y")
                redis_client.delete("keep")
            assert redis_client.get("inside") is None
            assert redis_client.get("keep") == b"k"
            assert redis_client.get("before") == b"x"

        def test_changes(seeded, rollback, redis_client):
            assert not rollback.changes()["redis"]
            redis_client.set("new", "n")
            redis_client.set("change", "c2")
            redis_client.delete("drop")
            changes = rollback.changes()
            assert list(changes) == ["redis"]
            ch = changes["redis"]
            assert ch.added == {"0:new"}
            assert ch.modified == {"0:change"}
            assert ch.removed == {"0:drop"}
            assert ch.complete
            cp = rollback.checkpoint()
            redis_client.set("later", "l")
            since = rollback.changes(since=cp)["redis"]
            assert since.added == {"0:later"} and not since.modified and not since.removed

        def test_all_undone(seeded, redis_client):
            assert sorted(redis_client.keys()) == [b"change", b"drop", b"keep"]
            assert redis_client.get("change") == b"c"
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=4)
