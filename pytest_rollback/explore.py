"""Exploration of action sequences: ``rollback.explore(actions, invariants, max_depth=5)``.

From the test's state, every enabled action is run from every state reached,
level by level (breadth first), up to ``max_depth`` actions: all sequences of
one action, then of two, and so on. Each state reached is checkpointed on the
engine's stack, and the stores are rolled back to it before the next action is
tried from there. A state whose fingerprint (a hash of every started store's
``observe()``, plus the test's own ``key()``) was seen before is not explored
again. Every invariant is checked after every action; the first violation found
is a shortest sequence that reaches it, and is raised as
:class:`InvariantViolated` with what each step changed per store and a snippet
that replays it as an ordinary test.

Checkpoints nest (rolling back to one drops those taken after it), so a level
is reached again by walking down the tree of states already found, replaying
the action that first reached each state: every state is expanded once.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .reporting import _error, _store_block

if TYPE_CHECKING:
    from .engine import Checkpoint, Engine

#: Bad arguments: one line naming what was wrong and what is accepted.
BAD_ARGUMENT = "rollback.explore: {problem}; {accepted}"
ACCEPTED_ACTIONS = "actions: a non-empty list of callables (or Action(fn, when=..., name=...)) with distinct names"
ACCEPTED_INVARIANTS = "invariants: a list of callables that raise AssertionError or return False when violated"
ACCEPTED_DEPTH = "max_depth: an int >= 1"
ACCEPTED_BUDGET = "budget: None or an int >= 1 (the most action sequences to try)"
ACCEPTED_KEY = (
    "key: None or a callable that returns a hashable value (part of each state's fingerprint; "
    "required with observe=False, where it is all of it)"
)
#: The progress line (written while it runs, on a terminal, and once at the end).
PROGRESS = "pytest-rollback explore: {states} states, {sequences} sequences, {violations} violations, depth {depth}"
#: How often the progress line is rewritten at most, on a terminal (seconds).
PROGRESS_EVERY = 0.25
#: The end of the progress line: why the exploration stopped.
STOPPED = {
    "complete": "every state within depth {max_depth} explored",
    "depth": "max_depth {max_depth} reached",
    "budget": "budget of {budget} sequences spent",
    "violation": "violation found",
}
#: A store that cannot be fingerprinted: every state then counts as new.
NO_OBSERVE = "{store} has no observe(): states cannot be told apart, every state reached counts as new"


@dataclasses.dataclass(frozen=True)
class Action:
    """One action of an exploration: ``fn()`` acts on the system; ``when()`` says whether it is enabled.

    ``name`` (default: ``fn.__name__``) is how the action appears in sequences
    and reports. A bare callable in ``actions`` is ``Action(fn)``.
    """

    fn: Callable[[], object]
    when: Callable[[], object] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", repr(self.fn)))


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a violating sequence: the action's name and, per store, the lines of what it changed."""

    action: str
    changes: dict[str, list[str]]


@dataclasses.dataclass
class Exploration:
    """What ``rollback.explore`` did: returned when no invariant was violated."""

    #: Distinct states reached, the starting state included.
    states: int = 0
    #: Action sequences tried (each new action run from a state reached; replays not counted).
    sequences: int = 0
    #: Actions run again to reach a state's level once more (the cost of nested checkpoints).
    replays: int = 0
    #: The deepest level explored (number of actions in the longest sequence tried).
    depth: int = 0
    #: Why it stopped: ``"complete"`` (nothing new within ``max_depth``), ``"depth"``, ``"budget"`` or ``"violation"``.
    stopped: str = "complete"
    #: Sequences that reached a state seen before (not explored again).
    duplicates: int = 0
    #: How long it took, in seconds.
    seconds: float = 0.0
    #: Notes, e.g. a store without ``observe()``.
    notes: list[str] = dataclasses.field(default_factory=list)


