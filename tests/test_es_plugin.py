"""Elasticsearch through the plugin, in inner pytest runs (pytester) on noida-db.

The inner runs use noida-db either given by URL (the ``external`` provider) or
started by the plugin (``embedded``, the default on a machine without Docker or
an ``elasticsearch`` binary).
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from conftest import INNER, docker_unavailable, restores_nothing, workers_log
from elasticsearch import Elasticsearch

from pytest_rollback.api import Service

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

#: The issue's example plus module and class data: each test checks it starts
#: from exactly the state of its enclosing scopes.
SCOPES = """
import pytest
from elasticsearch import helpers

@pytest.fixture(scope="session", autouse=True)
def products(es_client):
    es_client.indices.create(
        index="products",
        mappings={"properties": {"name": {"type": "text"}, "tag": {"type": "keyword"}}},
        settings={"number_of_replicas": 0},
        aliases={"catalogue": {}},
    )
    docs = (
        {"_index": "products", "_id": str(i), "_source": {"name": f"p{i}", "tag": "ab"[i % 2]}} for i in range(1000)
    )
    helpers.bulk(es_client, docs, refresh=True)

def fresh(es, extra=0):
    es.indices.refresh(index="products")
    assert es.count(index="products")["count"] == 1000 + extra
    assert list(es.indices.get_alias(index="products")["products"]["aliases"]) == ["catalogue"]
    assert set(es.indices.get_mapping(index="products")["products"]["mappings"]["properties"]) == {"name", "tag"}
    assert not es.indices.exists(index="tmp")

def test_search_after_delete(es_client, rollback):
    fresh(es_client)
    es_client.delete_by_query(index="products", query={"term": {"tag": "a"}}, refresh=True)
    es_client.indices.create(index="tmp")
    es_client.index(index="products", id="late", document={"name": "not refreshed", "price": 3})
    es_client.indices.put_alias(index="products", name="extra")
    changes = rollback.changes()["elasticsearch"]
    assert "tmp" in changes.added and "products/0" in changes.removed and "products/late" in changes.added

def test_next_test_sees_every_document(es_client):
    fresh(es_client)

@pytest.fixture(scope="module")
def featured(es_client):
    es_client.index(index="products", id="featured", document={"name": "star"}, refresh=True)

def test_module_data(es_client, featured):
    fresh(es_client, extra=1)
    es_client.delete(index="products", id="featured", refresh=True)

def test_module_data_again(es_client, featured):
    fresh(es_client, extra=1)

@pytest.fixture(scope="class")
def archived(es_client):
    es_client.indices.create(index="archive", mappings={"properties": {"y": {"type": "integer"}}})

class TestClass:
    def test_in_class(self, es_client, archived):
        assert es_client.indices.exists(index="archive")
        es_client.indices.delete(index="archive")

    def test_in_class_again(self, es_client, archived):
        assert es_client.indices.exists(index="archive")

def test_after_the_class(es_client):
    assert not es_client.indices.exists(index="archive")
    fresh(es_client, extra=1)  # the module's data is there until the module ends
"""

OTHER_MODULE = """
def test_other_module_sees_only_session_data(es_client):
    es_client.indices.refresh(index="products")
    assert es_client.count(index="products")["count"] == 1000
    assert not es_client.indices.exists(index="archive")
"""


@pytest.fixture
def server(cleared_noida: Service) -> Service:
    """The inner runs' server (``run`` and the tests here take it as ``server``)."""
    return cleared_noida


def test_every_scope_keeps_its_data_and_the_servers_data_survives(pytester: pytest.Pytester, server: Service) -> None:
    client = Elasticsearch(server.url)
    client.index(index="kept", id="1", document={"was": "here before the session"}, refresh=True)
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={server.url}", "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: elasticsearch via external at http://127.0.0.1:*clone*rollback*"])
    names = client.indices.get(index="*", expand_wildcards="all")
    assert list(names) == ["kept"], "the session's indices and the snapshots are gone, what was there stays"
    assert client.get(index="kept", id="1")["_source"] == {"was": "here before the session"}
    client.close()


