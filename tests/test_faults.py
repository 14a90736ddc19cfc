"""Faults read as one line, and secrets never show: real servers that die, freeze or refuse the password.

Each test runs the plugin in a sub-pytest against a server of its own (redis-server
with ``--requirepass``, SecantusDB with ``--auth``, noida-db behind a proxy that asks
for a password), breaks it, and checks that the whole error part of the output is
one line naming the store, its address and what to do, and that the password shows
nowhere in the output.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_rollback.adapters._resp3 import ConnectionLost, Resp3Connection
from pytest_rollback.api import StoreFault
from pytest_rollback.engine import STORE_BROKEN
from pytest_rollback.faults import AUTH_FAILED, GONE, MISSING_CLIENT, NOT_ANSWERING
from pytest_rollback.services import embedded, free_port, local
from pytest_rollback.services.external import CANNOT_REACH

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
SECRET = "s3cret-4711"
#: How long an inner run may take before the test counts it as hung.
HANG = 120

# -- servers of our own ------------------------------------------------------------


class Server:
    """A server process this test started; stopped (continued first, if frozen) at the end."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)


def _wait(ready: Callable[[], object], proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode}", pytrace=False)
        try:
            ready()
            return
        except Exception:
            time.sleep(0.05)
    pytest.fail(f"{what} did not become ready", pytrace=False)


def _start(cmd: list[str], port: int, ready: Callable[[], object], what: str) -> Server:
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, port)
    try:
        _wait(ready, proc, what)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[Server]:
    """A redis-server that wants the password ``SECRET``."""
    import redis

    exe = local.find_redis_server()
    assert exe is not None, "these tests need a redis-server"
    port = free_port()
    cmd = [
        exe, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", SECRET, "--save", "", "--appendonly", "no",
        "--dir", str(tmp_path),
    ]
    client = redis.Redis(port=port, password=SECRET, socket_timeout=5)
    server = _start(cmd, port, client.ping, "redis-server")
    yield server
    client.close()
    server.stop()


