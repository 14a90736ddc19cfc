"""``@pytest.mark.branch_from(test)``: tests that start from the state another test left.

The trees are resolved once per collection (``Branches``, registered as a plugin):
each child is put right after its parent's subtree position, so a parent's end
state is a level of the engine's stack that stays until the next test to run is
no longer in its subtree. A child whose parent did not pass, was not selected,
or whose state is no longer held is skipped with a reason naming the parent.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import pytest

from . import xdist_groups
from .api import RollbackError
from .fixtures import broken_fails
from .services import shared

if TYPE_CHECKING:
    from .engine import Checkpoint, Engine

BRANCH_MARKER_HELP = (
    "branch_from(test): start this test from the state `test` left at its end instead of from its "
    "scope's state; `test` is a test function name in this module (test_x, test_x[case], "
    "TestClass::test_x) or a node id (tests/test_a.py::test_x[case])"
)
BRANCH_ACCEPTED = (
    "accepted: @pytest.mark.branch_from(test) with test a test function name in this module "
    "(test_x, test_x[case], TestClass::test_x) or a node id (path/to/test_a.py::test_x[case])"
)
BAD_BRANCH = "{nodeid}: @pytest.mark.branch_from: {problem}; " + BRANCH_ACCEPTED
UNKNOWN_PARENT = "no test {name!r} in {where}"
AMBIGUOUS_PARENT = "{name!r} names {count} tests ({some}); name one of them"
CYCLE = "{nodeid}: @pytest.mark.branch_from: the branches form a cycle (each branches from the next): {path}"
SELF_PARENT = "a test cannot branch from itself"
#: ``@pytest.mark.branch_from(test_parent)``: pytest applies a mark called with a lone function to that
#: function, and the result, called with the child, runs the parent at import time
FUNCTION_GIVEN = (
    "{where}: @pytest.mark.branch_from({name}) was given the test function itself, so pytest marked "
    "{name} instead and called it with the test below; pass the name: @pytest.mark.branch_from(\"{name}\")"
)
NO_PARENT_NAMED = (
    "no test is named (if the test function itself was given, pytest marked that function instead); "
    "pass the parent's name as a string"
)

SKIP_FAILED = "branch_from: parent {parent} failed"
SKIP_ERRORED = "branch_from: parent {parent} errored"
SKIP_SKIPPED = "branch_from: parent {parent} was skipped"
SKIP_NOT_SELECTED = "branch_from: parent {parent} was not selected in this run (-k, -m, --deselect or a narrower path)"
SKIP_NOT_SELECTED_LF = (
    "branch_from: parent {parent} was not selected in this run (--lf selects only the tests that failed "
    "last time); run the module, or name the parent too: pytest {parent} {child}"
)
SKIP_NOT_SELECTED_SW = (
    "branch_from: parent {parent} was not selected in this run (--sw starts at the test that failed last time); "
    "run with --sw-reset, or name the parent too: pytest {parent} {child}"
)
SKIP_OTHER_WORKER = (
    "branch_from: parent {parent} did not run in this process (another pytest-xdist worker); "
    "run with --dist load, loadscope, loadfile or loadgroup (pytest-rollback keeps each tree on one worker)"
)
SKIP_NOT_RUN = "branch_from: parent {parent} has not run before it (a plugin reordered the run after pytest-rollback)"
SKIP_NOT_HELD = (
    "branch_from: the end state of parent {parent} is no longer held: other tests ran in between "
    "(a plugin reordered the run, or the parent's module or class fixtures ended)"
)


@dataclasses.dataclass
class _Node:
    """What the run knows about one test of a branch tree."""

    item: pytest.Item
    parent: pytest.Item | None = None
    #: the test's one-line error (bad marker, unknown parent, cycle), raised at set-up
    error: str | None = None
    #: why the parent cannot be used, when it is known at collection (not selected)
    skip: str | None = None
    #: outcome per phase ("setup", "call", "teardown") -> "passed" | "failed" | "skipped"
    outcome: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the test's own level, kept at its end while the next test is in its subtree
    held: Checkpoint | None = None
    stores: tuple[str, ...] = ()
    #: whether the test had a level of its own (rollback enabled for it)
    had_level: bool = False


class Branches:
    """The branch trees of the run; holds each parent's end state while its subtree runs."""

    def __init__(self, config: pytest.Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.nodes: dict[pytest.Item, _Node] = {}
        self.nextitem: pytest.Item | None = None
        self.held: list[_Node] = []

    # -- collection ----------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        """A module whose import ran a parent given as a function to ``branch_from``: one line saying so."""
        report = yield
        call = getattr(report, "call", None)  # pytest keeps it there until the report is logged
        if report.failed and isinstance(collector, pytest.Module) and call is not None and call.excinfo is not None:
            name = _function_given(call.excinfo.tb)
            if name is not None:
                report.longrepr = FUNCTION_GIVEN.format(where=collector.nodeid, name=name)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> Generator[None, Any, Any]:
        """Resolve the trees among all collected tests, then order what remains after deselection."""
        self.resolve_all(items)  # before -k, -m and --deselect remove anything
        result = yield
        if self.nodes:
            items[:] = self.order(items)
        return result

    def resolve_all(self, items: list[pytest.Item]) -> None:
        """Resolve every ``branch_from`` against ``items``; find cycles; group trees for xdist."""
        self.nodes = {}
        index: _Index | None = None
        for item in items:
            if item.get_closest_marker("branch_from") is None:
                continue
            node = self._node(item)
            if index is None:
                index = _Index(items)
            try:
                node.parent = resolve(item, index)
            except _NotSelected as exc:
                node.skip = self._not_selected(exc.name, item)
            except _BadBranch as exc:
                node.error = BAD_BRANCH.format(nodeid=item.nodeid, problem=exc)
            if node.parent is not None:
                self._node(node.parent)
        self._find_cycles()
        self._tell_scheduler(items)

    def _not_selected(self, parent: str, child: pytest.Item) -> str:
        """The skip reason of a child whose parent is not in the run, naming what narrowed it when pytest did."""
        option = self.config.option
        if getattr(option, "lf", False):
            return SKIP_NOT_SELECTED_LF.format(parent=parent, child=child.nodeid)
        if getattr(option, "stepwise", False) and not getattr(option, "stepwise_reset", False):
            return SKIP_NOT_SELECTED_SW.format(parent=parent, child=child.nodeid)
        return SKIP_NOT_SELECTED.format(parent=parent)

    def _node(self, item: pytest.Item) -> _Node:
        node = self.nodes.get(item)
        if node is None:
            node = self.nodes[item] = _Node(item)
        return node

    def _find_cycles(self) -> None:
        for start in list(self.nodes.values()):
            path: list[_Node] = []
            node: _Node | None = start
            while node is not None and node.error is None and node not in path:
                path.append(node)
                node = self.nodes.get(node.parent) if node.parent is not None else None
            if node is not None and node in path:  # back to a test already on the path: a cycle
                loop = path[path.index(node):]
                names = " -> ".join(n.item.nodeid for n in [*loop, node])
                for member in loop:
                    member.error = CYCLE.format(nodeid=member.item.nodeid, path=names)

    def _root(self, node: _Node) -> _Node:
        seen = {node.item}
        while node.parent is not None and node.error is None:
            parent = self.nodes[node.parent]
            if parent.item in seen:
                break
            seen.add(parent.item)
            node = parent
        return node

    def _tell_scheduler(self, items: list[pytest.Item]) -> None:
        """Under pytest-xdist, record for the controller's scheduler the root of every tree member.

        Under ``--dist loadgroup``, also every test's ``xdist_group``.
        """
        workerinput = getattr(self.config, "workerinput", None) or {}
        shared_dir = workerinput.get(shared.WORKER_INPUT_KEY)
        if not shared_dir:
            return
        roots = {node.item.nodeid: self._root(node).item.nodeid for node in self.nodes.values()}
        groups: dict[str, str] = {}
        if getattr(self.config.option, "loadgroup", False):
            for item in items:
                group = xdist_groups.group_name(item)
                if group is not None:
                    groups[item.nodeid] = group
        if roots or groups:
            xdist_groups.write_units(shared_dir, str(workerinput.get("workerid")), roots, groups)

    def order(self, items: list[pytest.Item]) -> list[pytest.Item]:
        """``items`` with every child moved right after its parent (siblings in order, each with its subtree)."""
        selected = set(items)
        children: dict[pytest.Item, list[pytest.Item]] = {}
        for item in items:
            node = self.nodes.get(item)
            if node is not None and node.parent in selected and node.error is None:
                children.setdefault(node.parent, []).append(item)
            elif node is not None and node.parent is not None and node.parent not in selected and not node.skip:
                node.skip = self._not_selected(node.parent.nodeid, item)
        out: list[pytest.Item] = []
        placed: set[pytest.Item] = set()

        def place(item: pytest.Item) -> None:
            stack = [item]
            while stack:
                current = stack.pop()
                if current in placed:
                    continue
                placed.add(current)
                out.append(current)
                stack.extend(reversed(children.get(current, [])))

        for item in items:
            node = self.nodes.get(item)
            if node is not None and node.parent in selected and node.error is None:
                continue  # placed after its parent
            place(item)
        out += [item for item in items if item not in placed]  # cycles: they error at set-up
        return out

    # -- running -------------------------------------------------------------
    def note_outcome(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Each phase's outcome of a branch's test (from the session's ``pytest_runtest_makereport``)."""
        node = self.nodes.get(item)
        if node is not None:
            outcome = report.outcome
            if hasattr(report, "wasxfail"):
                outcome = "failed" if report.skipped else "passed"  # xfailed: the state is a failure's
            node.outcome[report.when] = outcome

    def after_teardown(self) -> None:
        """After a test's fixtures ended (the session's ``pytest_runtest_teardown``, which sets
        :attr:`nextitem` before them): restore held states the next test does not need. Normally done
        in the test's own teardown; here for tests that never started (skipped children)."""
        with broken_fails():
            problems = self.release_unneeded()
        if problems:
            raise RollbackError("; ".join(problems))

    def start(self, item: pytest.Item) -> None:
        """At a test's set-up: fail or skip it when its branch cannot start from its parent."""
        node = self.nodes.get(item)
        if node is None or node.parent is None and node.error is None and node.skip is None:
            return
        if node.error is not None:
            pytest.fail(node.error, pytrace=False)
        if node.skip is not None:
            pytest.skip(node.skip)
        parent = self.nodes[node.parent]  # type: ignore[index]
        name = parent.item.nodeid
        if not parent.outcome:
            worker = getattr(self.config, "workerinput", None) is not None
            pytest.skip((SKIP_OTHER_WORKER if worker else SKIP_NOT_RUN).format(parent=name))
        phases = [parent.outcome.get(w) for w in ("setup", "call", "teardown")]
        if parent.outcome.get("setup") == "failed" or parent.outcome.get("teardown") == "failed":
            pytest.skip(SKIP_ERRORED.format(parent=name))
        if "failed" in phases:
            pytest.skip(SKIP_FAILED.format(parent=name))
        if "skipped" in phases:
            pytest.skip(SKIP_SKIPPED.format(parent=name))
        if self.engine.enabled and parent.had_level and (parent.held is None or not parent.held.alive):
            pytest.skip(SKIP_NOT_HELD.format(parent=name))

    def end(self, item: pytest.Item, cp: Checkpoint, stores: tuple[str, ...]) -> list[str]:
        """At a test's teardown: keep its level for a child that runs next, else restore it.

        Returns the lines of any verification failure of the levels restored.
        """
        node = self.nodes.get(item)
        problems: list[str] = []
        if node is not None:
            node.had_level = True
            passed = node.outcome.get("setup") == "passed" and node.outcome.get("call") == "passed"
            if passed and self._in_subtree(self.nextitem, node):
                node.held, node.stores = cp, stores
                self.held.append(node)
                return self.release_unneeded()
        problems += self.engine.pop(cp, stores=stores or None)
        problems += self.release_unneeded()
        return problems

    def release_unneeded(self) -> list[str]:
        """Restore (innermost first) every held parent state the next test does not branch from."""
        problems: list[str] = []
        while self.held and not self._in_subtree(self.nextitem, self.held[-1]):
            node = self.held.pop()
            cp, node.held = node.held, None
            if cp is not None and cp.alive:
                problems += self.engine.pop(cp, stores=node.stores or None)
        return problems

    def _in_subtree(self, item: pytest.Item | None, ancestor: _Node) -> bool:
        """Whether ``item`` descends from ``ancestor`` through ``branch_from`` links."""
        seen: set[pytest.Item] = set()
        node = self.nodes.get(item) if item is not None else None
        while node is not None and node.parent is not None and node.item not in seen:
            seen.add(node.item)
            if node.parent is ancestor.item:
                return True
            node = self.nodes.get(node.parent)
        return False


class _BadBranch(Exception):
    """The marker cannot be resolved: the message is the problem, without the test's name."""


class _NotSelected(Exception):
    """The parent exists but was not collected in this run."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _signature(test: object) -> object:
    return test


def _function_given(tb: Any) -> str | None:
    """The name of a function of the module being imported that carries a ``branch_from`` mark without
    arguments: what ``@pytest.mark.branch_from(test_parent)`` leaves (None when there is none)."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "<module>":
            for name, value in list(frame.f_globals.items()):
                marks = getattr(value, "pytestmark", None) if callable(value) else None
                if marks and any(m.name == "branch_from" and not m.args and not m.kwargs for m in marks):
                    return str(name)
        tb = tb.tb_next
    return None


class _Index:
    """The collected tests by node id and by file, built once: a lookup then costs its file's size, not the run's."""

    def __init__(self, items: Iterable[pytest.Item]) -> None:
        self.by_id: dict[str, pytest.Item] = {}
        self.by_file: dict[str, list[pytest.Item]] = {}
        for item in items:
            self.by_id[item.nodeid] = item
            self.by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)


def resolve(item: pytest.Item, index: _Index) -> pytest.Item:
    """The test that ``item``'s ``branch_from`` names, among the collected tests of ``index``."""
    mark = item.get_closest_marker("branch_from")
    assert mark is not None
    if not mark.args and not mark.kwargs:
        raise _BadBranch(NO_PARENT_NAMED)
    try:
        name = _signature(*mark.args, **mark.kwargs)
    except TypeError as exc:
        raise _BadBranch(str(exc).replace("_signature()", "branch_from()")) from None
    if not isinstance(name, str) or not name.strip():
        raise _BadBranch(f"{name!r} is not a test name or node id")
    if "::" in name and name.split("::", 1)[0].endswith(".py"):  # a node id
        parent = index.by_id.get(name)
        found = [parent] if parent is not None else []
        if not found:
            if name.split("::", 1)[0] not in index.by_file:
                raise _NotSelected(name)  # its file was not collected in this run
            raise _BadBranch(UNKNOWN_PARENT.format(name=name, where="the collected tests"))
    else:
        module = item.nodeid.split("::", 1)[0]
        same_file = index.by_file.get(module, [])
        found = [other for other in same_file if other.nodeid.endswith("::" + name)]
        if len(found) > 1:  # prefer the child's own class
            own = item.nodeid.rsplit("::", 1)[0]
            same_class = [other for other in found if other.nodeid.rsplit("::", 1)[0] == own]
            found = same_class or found
        if not found:
            found = [other for other in same_file if other.nodeid.rsplit("::", 1)[-1].split("[", 1)[0] == name]
            if len(found) > 1:
                some = ", ".join(other.nodeid.rsplit("::", 1)[-1] for other in found[:3])
                raise _BadBranch(AMBIGUOUS_PARENT.format(name=name, count=len(found), some=some))
        if not found:
            base = name.rsplit("::", 1)[-1].split("[", 1)[0]
            if hasattr(getattr(item, "module", None), base) or _in_class(item, name):
                raise _NotSelected(f"{module}::{name}")
            raise _BadBranch(UNKNOWN_PARENT.format(name=name, where=module))
    if len(found) > 1:
        some = ", ".join(other.nodeid for other in found[:3])
        raise _BadBranch(AMBIGUOUS_PARENT.format(name=name, count=len(found), some=some))
    if found[0] is item:
        raise _BadBranch(SELF_PARENT)
    return found[0]


def _in_class(item: pytest.Item, name: str) -> bool:
    """Whether ``Class::test`` names a method of a class in the item's module."""
    if "::" not in name:
        return False
    cls_name, _, method = name.rpartition("::")
    cls = getattr(getattr(item, "module", None), cls_name, None)
    return cls is not None and hasattr(cls, method.split("[", 1)[0])