class InvariantViolated(AssertionError):
    """An exploration found a sequence of actions after which an invariant fails (a shortest such sequence).

    ``sequence`` names its actions, ``steps`` what each changed per store,
    ``invariant`` the check that failed and ``error`` how; ``replay`` is a
    snippet that replays it as an ordinary test; ``exploration`` the counts.
    """

    def __init__(
        self, sequence: tuple[str, ...], steps: list[Step], invariant: str, error: str, replay: str,
        exploration: Exploration,
    ) -> None:
        self.sequence = sequence
        self.steps = steps
        self.invariant = invariant
        self.error = error
        self.replay = replay
        self.exploration = exploration
        super().__init__(self.describe())

    def describe(self) -> str:
        """The report: the shortest sequence, what each step changed, and how to replay it."""
        n = len(self.sequence)
        path = " -> ".join(self.sequence) if self.sequence else "(the starting state)"
        lines = [
            f"invariant {self.invariant} violated after {n} action{'s' if n != 1 else ''} "
            f"(a shortest sequence): {path}",
            f"  {self.error}",
        ]
        for i, step in enumerate(self.steps, 1):
            lines.append(f"  step {i}: {step.action}")
            changed = [line for store_lines in step.changes.values() for line in store_lines]
            lines += [f"    {line}" for line in changed] or ["    (no store changed)"]
        e = self.exploration
        lines.append(
            f"  explored {e.states} states, {e.sequences} sequences ({e.duplicates} reached a state seen before)"
        )
        lines.append("replay it as an ordinary test:")
        lines += ["  " + line for line in self.replay.splitlines()]
        return "\n".join(lines)


class _Violation(Exception):
    def __init__(self, path: tuple[int, ...], invariant: str, error: str) -> None:
        super().__init__(invariant)
        self.path = path
        self.invariant = invariant
        self.error = error


@dataclasses.dataclass(eq=False)
class _Node:
    """A distinct state: its depth, the path that first reached it, and the states first reached from it."""

    depth: int
    path: tuple[int, ...]
    parent: _Node | None = None
    children: list[tuple[int, _Node]] = dataclasses.field(default_factory=list)
    #: the depth of the deepest state below it (itself included)
    deepest: int = 0


