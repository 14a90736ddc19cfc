"""A store whose restore fails is marked broken, and the rest of the run knows it.

The inner runs register, through the plugin's own hook, a dict adapter that can
be told to fail (its restore while the dict holds ``"poison"``, its checkpoint
while it holds ``"no-checkpoint"``) next to a plain one, so that each message is
pinned without a server. The same mechanism against real servers is in
``test_redis_restores.py``, ``test_mongo_restores.py`` and
``test_es_restores.py``.
"""

from __future__ import annotations

import json

import pytest

from pytest_rollback.engine import END_RESTORE_FAILED, STORE_BROKEN, USES_BROKEN_STORE

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")

CONFTEST = """
import json
import pathlib

import pytest

from pytest_rollback.adapters.memory import DictAdapter

MEM, OTHER = {}, {}
CHECKPOINTS = []


class Fragile(DictAdapter):
    def checkpoint(self, label=None):
        CHECKPOINTS.append(label)
        if "no-checkpoint" in self.data:
            raise RuntimeError("cannot checkpoint")
        return super().checkpoint(label)

    def rollback(self, token):
        if "poison" in self.data:
            if self.data["poison"] == "once":
                del self.data["poison"]
            raise RuntimeError("the store refused the restore")
        super().rollback(token)

    def close(self):
        pathlib.Path("closed-" + self.name).touch()


class Plain(DictAdapter):
    def close(self):
        pathlib.Path("closed-" + self.name).touch()


def pytest_rollback_register(registry):
    registry.add_adapter(Fragile("mem", MEM))
    registry.add_adapter(Plain("other", OTHER))


@pytest.fixture(scope="session")
def mem_service():
    return "the mem store"


def pytest_unconfigure(config):
    from pytest_rollback.plugin import get_session

    engine = get_session(config).engine
    pathlib.Path("engine.json").write_text(json.dumps({"broken": engine.broken, "unrestored": engine.unrestored}))


@pytest.fixture(scope="session")
def mem_client(mem_service):
    return MEM
"""


@pytest.fixture(autouse=True)
def project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST)


def _once(lines: list[str], line: str) -> None:
    """``line`` is in the output as a whole line, once (the short summary shows a cut copy)."""
    assert sum(text == line for text in lines) == 1, f"expected once: {line}"


def _no_traceback(result: pytest.RunResult) -> None:
    out = result.stdout.str()
    assert "Traceback" not in out
    assert "During handling" not in out
    assert "engine.py" not in out


BREAKS = """
import pytest

from conftest import CHECKPOINTS, MEM, OTHER

def test_1_breaks(mem_client):
    mem_client["poison"] = {poison!r}
    mem_client["written"] = 1
    OTHER["written"] = 1

def test_2_uses_it(mem_client):
    raise AssertionError("never runs")

@pytest.mark.rollback("mem")
def test_3_names_it_in_its_marker():
    raise AssertionError("never runs")

def test_4_does_not_use_it():
    assert OTHER == {{}}, "the other store was restored after test_1"
    assert CHECKPOINTS[-1] == "test test_a.py::test_1_breaks", "mem is no longer checkpointed"
    OTHER["x"] = 1

def test_5_others_are_still_rolled_back():
    assert OTHER == {{}}
"""


def test_a_failed_restore_marks_the_store_broken_for_the_rest_of_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=BREAKS.format(poison="once"))
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=3, errors=3)
    reason = "the restore after test_a.py::test_1_breaks failed: RuntimeError('the store refused the restore')"
    broken = STORE_BROKEN.format(store="mem", reason=reason)
    uses = USES_BROKEN_STORE.format(store="mem", reason=reason)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_1_breaks*",
            broken,
            "*ERROR at setup of test_2_uses_it*",
            uses,
            "*ERROR at setup of test_3_names_it_in_its_marker*",
            uses,
        ]
    )
    body = result.stdout.str().split("short test summary info")[0].splitlines()
    _once(body, broken)
    assert sum(text == uses for text in body) == 2
    _no_traceback(result)
    # the end-of-run restore to the start succeeded: nothing said, and the adapter closed as usual
    assert json.loads((pytester.path / "engine.json").read_text()) == {"broken": {"mem": reason}, "unrestored": {}}
    assert "end-of-run" not in result.stderr.str()
    assert (pytester.path / "closed-mem").exists()
    assert (pytester.path / "closed-other").exists()


