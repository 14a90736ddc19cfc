"""The ``rollback`` marker as a user writes it: validation, enabled, stores, verify."""

from __future__ import annotations

from collections.abc import Callable

import pytest

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
ACCEPTED = "accepted: @pytest.mark.rollback(*stores, enabled=True, verify=False) with stores among {names}"

#: A conftest with two extra in-memory stores: ``mem`` (a correct DictAdapter) and
#: ``broken`` (its rollback does nothing, so verification must catch it).
ADAPTERS_CONFTEST = """
import pytest

from pytest_rollback import Observation
from pytest_rollback.adapters.memory import DictAdapter

MEM = {"seed": 1}
BROKEN = {}


class BrokenAdapter:
    name = "broken"

    def checkpoint(self, label):
        return dict(BROKEN)

    def rollback(self, token):
        pass  # deliberately forgets to restore

    def observe(self):
        return Observation("broken", dict(BROKEN))


def pytest_rollback_register(registry):
    registry.add_adapter(DictAdapter("mem", MEM))
    registry.add_adapter(BrokenAdapter())
"""


def test_strict_markers_accepts_the_rollback_marker(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.rollback
        def test_bare():
            pass

        @pytest.mark.rollback("redis", enabled=True, verify=False)
        def test_full():
            pass
        """
    )
    result = run("--strict-markers")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest(*INNER, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.rollback(*stores, enabled=True, verify=False): *"])


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ("enable=False", "rollback() got an unexpected keyword argument 'enable'"),
        ("enabled='no'", "enabled='no' is not True or False"),
        ("verify=1", "verify=1 is not True or False"),
        ("'postgres'", "unknown store 'postgres'"),
        ("3", "store 3 is not a store name"),
    ],
)
def test_bad_marker_arguments_fail_that_test_at_setup_with_one_line(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], args: str, problem: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.rollback({args})
        def test_marked(redis_client):
            redis_client.set("never", "written")

        def test_unmarked(redis_client):
            assert redis_client.keys() == []
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, errors=1)
    accepted = ACCEPTED.format(names="'elasticsearch', 'mongo', 'redis'")
    line = f"test_bad.py::test_marked: @pytest.mark.rollback: {problem}; " + accepted
    result.stdout.fnmatch_lines(["*ERROR at setup of test_marked*", line])
    # one line: no traceback, no source lines of the plugin
    assert "Traceback" not in result.stdout.str()
    assert "parse_rollback_marker" not in result.stdout.str()
    # (the short summary may repeat it, cut or not depending on the terminal width)
    body = result.stdout.str().split("short test summary info")[0]
    assert body.count("@pytest.mark.rollback: ") == 1


def test_enabled_false_keeps_writes_for_the_module_only(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_a_keep="""
        import pytest

        @pytest.mark.rollback(enabled=False)
        def test_keep(redis_client):
            redis_client.set("kept", "1")

        def test_sees_kept(redis_client):
            assert redis_client.keys() == [b"kept"]
            redis_client.set("not:kept", "x")
            redis_client.delete("kept")

        def test_still_sees_kept(redis_client):
            assert redis_client.keys() == [b"kept"]
        """,
        test_b_seeded="""
        import pytest

        @pytest.fixture(scope="module")
        def seeded(redis_client):
            redis_client.set("seed", "s")

        @pytest.mark.rollback(enabled=False)
        def test_keep(seeded, redis_client):
            redis_client.set("kept:b", "1")

        def test_sees_kept(seeded, redis_client):
            assert sorted(redis_client.keys()) == [b"kept:b", b"seed"]
        """,
        test_c_after="""
        def test_nothing_left(redis_client):
            assert redis_client.keys() == []
        """,
    )
    result = run("-v")
    result.assert_outcomes(passed=6)


def test_marker_with_store_names_restricts_rollback_to_them(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(ADAPTERS_CONFTEST)
    pytester.makepyfile(
        test_a_restrict="""
        import pytest

        from conftest import MEM

        @pytest.mark.rollback("redis")
        def test_only_redis(redis_client):
            redis_client.set("r", "1")
            MEM["m"] = 1

        def test_mem_kept_redis_undone(redis_client):
            assert redis_client.keys() == []
            assert MEM == {"seed": 1, "m": 1}

        @pytest.mark.rollback("mem")
        def test_only_mem(redis_client):
            redis_client.set("r2", "1")
            MEM["m2"] = 2

        def test_redis_kept_mem_undone(redis_client):
            assert redis_client.keys() == [b"r2"]
            assert MEM == {"seed": 1, "m": 1}
        """,
        test_b_after="""
        from conftest import MEM

        def test_module_end_undid_both(redis_client):
            assert redis_client.keys() == []
            assert MEM == {"seed": 1}
        """,
    )
    result = run("-v")
    result.assert_outcomes(passed=5)


def test_verify_passes_on_a_correct_adapter_and_fails_teardown_on_a_broken_one(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(ADAPTERS_CONFTEST)
    pytester.makepyfile(
        test_verify="""
        import pytest

        from conftest import BROKEN, MEM

        @pytest.mark.rollback(verify=True)
        def test_correct_stores(redis_client):
            redis_client.set("k", "v")
            redis_client.rpush("l", 1, 2)
            MEM["x"] = [1, 2]

        @pytest.mark.rollback(verify=True)
        def test_broken_store():
            BROKEN["left"] = "behind"

        def test_unverified_broken_store_goes_unnoticed():
            BROKEN["more"] = 1
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_broken_store*",
            "pytest-rollback verify: broken differs from the checkpoint after restore (1 difference(s)): "
            "'left': absent at checkpoint, now 'behind'",
        ]
    )
    assert "ERROR at teardown of test_correct_stores" not in result.stdout.str()


def test_rollback_verify_option_verifies_every_test(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    pytester.makeconftest(ADAPTERS_CONFTEST)
    pytester.makepyfile(
        test_verify_all="""
        from conftest import BROKEN, MEM

        def test_correct_stores(redis_client):
            redis_client.hset("h", "f", "v")
            MEM["seed"] = 2

        def test_broken_store():
            BROKEN["b"] = 1

        def test_nothing_written():
            pass
        """
    )
    result = run("-v", "--rollback-verify")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_broken_store*",
            "pytest-rollback verify: broken differs from the checkpoint after restore (1 difference(s)): "
            "'b': absent at checkpoint, now 1",
        ]
    )
    assert "ERROR at teardown of test_correct_stores" not in result.stdout.str()
