"""The plugin's hooks as a plugin author uses them from a conftest."""

from __future__ import annotations

import pytest

from pytest_rollback.api import Service

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture(autouse=True)
def ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)


def test_dict_adapter_registered_by_hook_gets_every_scope_guarantee(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        from pytest_rollback.adapters.memory import DictAdapter

        DATA = {}

        def pytest_rollback_register(registry):
            registry.add_adapter(DictAdapter("mem", DATA))

        @pytest.fixture(scope="session")
        def session_seed():
            DATA["session"] = ["s"]

        @pytest.fixture(scope="session")
        def lazy():
            DATA["lazy"] = "L"
        """
    )
    pytester.makepyfile(
        test_a_module="""
        import pytest

        from conftest import DATA

        @pytest.fixture(scope="module")
        def mod_a():
            DATA["mod_a"] = {"n": 1}

        @pytest.fixture
        def func_seed():
            DATA["func"] = 1

        def test_a1(session_seed, mod_a):
            assert DATA == {"session": ["s"], "mod_a": {"n": 1}}
            DATA["session"].append("mutated in place")
            DATA["mod_a"]["n"] = 2
            DATA["written"] = True

        def test_a2(mod_a, func_seed):
            assert DATA == {"session": ["s"], "mod_a": {"n": 1}, "func": 1}

        def test_a3_lazy_session_fixture(mod_a, lazy):
            assert DATA == {"session": ["s"], "mod_a": {"n": 1}, "lazy": "L"}

        class TestClass:
            @pytest.fixture(scope="class")
            @classmethod
            def cls_seed(cls):
                DATA["cls"] = "c"

            def test_c1(self, mod_a, cls_seed):
                assert DATA["cls"] == "c"
                del DATA["cls"]

            def test_c2(self, mod_a, cls_seed):
                assert DATA["cls"] == "c"

        @pytest.mark.rollback(enabled=False)
        def test_a4_kept(mod_a):
            DATA["kept"] = 1

        def test_a5(mod_a):
            assert "cls" not in DATA
            assert DATA["kept"] == 1

        def test_a6_changes(mod_a, rollback):
            DATA["new"] = 1
            del DATA["kept"]
            DATA["mod_a"] = "other"
            changes = rollback.changes()["mem"]
            assert changes.added == {"new"}
            assert changes.removed == {"kept"}
            assert changes.modified == {"mod_a"}
            with rollback.branch():
                DATA.clear()
            assert DATA["new"] == 1
        """,
        test_b_other="""
        from conftest import DATA

        def test_b1(session_seed, lazy):
            assert DATA == {"session": ["s"], "lazy": "L"}
            DATA.clear()

        def test_b2():
            assert DATA == {"session": ["s"], "lazy": "L"}
        """,
    )
    pkg = pytester.mkpydir("test_c_pkg")
    (pkg / "conftest.py").write_text(
        "import pytest\nfrom conftest import DATA\n\n"
        "@pytest.fixture(scope='package')\ndef pkg_seed():\n    DATA['pkg'] = 'p'\n"
    )
    (pkg / "test_p.py").write_text(
        "from conftest import DATA\n\n"
        "def test_p1(pkg_seed):\n    assert DATA['pkg'] == 'p'\n    DATA['pkg'] = 'changed'\n\n"
        "def test_p2(pkg_seed):\n    assert DATA['pkg'] == 'p'\n"
    )
    pytester.makepyfile(
        test_d_last="""
        from conftest import DATA

        def test_last():
            assert "pkg" not in DATA and "mod_a" not in DATA and "kept" not in DATA
        """
    )
    result = pytester.runpytest(*INNER, "-v")
    result.assert_outcomes(passed=13)
    result.stdout.fnmatch_lines(["*test_a_module.py::test_a1 PASSED*", "*test_d_last.py::test_last PASSED*"])


def test_make_service_hook_provides_the_server(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeconftest(
        f"""
        from pytest_rollback import Service

        def pytest_rollback_make_service(store, config):
            if store == "redis":
                return Service(
                    name="redis", provider="company-cluster", url={server.url!r}, host={server.host!r},
                    port={server.port}, version="custom", extra={{"db": 0, "dbs": None}},
                )
        """
    )
    pytester.makepyfile(
        f"""
        def test_uses_it(redis_service, redis_client):
            assert redis_service.provider == "company-cluster"
            assert redis_service.port == {server.port}
            redis_client.set("k", "v")

        def test_rolled_back(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=local")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"pytest-rollback: redis via company-cluster at {server.url}, version custom, *"])
    result.stdout.no_fnmatch_line("*redis via local*")


def test_checkpoint_and_rollback_hooks_replace_the_strategy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import copy

        STORE = {}
        CALLS = []

        class KV:
            name = "kv"

            def checkpoint(self, label):
                raise AssertionError("the hook replaces this")

            def rollback(self, token):
                raise AssertionError("the hook replaces this")

        def pytest_rollback_register(registry):
            registry.add_adapter(KV())

        def pytest_rollback_checkpoint(adapter, label):
            if adapter.name == "kv":
                CALLS.append(("checkpoint", label))
                return ("my token", copy.deepcopy(STORE))

        def pytest_rollback_rollback(adapter, checkpoint):
            if adapter.name == "kv":
                tag, saved = checkpoint
                assert tag == "my token"
                CALLS.append(("rollback", tag))
                STORE.clear()
                STORE.update(copy.deepcopy(saved))
                return True
        """
    )
    pytester.makepyfile(
        test_kv="""
        import pytest

        from conftest import CALLS, STORE

        @pytest.fixture(scope="module")
        def seeded():
            STORE["seed"] = 1

        def test_write(seeded):
            STORE["w"] = 1

        def test_clean(seeded):
            assert STORE == {"seed": 1}
            assert ("checkpoint", "test test_kv.py::test_write") in CALLS
            assert ("checkpoint", "module fixture seeded") in CALLS
            assert ("rollback", "my token") in CALLS
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=2)


def test_after_rollback_hook_sees_every_restore(pytester: pytest.Pytester, server: Service) -> None:
    pytester.makeconftest(
        """
        from pytest_rollback.adapters.memory import DictAdapter

        REPORTS = []

        def pytest_rollback_register(registry):
            registry.add_adapter(DictAdapter("mem", {}))

        def pytest_rollback_after_rollback(adapter, checkpoint, report):
            assert report.store == adapter.name
            assert report.seconds >= 0
            REPORTS.append(report)

        def pytest_terminal_summary(terminalreporter):
            for r in REPORTS:
                terminalreporter.write_line(f"REPORT {r.store} {r.label} {r.mode} {r.restored}")
        """
    )
    pytester.makepyfile(
        test_restores="""
        def test_writes_one_key(redis_client):
            redis_client.set("k", "v")

        def test_writes_nothing(redis_client):
            pass
        """
    )
    result = pytester.runpytest(*INNER, f"--rollback-redis-url={server.url}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "REPORT redis test test_restores.py::test_writes_one_key incremental 1",
            "REPORT redis test test_restores.py::test_writes_nothing none 0",
        ],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(["REPORT mem test test_restores.py::test_writes_one_key restored 0"])
    result.stdout.fnmatch_lines(["REPORT redis redis start *", "REPORT mem mem start *"])


def test_registering_a_non_adapter_is_one_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        class NotAnAdapter:
            def __repr__(self):
                return "<NotAnAdapter>"

        def pytest_rollback_register(registry):
            registry.add_adapter(NotAnAdapter())
        """
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-rollback: <NotAnAdapter> is not an adapter: it needs a 'name' and "
            "'checkpoint(label)' and 'rollback(token)' methods (see pytest_rollback.Rollbackable)"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_add_adapter_raises_type_error(pytester: pytest.Pytester) -> None:
    """For code that calls the registry directly, the refusal is a ``TypeError``."""
    pytester.makeconftest(
        """
        import pytest

        def pytest_rollback_register(registry):
            with pytest.raises(TypeError, match="is not an adapter"):
                registry.add_adapter(42)
            print("REFUSED WITH TypeError")
        """
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["REFUSED WITH TypeError"])


def test_a_register_hook_in_a_late_conftest_is_reported_not_silently_ignored(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_root="def test_root():\n    pass\n")
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text(
        "from pytest_rollback.adapters.memory import DictAdapter\n\n"
        "def pytest_rollback_register(registry):\n"
        "    registry.add_adapter(DictAdapter('late', {}))\n"
    )
    (sub / "test_sub.py").write_text("def test_sub():\n    pass\n")
    result = pytester.runpytest(*INNER, "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*pytest-rollback: pytest_rollback_register in *sub*conftest.py is not called*"])