def test_verify_compares_the_whole_state_after_every_restore(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(
        *INNER, f"--rollback-elasticsearch-url={server.url}", "--rollback-verify", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=8)


#: An index written only through ``es_client``: its few changed documents are put back in place (the
#: index keeps its uuid: no clone), and every test still starts from the module's documents.
NOTED = """
import pytest
from elasticsearch import helpers

@pytest.fixture(scope="module", autouse=True)
def items(es_client):
    es_client.indices.create(index="items", settings={"number_of_shards": 1, "number_of_replicas": 0})
    docs = ({"_index": "items", "_id": str(i), "_source": {"n": i}} for i in range(400))
    helpers.bulk(es_client, docs, refresh=True)
    return es_client.indices.get(index="items")["items"]["settings"]["index"]["uuid"]

@pytest.mark.parametrize("run", range(3))
def test_writes_a_few(es_client, items, run):
    assert es_client.get(index="items", id="1")["_source"] == {"n": 1}
    assert not es_client.exists(index="items", id="new")
    es_client.index(index="items", id="1", document={"n": -1})
    es_client.delete(index="items", id="2")
    es_client.index(index="items", id="new", document={"n": 0}, refresh=True)
    assert es_client.count(index="items")["count"] == 400

def test_the_index_was_not_cloned(es_client, items):
    assert es_client.indices.get(index="items")["items"]["settings"]["index"]["uuid"] == items
    es_client.indices.refresh(index="items")
    assert es_client.count(index="items")["count"] == 400
    assert es_client.get(index="items", id="2")["_source"] == {"n": 2}
"""


def test_writes_through_es_client_are_put_back_document_by_document(
    pytester: pytest.Pytester, server: Service
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_noted=NOTED)
    result = pytester.runpytest(
        *INNER, f"--rollback-elasticsearch-url={server.url}", "--rollback-verify", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=4)


def test_verify_catches_a_restore_that_leaves_a_write_behind(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(restores_nothing("elasticsearch"))
    pytester.makepyfile(
        """
        def test_writes(es_client):
            es_client.index(index="orders", id="1", document={"n": 1}, refresh=True)
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={server.url}", "--rollback-verify")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*verify: elasticsearch differs from the checkpoint after restore*orders*"])


VERIFIED = {
    "document": 'es.index(index="seeded", id="9", document={"n": 9})',
    "closed": 'es.indices.close(index="seeded")',
    "setting": 'es.indices.put_settings(index="seeded", settings={"index.refresh_interval": "7s"})',
    "empty blocks group": 'es.indices.put_settings(index="seeded", settings={"index.blocks.write": None})',
    "mapping": 'es.indices.put_mapping(index="seeded", properties={"late": {"type": "keyword"}})',
    "alias filter": 'es.indices.put_alias(index="seeded", name="al", filter={"term": {"n": 1}})',
    "index template": 'es.indices.put_index_template(name="it", index_patterns=["it-*"])',
    "component template": 'es.cluster.put_component_template(name="ct", template={})',
    "legacy template": 'es.indices.put_template(name="lt", index_patterns=["lt-*"])',
    "cluster setting": 'es.cluster.put_settings(persistent={"search.max_buckets": 1234})',
}


@pytest.mark.parametrize("kind", list(VERIFIED))
def test_verify_sees_everything_the_isolation_suite_compares(
    pytester: pytest.Pytester, server: Service, kind: str
) -> None:
    """A restore that leaves any of these behind fails under --rollback-verify (issue 12)."""
    pytester.makeini(INI)
    pytester.makeconftest(restores_nothing("elasticsearch"))
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.fixture(scope="module", autouse=True)
        def seeded(es_client):
            es_client.indices.create(index="seeded", settings={{"number_of_replicas": 0}}, aliases={{"al": {{}}}})
            es_client.index(index="seeded", id="1", document={{"n": 1}}, refresh=True)

        def test_writes(es_client):
            es = es_client
            {VERIFIED[kind]}
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={server.url}", "--rollback-verify")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*verify: elasticsearch differs from the checkpoint after restore*"])


def test_embedded_is_the_default_without_docker_or_elasticsearch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # an engine with images would win
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin")
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: elasticsearch via embedded at http://127.0.0.1:*noida-db*"])


def test_a_test_that_asks_for_no_fixture_is_rolled_back_when_a_url_is_configured(
    pytester: pytest.Pytester, server: Service
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        f"""
        from elasticsearch import Elasticsearch

        def test_writes():
            Elasticsearch({server.url!r}).index(index="orders", id="1", document={{"n": 1}})

        def test_sees_nothing():
            assert not Elasticsearch({server.url!r}).indices.exists(index="orders")
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={server.url}", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_async_client(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_async_write(async_es_client, es_client):
            await async_es_client.index(index="events", id="1", document={"kind": "async"}, refresh=True)
            assert es_client.count(index="events")["count"] == 1

        def test_gone(es_client):
            assert not es_client.indices.exists(index="events")
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={server.url}", "-p", "no:randomly",
                                "-W", "error::pytest.PytestUnraisableExceptionWarning")
    result.assert_outcomes(passed=2)


def test_unreachable_url_is_one_line(pytester: pytest.Pytester) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytester.makeini(INI)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url=http://127.0.0.1:{port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*pytest-rollback: elasticsearch: cannot reach 127.0.0.1:{port} from the configured URL*"]
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://192.0.2.7:9200", "*elasticsearch: refusing '192.0.2.7' from the configured URL: it is not this*"),
        ("127.0.0.1:9200", "*elasticsearch: bad URL '127.0.0.1:9200': expected http://host:port*"),
    ],
)
def test_bad_or_remote_url_is_refused_in_one_line(pytester: pytest.Pytester, url: str, message: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*INNER, f"--rollback-elasticsearch-url={url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_local_provider_starts_elasticsearch_from_path(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``elasticsearch`` on PATH is started on 127.0.0.1, single node, security off, 512 MB heap.

    No Elasticsearch exists on this machine; the stand-in on PATH is noida-db
    behind a script that takes Elasticsearch's ``-E`` settings and records them.
    """
    from pytest_rollback.services.embedded import find_noida

    noida = find_noida()
    assert noida is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "elasticsearch"
    fake.write_text(
        f"""#!{sys.executable}
import os, sys
settings = dict(arg.split("=", 1) for arg in sys.argv[1:] if arg != "-E")
open({str(tmp_path / "args.txt")!r}, "w").write(" ".join(sys.argv[1:]) + " heap=" + os.environ["ES_JAVA_OPTS"])
os.execv({noida!r}, [{noida!r}, "start", "--data-dir", settings["path.data"], "--only", "elasticsearch",
                     "--host", settings["http.host"], "--elasticsearch-port", settings["http.port"]])
"""
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest(*INNER, "--rollback-provider=local", "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: elasticsearch via local at http://127.0.0.1:*"])
    args = (tmp_path / "args.txt").read_text()
    for expected in ("http.host=127.0.0.1", "discovery.type=single-node", "xpack.security.enabled=false",
                     "heap=-Xms512m -Xmx512m"):
        assert expected in args


N_PAR = 16
#: Each test writes to the same index name, waits so the workers overlap, and
#: checks that the index holds the module's seed plus its own write only.
PARALLEL = f"""
import os
import pathlib
import time

import pytest

LOG = pathlib.Path(__file__).with_name("workers.log")

@pytest.fixture(scope="module")
def seeded(es_client, elasticsearch_service):
    index = elasticsearch_service.extra["prefix"] + "items"
    es_client.index(index=index, id="seed", document={{"n": 0}}, refresh=True)
    return index

@pytest.mark.parametrize("i", range({N_PAR}))
def test_isolated(seeded, es_client, elasticsearch_service, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with LOG.open("a") as f:
        f.write(f"{{worker}} {{elasticsearch_service.provider}} {{elasticsearch_service.port}} {{seeded}}\\n")
    assert es_client.count(index=seeded)["count"] == 1
    es_client.index(index=seeded, id=f"{{worker}}-{{i}}", document={{"n": i}}, refresh=True)
    time.sleep(0.02)
    assert es_client.count(index=seeded)["count"] == 2
"""


def test_xdist_workers_get_a_server_each_when_embedded(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PARALLEL)
    result = pytester.runpytest_subprocess(*INNER, "-n", "2", "--rollback-provider=embedded", timeout=180)
    result.assert_outcomes(passed=N_PAR)
    seen = workers_log(pytester)
    assert set(seen) == {"gw0", "gw1"}, "both workers should have run tests"
    (w0,), (w1,) = seen["gw0"], seen["gw1"]
    assert w0[0] == w1[0] == "embedded" and w0[1] != w1[1], "each worker should have its own server"
    assert w0[2] == w1[2] == "items"


def test_xdist_workers_get_a_prefix_each_on_a_configured_server(pytester: pytest.Pytester, server: Service) -> None:
    client = Elasticsearch(server.url)
    client.index(index="gw5-kept", id="1", document={"not": "a worker's"}, refresh=True)
    pytester.makeini(INI)
    pytester.makepyfile(test_par=PARALLEL)
    result = pytester.runpytest_subprocess(
        *INNER, "-n", "2", f"--rollback-elasticsearch-url={server.url}", timeout=180
    )
    result.assert_outcomes(passed=N_PAR)
    port = str(server.port)
    assert workers_log(pytester) == {
        "gw0": {("external", port, "gw0-items")},
        "gw1": {("external", port, "gw1-items")},
    }
    assert list(client.indices.get(index="*", expand_wildcards="all")) == ["gw5-kept"]  # no trace either
    client.close()


@pytest.mark.docker
def test_docker_provider_starts_a_single_node(pytester: pytest.Pytester) -> None:
    from pytest_rollback.options import DEFAULT_IMAGES, StoreSettings
    from pytest_rollback.services import docker

    settings = StoreSettings("elasticsearch", "docker", None, DEFAULT_IMAGES["elasticsearch"], False, None, None)  # type: ignore[arg-type]
    reason = docker_unavailable(docker.elasticsearch_image(settings))
    if reason is not None:
        pytest.skip(f"the Docker provider cannot run Elasticsearch here: {reason}")
    pytester.makeini(INI)
    pytester.makepyfile(test_a=SCOPES, test_b=OTHER_MODULE)
    result = pytester.runpytest_subprocess(*INNER, "--rollback-provider=docker", "-p", "no:randomly", timeout=600)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*pytest-rollback: elasticsearch via docker at *"])
