"""Isolation under pytest-xdist: workers never see each other's writes."""

from __future__ import annotations

import os

import pytest
import redis

from pytest_rollback.api import Service

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
N_TESTS = 30

#: Every test writes, waits a moment (so the two workers' tests overlap) and checks
#: that its database holds the module's seed plus its own key, nothing else; it
#: records which worker ran it against which server and database.
PROJECT = f"""
import os
import pathlib
import time

import pytest

LOG = pathlib.Path(__file__).with_name("workers.log")

@pytest.fixture(scope="module")
def seeded(redis_client):
    redis_client.mset({{"seed:1": "a", "seed:2": "b"}})

@pytest.mark.parametrize("i", range({N_TESTS}))
def test_isolated(seeded, redis_client, redis_service, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    db = redis_client.connection_pool.connection_kwargs["db"]
    with LOG.open("a") as f:
        f.write(f"{{worker}} {{redis_service.provider}} {{redis_service.port}} {{db}}\\n")
    assert redis_client.dbsize() == 2
    redis_client.set(f"written:{{worker}}:{{i}}", i)
    redis_client.rpush("shared:name", i)
    time.sleep(0.01)
    assert redis_client.dbsize() == 4
    assert redis_client.lrange("shared:name", 0, -1) == [str(i).encode()]
"""


def _workers(pytester: pytest.Pytester) -> dict[str, set[tuple[str, str, str]]]:
    seen: dict[str, set[tuple[str, str, str]]] = {}
    for line in (pytester.path / "workers.log").read_text().splitlines():
        worker, provider, port, db = line.split()
        seen.setdefault(worker, set()).add((provider, port, db))
    return seen


def test_local_provider_gives_each_worker_its_own_server(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PROJECT)
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", "--rollback-provider=local", timeout=120)
    result.assert_outcomes(passed=N_TESTS)
    seen = _workers(pytester)
    assert set(seen) == {"gw0", "gw1"}, "both workers should have run tests"
    (w0,), (w1,) = seen["gw0"], seen["gw1"]  # one server per worker for the whole session
    assert w0[0] == w1[0] == "local"
    assert w0[1] != w1[1], "the workers shared a server"


def test_external_url_gives_each_worker_its_own_database(pytester: pytest.Pytester, real_redis: Service) -> None:
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    # databases 0 and 1 are the workers' (the URL's database plus the worker index); 5 is nobody's
    other = redis.Redis(host=real_redis.host, port=real_redis.port, db=5)
    other.set("outer:db5", "kept")
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PROJECT)
    url = f"redis://{real_redis.host}:{real_redis.port}/0"
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", f"--rollback-redis-url={url}", timeout=120)
    result.assert_outcomes(passed=N_TESTS)
    port = str(real_redis.port)
    assert _workers(pytester) == {"gw0": {("external", port, "0")}, "gw1": {("external", port, "1")}}
    assert set(client.info("keyspace")) == {"db5"}, "the inner run left data behind"
    assert other.keys() == [b"outer:db5"]
    client.flushall()
    client.close()
    other.close()


@pytest.mark.parametrize("flags", ["", "Ex"])
def test_workers_on_one_external_redis_leave_its_notification_flags_as_they_were(
    pytester: pytest.Pytester, real_redis: Service, flags: str
) -> None:
    """The flags go back once, after every worker: a worker done early does not switch off another's events."""
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    client.config_set("notify-keyspace-events", flags)
    before = client.config_get("notify-keyspace-events")
    pytester.makeini(INI)
    # one file per worker (--dist loadfile): the quick one is done while the slow one still writes
    pytester.makepyfile(
        test_quick="""
        def test_quick(redis_client):
            redis_client.set("quick", 1)
        """,
        test_slow="""
        import time

        import pytest

        @pytest.mark.parametrize("i", range(20))
        def test_slow(redis_client, i):
            time.sleep(0.05)
            redis_client.set(f"slow:{i}", i)
            assert redis_client.dbsize() == 1
        """,
    )
    url = f"redis://{real_redis.host}:{real_redis.port}/0"
    result = pytester.runpytest_subprocess(
        *INNER, "-n", "2", "--dist", "loadfile", f"--rollback-redis-url={url}", timeout=120
    )
    result.assert_outcomes(passed=21)
    assert "full because" not in result.stdout.str(), "a worker's end changed the flags under another"
    assert client.config_get("notify-keyspace-events") == before
    assert client.info("keyspace") == {}
    client.close()


def _processes_on(port: int) -> list[int]:
    """PIDs of processes whose command line names 127.0.0.1:``port`` (redis-server shows its address there)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    line = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"127.0.0.1:{port}" in line and "redis-server" in line:
                found.append(int(entry))
    return found


def test_a_crashed_workers_redis_server_is_ended_by_the_controller(pytester: pytest.Pytester) -> None:
    """A worker that dies never stops its redis-server; the controller ends it after the run."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_crash="""
        import os
        import pathlib

        def test_crash(redis_service):
            pathlib.Path(__file__).with_name("port").write_text(str(redis_service.port))
            os._exit(1)  # the worker dies without any teardown

        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        *INNER, "-n", "2", "--max-worker-restart=0", "--rollback-provider=local", timeout=120
    )
    result.assert_outcomes(passed=1, failed=1)
    port = int((pytester.path / "port").read_text())
    assert _processes_on(port) == [], "the crashed worker's redis-server outlived the run"