class Explorer:
    """One exploration over an engine's stores; ``run()`` returns an :class:`Exploration` or raises."""

    def __init__(
        self,
        engine: Engine,
        actions: Sequence[Action],
        invariants: Sequence[Callable[[], object]],
        *,
        max_depth: int,
        budget: int | None,
        key: Callable[[], Hashable] | None,
        observe: bool,
        label: str,
        write: Callable[[str, bool], None] = lambda line, final: None,
        test: str = "test",
    ) -> None:
        self.engine = engine
        self.actions = list(actions)
        self.invariants = list(invariants)
        self.max_depth = max_depth
        self.budget = budget
        self.key = key
        self.observe = observe
        self.label = label
        self.write = write
        self.test = test
        self.result = Exploration()
        self.seen: set[bytes] = set()
        self._dirty = False
        self._shown = 0.0
        self._blind = 0  # states told apart by a counter: a store cannot be observed

    # -- the search ----------------------------------------------------------
    def run(self) -> Exploration:
        start = time.perf_counter()
        result = self.result
        root_cp = self.engine.push(self.label, "checkpoint")
        try:
            blind = [name for name, a in self.engine.adapters.items() if getattr(a, "observe", None) is None]
            if self.observe and blind:
                result.notes += [NO_OBSERVE.format(store=name) for name in blind]
                self._blind = 1
            root = _Node(0, ())
            try:
                self._check(())
                self.seen.add(self._fingerprint())
                result.states = 1
                for level in range(self.max_depth):
                    if root.deepest < level:
                        break  # no state at this level: every state within reach is explored
                    result.depth = level + 1
                    self._walk(root, root_cp, level)
                    if result.stopped == "budget":
                        break
                else:
                    if root.deepest >= self.max_depth:
                        result.stopped = "depth"
            except _Violation as found:
                result.stopped = "violation"
                result.seconds = time.perf_counter() - start
                self._progress(final=True, violations=1)
                raise self._report(found, root_cp) from None
            result.seconds = time.perf_counter() - start
            self._progress(final=True)
            return result
        finally:
            if root_cp.alive:
                self.engine.pop(root_cp)

    def _walk(self, node: _Node, cp: Checkpoint, level: int) -> None:
        """From ``node``'s state (checkpointed as ``cp``): expand it at ``level``, else go down to that level."""
        if node.depth == level:
            self._expand(node, cp)
            return
        for index, child in list(node.children):
            if child.deepest < level or self.result.stopped == "budget":
                continue
            self._back_to(cp)
            self._run(index, child.path)
            self.result.replays += 1
            child_cp = self.engine.push(f"{self.label}: {self._names(child.path)}", "checkpoint")
            try:
                self._walk(child, child_cp, level)
            finally:
                self.engine.pop(child_cp, restore=False)
                self._dirty = True

    def _expand(self, node: _Node, cp: Checkpoint) -> None:
        """Try every enabled action from ``node``'s state; a new state becomes a child of ``node``."""
        result = self.result
        for index, action in enumerate(self.actions):
            if self.budget is not None and result.sequences >= self.budget:
                result.stopped = "budget"
                return
            self._back_to(cp)
            if action.when is not None and not action.when():
                continue
            path = (*node.path, index)
            self._run(index, path)
            result.sequences += 1
            self._check(path)
            fingerprint = self._fingerprint()
            if fingerprint in self.seen:
                result.duplicates += 1
            else:
                self.seen.add(fingerprint)
                result.states += 1
                child = _Node(node.depth + 1, path, node, deepest=node.depth + 1)
                node.children.append((index, child))
                up: _Node | None = node
                while up is not None and up.deepest < child.depth:
                    up.deepest = child.depth
                    up = up.parent
            self._progress()

    def _back_to(self, cp: Checkpoint) -> None:
        if self._dirty:
            problems = self.engine.restore(cp)
            if problems:
                raise AssertionError("; ".join(problems))
            self._dirty = False

    def _run(self, index: int, path: tuple[int, ...]) -> None:
        self._dirty = True
        try:
            self.actions[index].fn()
        except Exception as exc:
            raise _Violation(path, f"(action {self.actions[index].name} raised)", _error(exc)) from exc

    def _check(self, path: tuple[int, ...]) -> None:
        for invariant in self.invariants:
            name = getattr(invariant, "__name__", repr(invariant))
            try:
                ok = invariant()
            except AssertionError as exc:
                raise _Violation(path, name, _error(exc)) from exc
            except Exception as exc:
                raise _Violation(path, name, "raised " + _error(exc)) from exc
            if ok is False:
                raise _Violation(path, name, "returned False")

    def _fingerprint(self) -> bytes:
        parts: list[Any] = []
        if self.observe:
            for name, adapter in sorted(self.engine.adapters.items()):
                observe = getattr(adapter, "observe", None)
                if observe is not None and name not in self.engine.broken:
                    parts.append((name, _canonical(observe().state)))
        if self.key is not None:
            parts.append(("key", _canonical(self.key())))
        if self._blind:
            self._blind += 1
            parts.append(("blind", self._blind))
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()

    # -- reporting -----------------------------------------------------------
    def _names(self, path: Iterable[int]) -> str:
        return " -> ".join(self.actions[i].name for i in path)

    def _report(self, found: _Violation, root_cp: Checkpoint) -> InvariantViolated:
        """Replay the violating sequence from the start, step by step, to say what each step changed."""
        self.engine.restore(root_cp)
        steps: list[Step] = []
        for index in found.path:
            step_cp = self.engine.push(f"{self.label}: step", "checkpoint")
            try:
                self.actions[index].fn()
            except Exception:  # the violation was this action raising: its changes are still listed
                pass
            finally:
                steps.append(Step(self.actions[index].name, self._changes(step_cp)))
                self.engine.pop(step_cp, restore=False)
        names = tuple(self.actions[i].name for i in found.path)
        return InvariantViolated(
            names, steps, found.invariant, found.error, self._replay(names, found.invariant), self.result
        )

    def _changes(self, cp: Checkpoint) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, adapter in sorted(self.engine.adapters.items()):
            token = self.engine.token(cp, name)
            if token is not None:
                lines = _store_block(name, adapter, token)[0]
                if lines:
                    out[name] = lines
        return out

    def _replay(self, names: tuple[str, ...], invariant: str) -> str:
        lines = [f"# in {self.test}, with its actions and invariants defined as there:"]
        lines += [f"{name}()" for name in names]
        if invariant.startswith("(action"):
            return "\n".join(lines)
        lines += [f"assert {inv.__name__}() is not False" for inv in self.invariants if hasattr(inv, "__name__")]
        return "\n".join(lines)

    def _progress(self, final: bool = False, violations: int = 0) -> None:
        now = time.perf_counter()
        if not final and now - self._shown < PROGRESS_EVERY:
            return
        self._shown = now
        r = self.result
        line = PROGRESS.format(states=r.states, sequences=r.sequences, violations=violations, depth=r.depth)
        if final:
            stopped = STOPPED[r.stopped].format(max_depth=self.max_depth, budget=self.budget)
            line += f" ({stopped}) in {r.seconds:.2f} s"
        self.write(line, final)