@pytest.fixture(scope="module")
def mongo_with_a_user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SecantusDB data directory with the user ``u`` (password ``SECRET``), to copy for each test."""
    import pymongo

    exe = embedded.find_secantusd()
    assert exe is not None, "these tests need SecantusDB (pip install -e '.[test]')"
    data = tmp_path_factory.mktemp("mongo-template") / "data"
    port = free_port()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(port=port, directConnection=True)
    cmd = [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data), "--log-level", "WARNING"]
    server = _start(cmd, port, lambda: client.admin.command("ping"), "SecantusDB")
    client.admin.command("createUser", "u", pwd=SECRET, roles=["root"])
    client.close()
    server.proc.terminate()  # a clean shutdown: its files can be copied
    server.proc.wait(timeout=60)
    return data


@pytest.fixture
def locked_mongo(mongo_with_a_user: Path, tmp_path: Path) -> Iterator[Server]:
    """SecantusDB with ``--auth``: only ``u`` with ``SECRET`` gets in."""
    import pymongo

    data = tmp_path / "data"
    shutil.copytree(mongo_with_a_user, data)
    exe = embedded.find_secantusd()
    assert exe is not None
    port = free_port()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_url(port), serverSelectionTimeoutMS=500)
    cmd = [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data), "--log-level", "WARNING",
           "--auth"]
    server = _start(cmd, port, client.list_database_names, "SecantusDB --auth")
    yield server
    client.close()
    server.stop()


def mongo_url(port: int, password: str | None = SECRET) -> str:
    credentials = f"u:{password}@" if password is not None else ""
    return f"mongodb://{credentials}127.0.0.1:{port}/?directConnection=true"


@pytest.fixture
def noida(tmp_path: Path) -> Iterator[Server]:
    """noida-db (its binary itself, so that signals reach the server) on a free port."""
    from importlib.resources import files

    exe = str(files("noida_db").joinpath("noida-db"))
    port = free_port()
    cmd = [exe, "start", "--data-dir", str(tmp_path / "noida"), "--only", "elasticsearch", "--host", "127.0.0.1",
           "--elasticsearch-port", str(port)]

    def ready() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()

    server = _start(cmd, port, ready, "noida-db")
    yield server
    server.stop()


class _AuthProxy(http.server.ThreadingHTTPServer):
    """Elasticsearch's security in front of noida-db (which has none): ``elastic`` / ``SECRET``, else 401."""

    daemon_threads = True

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.expected = "Basic " + base64.b64encode(f"elastic:{SECRET}".encode()).decode()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _AuthProxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        given = self.headers.get("Authorization")
        if given != self.server.expected:
            reason = "unable to authenticate user [elastic]" if given else "missing authentication credentials"
            error = {"type": "security_exception", "reason": f"{reason} for REST request [{self.path}]"}
            body = json.dumps({"error": error, "status": 401}).encode()
            self._answer(401, body, [("Content-Type", "application/json")])
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=30)
        skip = ("host", "authorization", "connection", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        hop = ("connection", "content-length", "transfer-encoding", "keep-alive")
        self._answer(resp.status, data, [(k, v) for k, v in resp.getheaders() if k.lower() not in hop])

    def _answer(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def locked_elasticsearch(noida: Server) -> Iterator[int]:
    """The port of a proxy to ``noida`` that wants ``elastic`` / ``SECRET``."""
    proxy = _AuthProxy(noida.port)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield int(proxy.server_address[1])
    proxy.shutdown()
    proxy.server_close()


# -- reading the inner run's output --------------------------------------------------


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The inner run, in a process of its own (a hang fails the test instead of stopping the suite)."""
    return pytester.runpytest_subprocess(*INNER, *args, timeout=HANG)


def error_part(result: pytest.RunResult) -> list[str]:
    """What the run says went wrong: the ERRORS section without its test headers, and stderr."""
    lines = result.stdout.lines
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ ERRORS =+", line)]
    body: list[str] = []
    if starts:
        rest = lines[starts[0] + 1 :]
        end = next((i for i, line in enumerate(rest) if re.fullmatch(r"=+ .* =+", line)), len(rest))
        body = [line for line in rest[:end] if not re.fullmatch(r"_+ ERROR at .* _+", line)]
    return body + [line for line in result.stderr.lines if line.strip()]


def assert_one_line(result: pytest.RunResult, pattern: str) -> None:
    """The error part is one line matching ``pattern`` (fnmatch), and nothing shows a traceback or a password."""
    output = result.stdout.str() + "\n" + result.stderr.str()
    assert SECRET not in output, "the password was printed"
    for noise in ("Traceback", "ExceptionGroup", "During handling", "direct cause", "Captured log"):
        assert noise not in output, f"{noise!r} in the output:\n{output}"
    errors = error_part(result)
    assert len(errors) == 1 and fnmatch(errors[0], pattern), "\n".join(errors)


def assert_lines(result: pytest.RunResult, patterns: list[str]) -> None:
    """The error part is these lines (fnmatch), and nothing shows a traceback or a password."""
    output = result.stdout.str() + "\n" + result.stderr.str()
    assert SECRET not in output, "the password was printed"
    for noise in ("Traceback", "ExceptionGroup", "During handling", "direct cause", "Captured log"):
        assert noise not in output, f"{noise!r} in the output:\n{output}"
    errors = error_part(result)
    assert len(errors) == len(patterns), "\n".join(errors)
    for line, pattern in zip(errors, patterns, strict=True):
        assert fnmatch(line, pattern), f"{line}\n  does not match\n{pattern}"


def broken(store: str, fault: str) -> str:
    """The line of a test whose restore met ``fault``: the store is marked broken."""
    reason = f"the restore after * failed: {fault.removeprefix('pytest-rollback: ')}"
    return STORE_BROKEN.format(store=store, reason=reason)


def kept(store: str, where: str) -> str:
    """The end of a run whose server went away: its data from before the run waits in the journal."""
    return (f"pytest-rollback: {store} at {where}: its data from before this run could not be put back (*); it is "
            "kept in *: once the server answers, the next run puts it back, or run pytest --rollback-recover")


def assert_secret_not_shown(result: pytest.RunResult) -> None:
    assert SECRET not in result.stdout.str() + result.stderr.str(), "the password was printed"


KILL_LAST = """
import os
import signal


def test_writes():
    {write}


def test_kills_the_server():
    os.kill({pid}, signal.SIGKILL)
"""

#: The last test stops the server; the server goes on once the test is over (after its teardown).
FREEZE_LAST = """
import os
import signal


def test_writes():
    {write}


def test_freezes_the_server():
    {write}
    os.kill({pid}, signal.SIGSTOP)
"""
#: ... and answers again before the run ends (its end restores the server's own data).
CONTINUE_AFTER = """
import os
import signal
import time


def answers():
    {answers}


def pytest_runtest_logfinish(nodeid):
    if nodeid.endswith("test_freezes_the_server"):
        os.kill({pid}, signal.SIGCONT)
        for _ in range(300):
            try:
                return answers()
            except Exception:
                time.sleep(0.1)
"""


# -- Redis -----------------------------------------------------------------------------


def _redis_keys(server: Server) -> dict[bytes, bytes]:
    import redis

    client = redis.Redis(port=server.port, password=SECRET)
    try:
        return {k: client.dump(k) for k in client.keys()}
    finally:
        client.close()


def test_redis_password_is_masked_in_the_header_and_the_run_rolls_back(
    pytester: pytest.Pytester, locked_redis: Server
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        def test_writes(redis_client):
            redis_client.set("written", "1")

        def test_sees_nothing(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = run_inner(pytester, f"--rollback-redis-url=redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"pytest-rollback: redis via external at redis://:***@127.0.0.1:{locked_redis.port}/0,*"])
    assert_secret_not_shown(result)
    assert _redis_keys(locked_redis) == {}


@pytest.mark.parametrize(
    ("password", "reason"),
    [("wrong", "wrong user name or password"), (None, "the server wants a password and the URL gives none")],
    ids=["wrong", "missing"],
)
def test_redis_refused_password_is_one_line_at_session_start(
    pytester: pytest.Pytester, locked_redis: Server, password: str | None, reason: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    credentials = f":{password}{SECRET}@" if password else ""  # (the secret in the wrong one must not show either)
    result = run_inner(pytester, f"--rollback-redis-url=redis://{credentials}127.0.0.1:{locked_redis.port}/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = AUTH_FAILED.format(
        store="redis", where=f"127.0.0.1:{locked_redis.port}", reason=reason, option="--rollback-redis-url"
    )
    assert_one_line(result, f"ERROR: {line}".replace("[", "[[]"))


def test_redis_urls_that_fail_otherwise_do_not_show_the_password(
    pytester: pytest.Pytester, locked_redis: Server
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    closed = free_port()
    cases = {
        f"redis://:{SECRET}@127.0.0.1:{locked_redis.port}/x": (
            f"pytest-rollback: redis: bad URL 'redis://:***@127.0.0.1:{locked_redis.port}/x': *"
        ),
        f"redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0?password={SECRET}&db=x": (
            f"pytest-rollback: redis: bad URL 'redis://:***@127.0.0.1:{locked_redis.port}/0?password=***&db=x': *"
        ),
        f"redis://user:{SECRET}@127.0.0.1:{closed}/0": CANNOT_REACH.format(
            store="redis", where=f"127.0.0.1:{closed}", reason="*", option="--rollback-redis-url"
        ),
    }
    for url, pattern in cases.items():
        result = run_inner(pytester, f"--rollback-redis-url={url}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert_one_line(result, f"ERROR: {pattern}")


def test_redis_killed_during_the_run_is_one_line(pytester: pytest.Pytester, locked_redis: Server) -> None:
    pytester.makeini(INI)
    write = f"__import__('redis').Redis(port={locked_redis.port}, password={SECRET!r}).set('written', '1')"
    pytester.makepyfile(KILL_LAST.format(write=write, pid=locked_redis.proc.pid))
    result = run_inner(pytester, f"--rollback-redis-url=redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0")
    result.assert_outcomes(passed=2, errors=1)
    # (refused, or reset when the dying server still took the new connection)
    where = f"127.0.0.1:{locked_redis.port}"
    assert_lines(result, [broken("redis", GONE.format(store="redis", where=where, reason="connection *")),
                          kept("redis", where)])


def test_redis_frozen_during_a_test_is_one_line_and_its_data_comes_back(
    pytester: pytest.Pytester, locked_redis: Server
) -> None:
    import redis

    client = redis.Redis(port=locked_redis.port, password=SECRET)
    client.set("users:own", "data", ex=3600)
    client.close()
    before = _redis_keys(locked_redis)
    pytester.makeini(INI)
    write = f"__import__('redis').Redis(port={locked_redis.port}, password={SECRET!r}).incr('written')"
    pytester.makepyfile(FREEZE_LAST.format(write=write, pid=locked_redis.proc.pid))
    answers = f"__import__('redis').Redis(port={locked_redis.port}, password={SECRET!r}, socket_timeout=1).ping()"
    pytester.makeconftest(CONTINUE_AFTER.format(pid=locked_redis.proc.pid, answers=answers))
    url = f"redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0"
    result = run_inner(pytester, f"--rollback-redis-url={url}", "--rollback-timeout=2")
    result.assert_outcomes(passed=2, errors=1)
    assert_lines(result, [broken("redis", NOT_ANSWERING.format(store="redis", where=f"127.0.0.1:{locked_redis.port}",
                                                                timeout=2))])
    assert _redis_keys(locked_redis) == before, "the end of the run did not put the server's data back"


def test_redis_time_out_is_per_reply_not_per_command(locked_redis: Server) -> None:
    """Replies that keep coming are waited for, however long the whole pipeline takes; one that does not, is not.

    Each BLPOP of a key nobody pushes to answers when its own time-out ends (and the
    server sends that reply before it blocks on the next one): one reply every 0.5 s.
    """
    conn = Resp3Connection("127.0.0.1", locked_redis.port, password=SECRET, timeout=2)
    try:
        replies = conn.pipeline([("BLPOP", "nobody-pushes", "0.5")] * 5)  # 2.5 s in all, 0.5 s per reply
        assert replies == [None] * 5
        with pytest.raises(ConnectionLost, match="no reply in 2 s") as lost:
            conn.call("BLPOP", "nobody-pushes", "5")
        assert lost.value.timed_out and conn.closed
    finally:
        conn.close()


# -- MongoDB ---------------------------------------------------------------------------


def _mongo_state(server: Server) -> dict[str, list[Any]]:
    import pymongo

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_url(server.port), serverSelectionTimeoutMS=5000)
    try:
        return {
            f"{db}.{coll}": list(client[db][coll].find())
            for db in client.list_database_names()
            if db not in ("admin", "local", "config")
            for coll in client[db].list_collection_names()
        }
    finally:
        client.close()


def _mongo_write(port: int) -> str:
    return (
        f"__import__('pymongo').MongoClient({mongo_url(port)!r}, serverSelectionTimeoutMS=5000)"
        ".test.things.insert_one({})"
    )


def test_mongo_password_is_masked_in_the_header_and_the_run_rolls_back(
    pytester: pytest.Pytester, locked_mongo: Server
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        f"""
        import pymongo

        def test_writes():
            {_mongo_write(locked_mongo.port)}

        def test_sees_nothing():
            client = pymongo.MongoClient({mongo_url(locked_mongo.port)!r})
            assert client.test.things.count_documents({{}}) == 0
        """
    )
    result = run_inner(pytester, f"--rollback-mongo-url={mongo_url(locked_mongo.port)}")
    result.assert_outcomes(passed=2)
    masked = mongo_url(locked_mongo.port, "***")
    result.stdout.fnmatch_lines([f"pytest-rollback: mongo via external at {masked.replace('?', '[?]')},*"])
    assert_secret_not_shown(result)
    assert _mongo_state(locked_mongo) == {}


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("wrong", "wrong user name, password or authSource"),
        (None, "the server wants credentials and the URL gives none"),
    ],
    ids=["wrong", "missing"],
)
def test_mongo_refused_password_is_one_line_at_session_start(
    pytester: pytest.Pytester, locked_mongo: Server, password: str | None, reason: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    url = mongo_url(locked_mongo.port, f"{password}{SECRET}" if password else None)
    result = run_inner(pytester, f"--rollback-mongo-url={url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = AUTH_FAILED.format(
        store="mongo", where=f"127.0.0.1:{locked_mongo.port}", reason=reason, option="--rollback-mongo-url"
    )
    assert_one_line(result, f"ERROR: {line}")


def test_mongo_urls_that_fail_otherwise_do_not_show_the_password(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    closed = free_port()
    cases = {
        f"mongodb://u:{SECRET}@127.0.0.1:99999/": (
            "pytest-rollback: mongo: bad URL 'mongodb://u:***@127.0.0.1:99999/': *"
        ),
        f"mongodb://u:{SECRET}@127.0.0.1:{closed}/?directConnection=true": CANNOT_REACH.format(
            store="mongo", where=f"127.0.0.1:{closed}", reason="*", option="--rollback-mongo-url"
        ),
    }
    for url, pattern in cases.items():
        result = run_inner(pytester, f"--rollback-mongo-url={url}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert_one_line(result, f"ERROR: {pattern}".replace("?", "[?]"))


def test_mongo_killed_during_the_run_is_one_line(pytester: pytest.Pytester, locked_mongo: Server) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(KILL_LAST.format(write=_mongo_write(locked_mongo.port), pid=locked_mongo.proc.pid))
    result = run_inner(pytester, f"--rollback-mongo-url={mongo_url(locked_mongo.port)}")
    result.assert_outcomes(passed=2, errors=1)
    where = f"127.0.0.1:{locked_mongo.port}"
    assert_lines(result, [broken("mongo", GONE.format(store="mongo", where=where, reason="*")), kept("mongo", where)])


def test_mongo_frozen_during_a_test_is_one_line_and_its_data_comes_back(
    pytester: pytest.Pytester, locked_mongo: Server
) -> None:
    import pymongo

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_url(locked_mongo.port))
    client.users.people.insert_one({"_id": 1, "name": "own data"})
    client.close()
    before = _mongo_state(locked_mongo)
    pytester.makeini(INI)
    pytester.makepyfile(FREEZE_LAST.format(write=_mongo_write(locked_mongo.port), pid=locked_mongo.proc.pid))
    answers = (
        f"__import__('pymongo').MongoClient({mongo_url(locked_mongo.port)!r}, serverSelectionTimeoutMS=1000)"
        ".list_database_names()"
    )
    pytester.makeconftest(CONTINUE_AFTER.format(pid=locked_mongo.proc.pid, answers=answers))
    result = run_inner(pytester, f"--rollback-mongo-url={mongo_url(locked_mongo.port)}", "--rollback-timeout=2")
    result.assert_outcomes(passed=2, errors=1)
    assert_lines(result, [broken("mongo", NOT_ANSWERING.format(store="mongo", where=f"127.0.0.1:{locked_mongo.port}",
                                                                timeout=2))])
    assert _mongo_state(locked_mongo) == before, "the end of the run did not put the server's data back"



def test_a_server_that_went_away_is_not_waited_for_at_every_level(
    locked_mongo: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While its port refuses connections, a gone server's adapter repeats the fault without asking the client.

    (pymongo waits for a server selection on every call: each level the session tears
    down would wait that long for a server that is not coming back.)
    """
    from pytest_rollback.adapters.mongo import MongoAdapter

    adapter = MongoAdapter(mongo_url(locked_mongo.port), timeout=2)
    try:
        start = adapter.checkpoint("start")
        locked_mongo.proc.kill()
        locked_mongo.proc.wait()
        with pytest.raises(StoreFault) as first:
            adapter.rollback(start)
        assert first.value.gone and first.value.store == "mongo"

        def asks_the_server(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the adapter asked the gone server again")

        monkeypatch.setattr(adapter, "_drain", asks_the_server)
        with pytest.raises(StoreFault) as again:
            adapter.rollback(start)
        assert str(again.value) == str(first.value)
    finally:
        monkeypatch.undo()
        adapter.client.close()

# -- Elasticsearch ---------------------------------------------------------------------


def _es_indices(port: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/_cat/indices?h=index&expand_wildcards=all&format=json")
    names = sorted(row["index"] for row in json.loads(conn.getresponse().read()))
    conn.close()
    return names


def _es_write(port: int) -> str:
    """A statement that adds a document to the index ``written`` (made on first use)."""
    return (
        "__import__('urllib.request').request.urlopen(__import__('urllib.request').request.Request("
        f"'http://127.0.0.1:{port}/written/_doc', data=b'{{}}', headers={{'content-type': 'application/json'}}))"
    )


def test_elasticsearch_password_is_masked_in_the_header_and_the_run_rolls_back(
    pytester: pytest.Pytester, noida: Server, locked_elasticsearch: int
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        f"""
        def test_writes():
            {_es_write(noida.port)}

        def test_sees_nothing(es_client):
            assert list(es_client.indices.get(index="*")) == []
        """
    )
    result = run_inner(pytester, f"--rollback-elasticsearch-url=http://elastic:{SECRET}@127.0.0.1:{locked_elasticsearch}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"pytest-rollback: elasticsearch via external at http://elastic:***@127.0.0.1:{locked_elasticsearch},*"]
    )
    assert_secret_not_shown(result)
    assert _es_indices(noida.port) == []


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (f"elastic:wrong{SECRET}@", "401: unable to authenticate user [elastic] for REST request [/]"),
        ("", "401: missing authentication credentials for REST request [/]"),
    ],
    ids=["wrong", "missing"],
)
def test_elasticsearch_refused_password_is_one_line_at_session_start(
    pytester: pytest.Pytester, locked_elasticsearch: int, credentials: str, reason: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    result = run_inner(pytester, f"--rollback-elasticsearch-url=http://{credentials}127.0.0.1:{locked_elasticsearch}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = AUTH_FAILED.format(
        store="elasticsearch", where=f"127.0.0.1:{locked_elasticsearch}", reason=reason,
        option="--rollback-elasticsearch-url",
    )
    assert_one_line(result, f"ERROR: {line}".replace("[", "[[]"))


def test_elasticsearch_urls_that_fail_otherwise_do_not_show_the_password(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    closed = free_port()
    cases = {
        f"elastic:{SECRET}@127.0.0.1:9200": "pytest-rollback: elasticsearch: bad URL 'elastic:***@127.0.0.1:9200': *",
        f"http://elastic:{SECRET}@127.0.0.1:{closed}/?api_key={SECRET}": CANNOT_REACH.format(
            store="elasticsearch", where=f"127.0.0.1:{closed}", reason="*", option="--rollback-elasticsearch-url"
        ),
    }
    for url, pattern in cases.items():
        result = run_inner(pytester, f"--rollback-elasticsearch-url={url}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert_one_line(result, f"ERROR: {pattern}")


def test_elasticsearch_killed_during_the_run_is_one_line(pytester: pytest.Pytester, noida: Server) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(KILL_LAST.format(write=_es_write(noida.port), pid=noida.proc.pid))
    result = run_inner(pytester, f"--rollback-elasticsearch-url=http://elastic:{SECRET}@127.0.0.1:{noida.port}")
    result.assert_outcomes(passed=2, errors=1)
    where = f"127.0.0.1:{noida.port}"
    assert_lines(result, [broken("elasticsearch", GONE.format(store="elasticsearch", where=where, reason="*")),
                          kept("elasticsearch", where)])


def test_elasticsearch_frozen_during_a_test_is_one_line_and_its_data_comes_back(
    pytester: pytest.Pytester, noida: Server
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", noida.port, timeout=10)
    conn.request("PUT", "/users-own")
    assert conn.getresponse().status == 200
    conn.close()
    before = _es_indices(noida.port)
    pytester.makeini(INI)
    pytester.makepyfile(FREEZE_LAST.format(write=_es_write(noida.port), pid=noida.proc.pid))
    answers = f"__import__('urllib.request').request.urlopen('http://127.0.0.1:{noida.port}/', timeout=1)"
    pytester.makeconftest(CONTINUE_AFTER.format(pid=noida.proc.pid, answers=answers))
    url = f"http://elastic:{SECRET}@127.0.0.1:{noida.port}"
    result = run_inner(pytester, f"--rollback-elasticsearch-url={url}", "--rollback-timeout=2")
    result.assert_outcomes(passed=2, errors=1)
    where = f"127.0.0.1:{noida.port}"
    assert_lines(result, [broken("elasticsearch", NOT_ANSWERING.format(store="elasticsearch", where=where, timeout=2))])
    assert _es_indices(noida.port) == before, "the end of the run did not put the server's data back"


# -- a client package that is not installed ---------------------------------------------

#: Blocks one import, and records every process started and every connection made.
BLOCKED = """
import pathlib
import socket
import subprocess
import sys

sys.modules[{package!r}] = None
LOG = pathlib.Path(__file__).with_name("activity.log")
_init = subprocess.Popen.__init__
_connect = socket.socket.connect


def init(self, args, *rest, **kwargs):
    with LOG.open("a") as log:
        log.write(f"started {{args!r}}\\n")
    _init(self, args, *rest, **kwargs)


def connect(self, address):
    with LOG.open("a") as log:
        log.write(f"connected to {{address!r}}\\n")
    return _connect(self, address)


subprocess.Popen.__init__ = init
socket.socket.connect = connect
"""


@pytest.mark.parametrize(
    ("store", "package", "extra", "fixture"),
    [
        ("redis", "redis", "redis", "redis_client"),
        ("mongo", "pymongo", "mongo", "mongo_db"),
        ("elasticsearch", "elasticsearch", "elasticsearch", "es_client"),
    ],
)
@pytest.mark.parametrize("how", ["fixture", "url"])
def test_a_missing_client_package_is_one_line_and_starts_nothing(
    pytester: pytest.Pytester, store: str, package: str, extra: str, fixture: str, how: str
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(BLOCKED.format(package=package))
    pytester.makepyfile(f"def test_uses_it({fixture}):\n    pass\n")
    scheme = "http" if store == "elasticsearch" else store
    args = [f"--rollback-{store}-url={scheme}://127.0.0.1:1"] if how == "url" else []
    result = run_inner(pytester, *args)
    reason = f"import of {package} halted; None in sys.modules"
    line = MISSING_CLIENT.format(store=store, package=package, reason=reason, extra=extra)
    if how == "url":
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        line = f"ERROR: {line}"
    else:
        result.assert_outcomes(errors=1)
    assert_one_line(result, line.replace("[", "[[]"))
    log = pytester.path / "activity.log"
    assert not log.exists(), f"something was started or contacted:\n{log.read_text()}"


# -- three stores started, one of them breaking: the probes sent ahead ------------------------

#: What each store's fixture writes in the test that breaks a server, and how a later test sees it gone.
THREE = {
    "redis": ("redis_client", "redis_client.set('other', '1')", "assert redis_client.get('other') is None"),
    "mongo": ("mongo_db", "mongo_db.other.insert_one({'_id': 1})", "assert mongo_db.other.count_documents({}) == 0"),
    "elasticsearch": (
        "es_client",
        "es_client.index(index='other', document={'a': 1}, refresh=True)",
        "assert not es_client.indices.exists(index='other')",
    ),
}

#: The second test writes to the three stores and breaks one server (its restore sends the three probes
#: ahead); the third, which uses the other two, finds them rolled back.
BREAK_ONE_OF_THREE = """
import os
import signal


def test_writes(redis_client, mongo_db, es_client):
    {writes}


def test_breaks_the_server(redis_client, mongo_db, es_client):
    {writes}
    os.kill({pid}, signal.{signal})


def test_the_others_are_rolled_back({others}):
    {checks}
"""


@pytest.fixture
def one_of_three(request: pytest.FixtureRequest) -> tuple[str, Server, str]:
    """The store given as the test's parameter, on a server of this test's own: its name, server and URL."""
    store: str = request.param
    if store == "redis":
        server: Server = request.getfixturevalue("locked_redis")
        return store, server, f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
    if store == "mongo":
        server = request.getfixturevalue("locked_mongo")
        return store, server, mongo_url(server.port)
    server = request.getfixturevalue("noida")
    return store, server, f"http://127.0.0.1:{server.port}"


def _break_one_of_three(pytester: pytest.Pytester, store: str, server: Server, url: str, how: str) -> pytest.RunResult:
    others = [s for s in THREE if s != store]
    pytester.makeini(INI)
    pytester.makepyfile(BREAK_ONE_OF_THREE.format(
        writes="\n    ".join(THREE[s][1] for s in THREE), pid=server.proc.pid, signal=how,
        others=", ".join(THREE[s][0] for s in others), checks="\n    ".join(THREE[s][2] for s in others),
    ))
    return run_inner(pytester, f"--rollback-{store}-url={url}", "--rollback-provider=auto", "--rollback-timeout=2")


@pytest.mark.parametrize("one_of_three", list(THREE), indirect=True)
def test_a_server_killed_with_the_probes_sent_ahead_is_one_line_and_the_others_are_rolled_back(
    pytester: pytest.Pytester, one_of_three: tuple[str, Server, str]
) -> None:
    store, server, url = one_of_three
    result = _break_one_of_three(pytester, store, server, url, "SIGKILL")
    result.assert_outcomes(passed=3, errors=1)
    where = f"127.0.0.1:{server.port}"
    assert_lines(result, [broken(store, GONE.format(store=store, where=where, reason="*")), kept(store, where)])


@pytest.mark.parametrize("one_of_three", list(THREE), indirect=True)
def test_a_server_frozen_with_the_probes_sent_ahead_is_one_line_and_the_others_are_rolled_back(
    pytester: pytest.Pytester, one_of_three: tuple[str, Server, str]
) -> None:
    store, server, url = one_of_three
    answers = {
        "redis": f"__import__('redis').Redis(port={server.port}, password={SECRET!r}, socket_timeout=1).ping()",
        "mongo": f"__import__('pymongo').MongoClient({url!r}, serverSelectionTimeoutMS=1000).list_database_names()",
        "elasticsearch": f"__import__('urllib.request').request.urlopen('http://127.0.0.1:{server.port}/', timeout=1)",
    }[store]
    pytester.makeconftest(CONTINUE_AFTER.format(pid=server.proc.pid, answers=answers).replace(
        "test_freezes_the_server", "test_breaks_the_server"))
    result = _break_one_of_three(pytester, store, server, url, "SIGSTOP")
    result.assert_outcomes(passed=3, errors=1)
    where = f"127.0.0.1:{server.port}"
    assert_lines(result, [broken(store, NOT_ANSWERING.format(store=store, where=where, timeout=2))])


#: Ctrl-C arrives while a test's restore is under way: after the first store's rollback, with the
#: other two stores' probes sent ahead and not yet read.
INTERRUPT_MID_RESTORE = """
import json, os, signal
from pytest_rollback import engine

DONE = []
_rollback = engine.Engine._rollback


def rollback(self, adapter, token, label):  # not an after-rollback hook: one of those turns the probes off
    report = _rollback(self, adapter, token, label)
    DONE.append([label, adapter.name])
    if label == "test test_interrupted.py::test_writes_everywhere" and len(DONE) == 1:
        os.kill(os.getpid(), signal.SIGINT)
    return report


engine.Engine._rollback = rollback


def pytest_unconfigure(config):
    with open("done.json", "w") as f:
        json.dump(DONE, f)
"""


def test_ctrl_c_between_the_probes_sent_ahead_and_their_use_puts_every_store_back(
    pytester: pytest.Pytester, locked_redis: Server, locked_mongo: Server, noida: Server
) -> None:
    """The restore of several stores is held as a whole: a Ctrl-C that arrives between the first
    store's rollback and the others' waits for them (their probes' replies are read where they are
    due), then ends the run, which puts every server's own data back."""
    import redis

    client = redis.Redis(port=locked_redis.port, password=SECRET)
    client.set("users:own", "data")
    client.close()
    before = (_redis_keys(locked_redis), _mongo_state(locked_mongo), _es_indices(noida.port))
    pytester.makeini(INI)
    pytester.makeconftest(INTERRUPT_MID_RESTORE)
    pytester.makepyfile(test_interrupted=f"""
def test_writes_everywhere(redis_client, mongo_db, es_client):
    {THREE["redis"][1]}
    {THREE["mongo"][1]}
    {THREE["elasticsearch"][1]}
    {_mongo_write(locked_mongo.port)}
    {_es_write(noida.port)}


def test_never_runs():
    pass
""")
    result = run_inner(
        pytester, f"--rollback-redis-url=redis://:{SECRET}@127.0.0.1:{locked_redis.port}/0",
        f"--rollback-mongo-url={mongo_url(locked_mongo.port)}", f"--rollback-elasticsearch-url=http://127.0.0.1:{noida.port}",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert "test_never_runs" not in result.stdout.str()
    done = json.loads((pytester.path / "done.json").read_text())
    label = "test test_interrupted.py::test_writes_everywhere"
    assert sorted(name for at, name in done if at == label) == ["elasticsearch", "mongo", "redis"], done
    assert (_redis_keys(locked_redis), _mongo_state(locked_mongo), _es_indices(noida.port)) == before
