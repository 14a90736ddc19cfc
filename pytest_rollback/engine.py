"""The checkpoint stack, aligned with pytest's scopes. Knows no store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from .api import Changes, Observation, RestoreReport, Rollbackable, RollbackError


class Checkpoint:
    """A point the stores can be rolled back to (returned by ``rollback.checkpoint()``)."""

    def __init__(self, label: str | None, kind: str, tokens: dict[str, Any], owner: Any = None) -> None:
        #: What the checkpoint is for, e.g. ``"test tests/test_a.py::test_x"``.
        self.label = label
        #: ``"session"``, ``"package"``, ``"module"``, ``"class"`` (fixture scopes),
        #: ``"test"`` or ``"checkpoint"`` (taken by the test itself).
        self.kind = kind
        self.tokens = tokens
        self.owner = owner
        self.alive = True
        self.observations: dict[str, Observation] = {}

    def __repr__(self) -> str:
        state = "" if self.alive else ", released"
        return f"<Checkpoint {self.label!r} ({self.kind}{state})>"


class Engine:
    """Keeps a stack of checkpoints over every active adapter.

    ``push`` takes a checkpoint of every adapter; ``pop`` rolls back to it and
    releases it; adapters activated later treat every older checkpoint as the
    state they had when they were activated.
    """

    def __init__(self, hook: Any, *, enabled: bool = True) -> None:
        self.hook = hook
        self.enabled = enabled
        self.adapters: dict[str, Rollbackable] = {}
        self.roots: dict[str, Any] = {}
        self.stack: list[Checkpoint] = []
        self.reports: list[tuple[str | None, RestoreReport]] = []
        #: Called with a level whose owner (a fixture) must be torn down before
        #: an older level can be restored; set by the plugin.
        self.finish_owner: Callable[[Checkpoint], None] = lambda cp: None

    # -- adapters ------------------------------------------------------------
    def activate(self, adapter: Rollbackable) -> None:
        """Start checkpointing ``adapter``: its state now is what every open level restores to."""
        if adapter.name in self.adapters:
            raise ValueError(f"pytest-rollback: a store named {adapter.name!r} is already active")
        self.adapters[adapter.name] = adapter
        if self.enabled:
            self.roots[adapter.name] = self._checkpoint(adapter, f"{adapter.name} start")

    def deactivate(self, name: str) -> None:
        """Restore ``name`` to its state at activation (nothing the plugin did stays) and close it."""
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            return
        try:
            root = self.roots.pop(name, None)
            if root is not None:
                self._rollback(adapter, root, f"{name} start")
        finally:
            for cp in self.stack:
                cp.tokens.pop(name, None)
            close = getattr(adapter, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        for name in list(self.adapters)[::-1]:
            self.deactivate(name)

    # -- the stack -----------------------------------------------------------
    def push(self, label: str | None, kind: str, owner: Any = None, verify: bool = False) -> Checkpoint:
        """Checkpoint every active adapter and put the result on the stack."""
        tokens = {name: self._checkpoint(a, label) for name, a in self.adapters.items()}
        cp = Checkpoint(label, kind, tokens, owner)
        if verify:
            for name, a in self.adapters.items():
                observe = getattr(a, "observe", None)
                if observe is not None:
                    cp.observations[name] = observe()
        self.stack.append(cp)
        return cp

    def restore(self, cp: Checkpoint, stores: Iterable[str] | None = None) -> list[str]:
        """Roll back to ``cp``, which stays on the stack; newer levels are dropped.

        Returns the lines of any verification failure.
        """
        self._check(cp)
        self._drop_above(cp)
        names = list(self.adapters) if stores is None else [n for n in stores if n in self.adapters]
        problems: list[str] = []
        for name in names:
            adapter = self.adapters[name]
            token = self.token(cp, name)
            if token is None:
                continue
            self._rollback(adapter, token, cp.label)
            before = cp.observations.get(name)
            if before is not None:
                after = adapter.observe()  # type: ignore[attr-defined]
                if after.state != before.state:
                    diff = before.diff(after)
                    problems.append(
                        f"pytest-rollback verify: {name} differs from the checkpoint after restore "
                        f"({len(diff)} difference(s)): " + "; ".join(diff)
                    )
        return problems

    def pop(self, cp: Checkpoint, stores: Iterable[str] | None = None, restore: bool = True) -> list[str]:
        """Roll back to ``cp`` (only ``stores``, if given) and release it."""
        if not cp.alive:
            return []
        if restore:
            problems = self.restore(cp, stores)
        else:
            self._drop_above(cp)
            problems = []
        self._release(cp)
        return problems

    def _drop_above(self, cp: Checkpoint) -> None:
        while self.stack and self.stack[-1] is not cp:
            top = self.stack[-1]
            if top.owner is not None:
                self.finish_owner(top)  # tears the fixture down, which pops its level
                if self.stack and self.stack[-1] is top:
                    self._release(top)
            else:
                self._release(top)

    def _release(self, cp: Checkpoint) -> None:
        if cp in self.stack:
            self.stack.remove(cp)
        cp.alive = False
        for name, token in cp.tokens.items():
            adapter = self.adapters.get(name)
            release = getattr(adapter, "release", None)
            if release is not None:
                release(token)

    def _check(self, cp: Checkpoint) -> None:
        if not cp.alive or cp not in self.stack:
            raise RollbackError(f"pytest-rollback: checkpoint {cp.label!r} was already released or rolled past")

    def token(self, cp: Checkpoint, name: str) -> Any:
        """``name``'s token at ``cp``: its own, else (the store was activated later) the store's start."""
        return cp.tokens.get(name, self.roots.get(name))

    def find_owner(self, owner: Any) -> Checkpoint | None:
        for cp in reversed(self.stack):
            if cp.owner is owner:
                return cp
        return None

    # -- reports -------------------------------------------------------------
    def changes(self, since: Checkpoint) -> dict[str, Changes]:
        out: dict[str, Changes] = {}
        for name, adapter in self.adapters.items():
            fn = getattr(adapter, "changes", None)
            token = self.token(since, name)
            if fn is not None and token is not None:
                out[name] = fn(token)
        return out

    # -- the hooks -----------------------------------------------------------
    def _checkpoint(self, adapter: Rollbackable, label: str | None) -> Any:
        try:
            token = self.hook.pytest_rollback_checkpoint(adapter=adapter, label=label)
        except RollbackError:
            raise
        except Exception as exc:
            raise RollbackError(f"pytest-rollback: {adapter.name}: checkpoint failed: {exc!r}") from exc
        if token is None:
            raise RollbackError(f"pytest-rollback: {adapter.name}: no implementation returned a checkpoint")
        return token

    def _rollback(self, adapter: Rollbackable, token: Any, label: str | None) -> RestoreReport:
        start = time.perf_counter()
        try:
            result = self.hook.pytest_rollback_rollback(adapter=adapter, checkpoint=token)
        except RollbackError:
            raise
        except Exception as exc:
            raise RollbackError(f"pytest-rollback: {adapter.name}: rollback failed: {exc!r}") from exc
        if isinstance(result, RestoreReport):
            report = result
        else:
            report = RestoreReport(adapter.name, label, time.perf_counter() - start, "restored")
        self.reports.append((label, report))
        self.hook.pytest_rollback_after_rollback(adapter=adapter, checkpoint=token, report=report)
        return report