def _canonical(value: Any) -> Any:
    """A form of an observed value that compares and prints the same for equal states (mappings, sets sorted)."""
    if isinstance(value, Mapping):
        return ("{}", tuple(sorted(((_canonical(k), _canonical(v)) for k, v in value.items()), key=repr)))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((_canonical(v) for v in value), key=repr)))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value


def parse_actions(actions: object) -> list[Action]:
    """``actions`` as :class:`Action` objects; ``ValueError`` with one line when they are not usable."""
    if isinstance(actions, Mapping):
        actions = [Action(fn, name=str(name)) if not isinstance(fn, Action) else fn for name, fn in actions.items()]
    if isinstance(actions, (str, bytes)) or not isinstance(actions, Iterable):
        raise ValueError(BAD_ARGUMENT.format(problem=f"actions is {actions!r}", accepted=ACCEPTED_ACTIONS))
    out: list[Action] = []
    for each in actions:
        if isinstance(each, Action):
            out.append(each)
        elif callable(each):
            out.append(Action(each))
        else:
            raise ValueError(BAD_ARGUMENT.format(problem=f"{each!r} is not callable", accepted=ACCEPTED_ACTIONS))
        if out[-1].when is not None and not callable(out[-1].when):
            problem = f"the when= of {out[-1].name} is not callable"
            raise ValueError(BAD_ARGUMENT.format(problem=problem, accepted=ACCEPTED_ACTIONS))
    if not out:
        raise ValueError(BAD_ARGUMENT.format(problem="no actions were given", accepted=ACCEPTED_ACTIONS))
    names = [a.name for a in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problem = f"two actions are named {twice[0]!r} (name them with Action(fn, name=...))"
        raise ValueError(BAD_ARGUMENT.format(problem=problem, accepted=ACCEPTED_ACTIONS))
    return out


def check_arguments(
    invariants: object, max_depth: object, budget: object, key: object, observe: object = True
) -> list[Callable[[], object]]:
    """The invariants as a list, after checking every argument; ``ValueError`` with one line otherwise."""
    if callable(invariants):
        invariants = [invariants]
    if isinstance(invariants, (str, bytes)) or not isinstance(invariants, Iterable):
        raise ValueError(BAD_ARGUMENT.format(problem=f"invariants is {invariants!r}", accepted=ACCEPTED_INVARIANTS))
    checks = list(invariants)
    for each in checks:
        if not callable(each):
            raise ValueError(BAD_ARGUMENT.format(problem=f"{each!r} is not callable", accepted=ACCEPTED_INVARIANTS))
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(BAD_ARGUMENT.format(problem=f"max_depth is {max_depth!r}", accepted=ACCEPTED_DEPTH))
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(BAD_ARGUMENT.format(problem=f"budget is {budget!r}", accepted=ACCEPTED_BUDGET))
    if key is not None and not callable(key):
        raise ValueError(BAD_ARGUMENT.format(problem=f"key is {key!r}", accepted=ACCEPTED_KEY))
    if not observe and key is None:
        problem = "observe=False without a key: every state would look the same"
        raise ValueError(BAD_ARGUMENT.format(problem=problem, accepted=ACCEPTED_KEY))
    return checks


def terminal_writer(config: Any, write_line: Callable[[str], None]) -> Callable[[str, bool], None]:
    """What writes the progress line: rewritten in place on a terminal, once at the end elsewhere; nothing at ``-q``."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return lambda line, final: None
    live = bool(reporter.isatty)
    capman = config.pluginmanager.get_plugin("capturemanager")
    shown = [False]

    def write(line: str, final: bool) -> None:
        if not final and not live:
            return
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            if not final:
                if not shown[0]:
                    reporter.ensure_newline()
                    shown[0] = True
                reporter.rewrite(line)
                return
            if shown[0]:
                reporter.rewrite("")
                reporter.write("\r")
        write_line(line)

    return write
