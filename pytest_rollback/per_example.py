"""Hypothesis, per example: every example (and every run of a state machine) starts from the test's starting state.

Hypothesis calls a ``@given`` test's ``hypothesis.inner_test`` once per example
(shrinking replays and the final replay of the failing example included), and
lets plugins replace it. While a test runs, :class:`PerExample` puts a level on
the engine's stack (the state after the test's fixtures set up) and swaps the
inner test for one that rolls every store back to that level after each
example: the next example starts from the same state, at the cost of what the
example wrote (its strategies' writes included, since they run after the level
is taken).

A ``RuleBasedStateMachine`` run as a test (``Machine.TestCase``, or
``run_state_machine_as_test`` inside a test) is one ``@given`` test per run of
the machine, built by ``hypothesis.stateful.get_state_machine_test``; while a
test runs, that function hands back a test whose runs are rolled back the same
way, each from the state the machine was started in.

When an example fails, its report gains a section ``rollback: what the failing
example changed``, per store, listed as the test's own section is.

Hypothesis's ``function_scoped_fixture`` health check fires for the
function-scoped fixtures a ``@given`` test asks for, since they are not reset
between examples. The plugin's own fixtures (``rollback``, the async clients)
are safe across examples, so while the test's only function-scoped fixtures are
the plugin's, the check is suppressed for that test; a fixture of the user's
still triggers it, naming that fixture.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from .api import RollbackError
from .fixtures import broken_fails
from .reporting import SECTION_FAILED, _error, _store_block

if TYPE_CHECKING:
    from .engine import Checkpoint, Engine

#: Title of the report section listing what the failing example changed.
EXAMPLE_SECTION_TITLE = "rollback: what the failing example changed"
#: The label of the level the examples of a test start from.
EXAMPLES_LABEL = "examples of {nodeid}"
#: The label of the level the runs of a state machine start from.
MACHINE_LABEL = "runs of {machine} in {nodeid}"
#: The health check a user's own function-scoped fixture still triggers (the plugin's are left out).
USER_FIXTURE = (
    "{nodeid!r} uses a function-scoped fixture {name!r}, which is not reset between the inputs generated "
    "by @given (pytest-rollback rolls the stores back after each example, and its own fixtures are safe "
    "across examples, but {name!r} runs once for all of them). Make it a context manager inside the test, "
    "or suppress this check with @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])."
)
#: What the plugin's fixtures are defined in: fixtures of these modules are safe across examples.
OWN_MODULE = "pytest_rollback."


class PerExample:
    """Registered next to the session: rolls the stores back after every Hypothesis example."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: The test running now, its level and the stores it rolls back (for state machines run inside it).
        self.item: pytest.Item | None = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """Around a test's call: per-example rollback for a ``@given`` test and for state machines it runs."""
        if "hypothesis" not in sys.modules or not self.engine.enabled:
            return (yield)
        cp: Checkpoint | None = getattr(item, "_rollback_checkpoint", None)
        if cp is None or not cp.alive:  # rollback is off for this test: its writes stay, example by example too
            return (yield)
        handle = getattr(getattr(item, "obj", None), "hypothesis", None)  # a doctest has no obj
        restore_settings = _quiet_own_fixtures(item) if handle is not None else None
        self.item = item
        unpatch = _patch_state_machines(self)
        try:
            if handle is None or inspect.iscoroutinefunction(handle.inner_test):
                return (yield)
            stores: tuple[str, ...] = getattr(item, "_rollback_stores", ())
            with self.examples(item, handle, EXAMPLES_LABEL.format(nodeid=item.nodeid), stores):
                return (yield)
        finally:
            unpatch()
            self.item = None
            if restore_settings is not None:
                restore_settings()

    @staticmethod
    def add_section(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """Add what the failing example changed to the call's report (from the session's
        ``pytest_runtest_makereport``)."""
        text = getattr(item, "_rollback_example_changes", None)
        if call.when == "call" and text and report.failed:
            report.sections.append((EXAMPLE_SECTION_TITLE, text))

    def examples(self, item: pytest.Item, handle: Any, label: str, stores: tuple[str, ...]) -> Any:
        """A context manager: while it is open, each call of ``handle.inner_test`` ends rolled back."""
        return _Examples(self.engine, item, handle, label, stores)


class _Examples:
    """The level the examples start from, and the inner test swapped for one that returns to it."""

    def __init__(self, engine: Engine, item: pytest.Item, handle: Any, label: str, stores: tuple[str, ...]) -> None:
        self.engine = engine
        self.item = item
        self.handle = handle
        self.label = label
        self.stores = stores or None
        self.cp: Checkpoint | None = None
        self.inner: Callable[..., Any] | None = None

    def __enter__(self) -> None:
        with broken_fails():
            self.cp = self.engine.push(self.label, "checkpoint")
        self.inner = inner = self.handle.inner_test
        self.handle.inner_test = self._wrap(inner)

    def _wrap(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        # functools.wraps keeps what Hypothesis reads off the inner test: its source, name and
        # signature (the example database's key) and the attributes it set on it.
        # No line of it runs only when an example fails: Hypothesis's explain phase would name it.
        @functools.wraps(inner)
        def one_example(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            try:
                return inner(*args, **kwargs)
            finally:
                self._back()

        return one_example

    def _back(self) -> None:
        """Roll the stores back to the examples' starting level (the next example starts there).

        Before that, in a replay Hypothesis makes to report a failing example
        (never traced by its explain phase), keep what the example changed.
        """
        cp = self.cp
        if cp is None or not cp.alive:
            return
        if _is_final():
            self._note_changes()
        with broken_fails():
            problems = self.engine.restore(cp, self.stores)
        if problems:
            raise RollbackError("; ".join(problems))

    def _note_changes(self) -> None:
        """Keep what the failing example changed, per store, for its report."""
        cp = self.cp
        if cp is None or not cp.alive:
            return
        try:
            lines: list[str] = []
            for name, adapter in sorted(self.engine.adapters.items()):
                token = self.engine.token(cp, name)
                if token is not None:
                    lines += _store_block(name, adapter, token)[0]
            text = "\n".join(lines)
        except Exception as exc:  # never hide the example's own failure
            text = SECTION_FAILED.format(error=_error(exc))
        self.item._rollback_example_changes = text  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        if self.inner is not None:
            self.handle.inner_test = self.inner
        cp, self.cp = self.cp, None
        if cp is not None and cp.alive:
            with broken_fails():
                problems = self.engine.pop(cp, self.stores)
            if problems:
                raise RollbackError("; ".join(problems))


def _is_final() -> bool:
    """Whether the example running now is one Hypothesis reports: a failing one replayed last, or an explicit one."""
    try:
        from hypothesis.control import current_build_context

        return bool(current_build_context().is_final)
    except Exception:  # another version of Hypothesis: keep every example's changes (the last one's win)
        return True


def _patch_state_machines(per_example: PerExample) -> Callable[[], None]:
    """While a test runs, make the state machine tests Hypothesis builds roll back after each run."""
    stateful = sys.modules.get("hypothesis.stateful")
    original = getattr(stateful, "get_state_machine_test", None)
    if stateful is None or original is None:
        return lambda: None

    @functools.wraps(original)
    def get_state_machine_test(state_machine_factory: Any, *args: Any, **kwargs: Any) -> Any:
        test = original(state_machine_factory, *args, **kwargs)
        item = per_example.item
        if item is None:
            return test
        name = getattr(state_machine_factory, "__name__", repr(state_machine_factory))
        label = MACHINE_LABEL.format(machine=name, nodeid=item.nodeid)
        stores: tuple[str, ...] = getattr(item, "_rollback_stores", ())

        @functools.wraps(test)
        def run_machine(*a: Any, **k: Any) -> Any:
            __tracebackhide__ = True
            with per_example.examples(item, test.hypothesis, label, stores):
                return test(*a, **k)

        return run_machine

    stateful.get_state_machine_test = get_state_machine_test  # type: ignore[attr-defined]

    def unpatch() -> None:
        stateful.get_state_machine_test = original  # type: ignore[attr-defined]

    return unpatch


def _quiet_own_fixtures(item: pytest.Item) -> Callable[[], None] | None:
    """Suppress ``function_scoped_fixture`` for a ``@given`` test whose function-scoped fixtures are the plugin's.

    Hypothesis checks the fixtures named in the test's signature. Where a
    fixture of the user's is among them, the check is made here, naming it
    (Hypothesis might name the plugin's first). Returns what puts the test's
    settings back, or None when nothing was changed.
    """
    try:
        from hypothesis import HealthCheck
        from hypothesis import settings as Settings
        from hypothesis.internal.healthcheck import fail_health_check
    except ImportError:  # pragma: no cover - another version of Hypothesis
        return None
    fn: Any = getattr(item.obj, "__func__", item.obj)  # type: ignore[attr-defined]
    settings = getattr(fn, "_hypothesis_internal_use_settings", None)
    if settings is None or HealthCheck.function_scoped_fixture in settings.suppress_health_check:
        return None
    own, theirs = _function_fixtures(item)
    if not own:
        return None
    if theirs:
        fail_health_check(
            settings, USER_FIXTURE.format(nodeid=item.nodeid, name=theirs[0]), HealthCheck.function_scoped_fixture
        )
    fn._hypothesis_internal_use_settings = Settings(
        parent=settings,
        suppress_health_check={HealthCheck.function_scoped_fixture, *settings.suppress_health_check},
    )

    def put_back() -> None:
        fn._hypothesis_internal_use_settings = settings

    return put_back


def _function_fixtures(item: pytest.Item) -> tuple[list[str], list[str]]:
    """The function-scoped fixtures named in the test's signature: the plugin's, and the others."""
    info = getattr(item, "_fixtureinfo", None)
    function = getattr(item, "function", None)
    if info is None or function is None:
        return [], []
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return [], []
    own: list[str] = []
    theirs: list[str] = []
    for name in names:
        defs = info.name2fixturedefs.get(name)
        if not defs or defs[-1].scope != "function":
            continue
        module = str(getattr(defs[-1].func, "__module__", ""))
        (own if module.startswith(OWN_MODULE) else theirs).append(name)
    return own, theirs