def test_an_end_of_run_restore_that_fails_too_says_so_and_keeps_the_adapter_open(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=BREAKS.format(poison="always"))
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=3, errors=3)
    line = END_RESTORE_FAILED.format(store="mem", too=" too", what="RuntimeError('the store refused the restore')")
    _once(result.stderr.lines, line)
    engine = json.loads((pytester.path / "engine.json").read_text())
    assert set(engine["broken"]) == {"mem"}
    assert engine["unrestored"] == {"mem": "RuntimeError('the store refused the restore')"}
    assert not (pytester.path / "closed-mem").exists(), "close() may delete what a recovery needs"
    assert (pytester.path / "closed-other").exists()


def test_a_failed_checkpoint_marks_the_store_broken(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_b="""
        import pytest

        from conftest import MEM

        @pytest.fixture(scope="module")
        def unreadable():
            MEM["no-checkpoint"] = 1
            yield
            MEM.pop("no-checkpoint")

        def test_checkpoint_fails(unreadable, mem_client):
            raise AssertionError("never runs")

        def test_uses_it(mem_client):
            raise AssertionError("never runs")

        def test_does_not(unreadable):
            pass
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=1, errors=2)
    reason = "the checkpoint before test_b.py::test_checkpoint_fails failed: RuntimeError('cannot checkpoint')"
    broken = STORE_BROKEN.format(store="mem", reason=reason)
    uses = USES_BROKEN_STORE.format(store="mem", reason=reason)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_checkpoint_fails*", broken, "*ERROR at setup*", uses])
    _no_traceback(result)


def test_a_failed_checkpoint_of_a_fixture_level_names_the_level_and_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_b="""
        import pytest

        from conftest import MEM

        @pytest.fixture(scope="module")
        def unreadable():
            MEM["no-checkpoint"] = 1
            yield
            MEM.pop("no-checkpoint")

        @pytest.fixture(scope="module")
        def seeded(mem_client):
            mem_client["seed"] = 1

        def test_x(unreadable, seeded):
            raise AssertionError("never runs")
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(errors=1)
    reason = (
        "the checkpoint of module fixture seeded, during test_b.py::test_x failed: RuntimeError('cannot checkpoint')"
    )
    result.stdout.fnmatch_lines(["*ERROR at setup of test_x*", STORE_BROKEN.format(store="mem", reason=reason)])
    _no_traceback(result)


def test_a_failed_restore_of_a_fixture_level_names_the_level_and_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_c="""
        import pytest

        from conftest import MEM

        @pytest.fixture(scope="module")
        def seeded(mem_client):
            mem_client["seed"] = 1
            yield
            mem_client["poison"] = "once"  # its teardown leaves what the store refuses to restore

        def test_first(seeded, mem_client):
            mem_client["written"] = 1

        def test_last(seeded):
            pass
        """,
        test_d="""
        def test_later(mem_client):
            raise AssertionError("never runs")
        """,
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_last*",
            "pytest-rollback: mem: the restore to module fixture seeded, during test_c.py::test_last failed: "
            "RuntimeError('the store refused the restore'); mem is now marked broken: *",
            "*ERROR at setup of test_later*",
            "pytest-rollback: mem is marked broken (the restore to module fixture seeded, during test_c.py::test_last*",
        ]
    )
    _no_traceback(result)


def test_a_failed_restore_inside_a_test_fails_it_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_e="""
        def test_branch(rollback, mem_client):
            with rollback.branch("mine"):
                mem_client["poison"] = "once"
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(failed=1)
    reason = "the restore to mine, during test_e.py::test_branch failed: RuntimeError('the store refused the restore')"
    result.stdout.fnmatch_lines([STORE_BROKEN.format(store="mem", reason=reason)])
    _no_traceback(result)
