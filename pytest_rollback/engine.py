"""The checkpoint stack, aligned with pytest's scopes. Knows no store.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from .api import Changes, Observation, RestoreReport, Rollbackable, RollbackError, StoreBroken

#: The error of the test (or fixture) whose restore failed: the store is now marked broken.
STORE_BROKEN = (
    "pytest-rollback: {store}: {reason}; {store} is now marked broken: later tests that use it will error, "
    "and the others run without it being rolled back"
)
#: A later test that uses a broken store errors at set-up with this line.
USES_BROKEN_STORE = (
    "pytest-rollback: {store} is marked broken ({reason}); this test uses {store}, "
    "so it cannot start from a known state"
)
#: The end-of-run restore of a store to its state at the start of the session failed.
END_RESTORE_FAILED = (
    "pytest-rollback: {store}: the end-of-run restore to its state at the start of the session failed{too}: "
    "{what}; it may not be as it was before the run"
)
#: The longest adapter error quoted in one of the lines above.
MAX_WHAT = 300


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
        #: The node id of the test running now (None between tests), to say during
        #: which test a restore failed; set by the plugin.
        self.running: Callable[[], str | None] = lambda: None
        #: Stores whose restore (or checkpoint) failed, with the first failure: which
        #: restore, during which test, what failed. A broken store is no longer
        #: checkpointed nor restored level by level (its state cannot be trusted);
        #: only the end-of-run restore to its start is still tried.
        self.broken: dict[str, str] = {}
        #: Stores whose end-of-run restore to their state at activation failed, with
        #: what failed: their data is not back, and what a later recovery needs
        #: (the adapter's snapshots) was not cleaned up.
        self.unrestored: dict[str, str] = {}
        #: The tokens of the test level popped last, kept alive while nothing else happened: the
        #: stores are exactly in that state, so the next test's level shares them instead of
        #: checkpointing again (a test that touches no store then costs one probe per store, at
        #: its restore). With the level that was on top when they were kept.
        self._kept: tuple[Checkpoint | None, dict[str, Any]] | None = None
        #: Stores whose server dies with the run (started by the plugin, not kept for reuse): once
        #: ``ending`` is set, restores nothing later can observe are skipped for them.
        self.throwaway: set[str] = set()
        #: Set by the plugin when the last test's teardown begins (only session-end teardowns follow).
        self.ending = False
        #: Whether the level's owner is one whose teardown never reads a store (the plugin's own
        #: fixtures); set by the plugin. Others' teardowns may read, so levels below them are restored.
        self.silent_owner: Callable[[Any], bool] = lambda owner: False
        #: Holds Ctrl-C and SIGTERM over a block (set by the plugin): a restore of several stores is held
        #: from the probes it sends ahead to its last rollback, so none is cut between sending and use.
        self.held: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext

    # -- adapters ------------------------------------------------------------
    def activate(self, adapter: Rollbackable) -> None:
        """Start checkpointing ``adapter``: its state now is what every open level restores to."""
        if adapter.name in self.adapters:
            raise ValueError(f"pytest-rollback: a store named {adapter.name!r} is already active")
        self.forget_kept()
        self.adapters[adapter.name] = adapter
        if self.enabled:
            self.roots[adapter.name] = self._checkpoint(adapter, f"{adapter.name} start")

    def deactivate(self, name: str) -> None:
        """Restore ``name`` to its state at activation (nothing the plugin did stays) and close it.

        A broken store is tried too (its adapter makes the restore after a failure a
        full one). When this restore fails, the adapter is not closed: its ``close()``
        may delete what a later recovery needs (Elasticsearch's snapshot indices);
        ``unrestored`` records why, and the ``RollbackError`` says so in one line.
        """
        if name not in self.adapters:
            return
        self.forget_kept()
        adapter = self.adapters.pop(name)
        root = self.roots.pop(name, None)
        for cp in self.stack:
            cp.tokens.pop(name, None)
        if root is not None and self.ending and name in self.throwaway and self._unobserved(len(self.stack)):
            release = getattr(adapter, "release", None)
            if release is not None and name not in self.broken:
                release(root)  # the server is stopped next: its state goes to nobody
            root = None
        if root is not None:
            try:
                self._rollback(adapter, root, f"{name} start")
            except RollbackError as exc:
                self.unrestored[name] = what = _what(exc, name)
                too = " too" if name in self.broken else ""
                raise RollbackError(END_RESTORE_FAILED.format(store=name, too=too, what=what)) from exc
        close = getattr(adapter, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """Deactivate every store (newest first); raises one ``RollbackError`` with a line per store that failed."""
        lines: list[str] = []
        for name in list(self.adapters)[::-1]:
            try:
                self.deactivate(name)
            except RollbackError as exc:
                lines.append(str(exc))
        if lines:
            raise RollbackError("\n".join(lines))

    # -- the stack -----------------------------------------------------------
    def push(
        self, label: str | None, kind: str, owner: Any = None, verify: bool = False, reuse: bool = False
    ) -> Checkpoint:
        """Checkpoint every active adapter that is not broken and put the result on the stack.

        A store whose checkpoint fails is marked broken; the checkpoints already
        taken are released and ``StoreBroken`` is raised (nothing is pushed).
        With ``reuse`` (a test's own level), the tokens of the test level popped
        just before are shared when nothing happened since: no store is asked.
        """
        kept, self._kept = self._kept, None
        if kept is not None:
            top, tokens = kept
            live = {n for n in self.adapters if n not in self.broken}
            if reuse and not verify and top is (self.stack[-1] if self.stack else None) and set(tokens) == live:
                for token in tokens.values():  # the adapters' reports and warnings name this level now
                    with contextlib.suppress(AttributeError, TypeError):
                        token.label = label
                cp = Checkpoint(label, kind, tokens, owner)
                self.stack.append(cp)
                return cp
            self._release_tokens(tokens)
        tokens = {}
        failed: dict[str, str] = {}
        for name, adapter in self.adapters.items():
            if name in self.broken:
                continue
            try:
                tokens[name] = self._checkpoint(adapter, label)
            except RollbackError as exc:
                failed[name] = self._mark_broken(name, exc, f"the checkpoint {self._when('before', label)} failed")
        cp = Checkpoint(label, kind, tokens, owner)
        if failed:
            self._release(cp)
            raise StoreBroken(list(failed.values()), list(failed))
        if verify:
            for name, a in self.adapters.items():
                observe = getattr(a, "observe", None)
                if observe is not None and name in tokens:
                    cp.observations[name] = observe()
        self.stack.append(cp)
        return cp

    def restore(self, cp: Checkpoint, stores: Iterable[str] | None = None) -> list[str]:
        """Roll back to ``cp``, which stays on the stack; newer levels are dropped.

        Returns the lines of any verification failure. A store whose restore fails
        is marked broken, the other stores are still restored, and then
        ``StoreBroken`` is raised with one line per store that failed.
        """
        self._check(cp)
        self.forget_kept()
        self._drop_above(cp)
        skip = self._skipped(cp)
        names = list(self.adapters) if stores is None else [n for n in stores if n in self.adapters]
        plan = [(n, self.adapters[n], self.token(cp, n)) for n in names if n not in skip]
        plan = [(n, adapter, token) for n, adapter, token in plan if token is not None]
        problems: list[str] = []
        failed: dict[str, str] = {}
        # several stores, some of which can send their probe ahead: all of them are sent before the first
        # rollback, and the restore is held as a whole (no interrupt between a probe and its use)
        ahead = []
        if len(plan) > 1 and not self._writing_hooks():
            ahead = [(a, t) for _, a, t in plan if getattr(a, "prefetch", None) is not None]
        with self.held() if ahead else contextlib.nullcontext(), contextlib.ExitStack() as probes:
            _prefetch(ahead, probes)
            for name, adapter, token in plan:
                try:
                    self._rollback(adapter, token, cp.label)
                except RollbackError as exc:
                    failed[name] = self._mark_broken(name, exc, f"the restore {self._when('after', cp.label)} failed")
                    continue
                before = cp.observations.get(name)
                if before is not None:
                    after = adapter.observe()  # type: ignore[attr-defined]
                    if after.state != before.state:
                        diff = before.diff(after)
                        problems.append(
                            f"pytest-rollback verify: {name} differs from the checkpoint after restore "
                            f"({len(diff)} difference(s)): " + "; ".join(diff)
                        )
        if failed:
            raise StoreBroken([*failed.values(), *problems], list(failed))
        return problems

    def pop(self, cp: Checkpoint, stores: Iterable[str] | None = None, restore: bool = True) -> list[str]:
        """Roll back to ``cp`` (only ``stores``, if given) and release it (even when the restore fails)."""
        if not cp.alive:
            return []
        keep = False
        try:
            if restore:
                problems = self.restore(cp, stores)
                keep = cp.kind == "test" and stores is None and not problems and not cp.observations
            else:
                self.forget_kept()
                self._drop_above(cp)
                problems = []
        finally:
            if keep and self.stack and self.stack[-1] is cp:
                self.stack.pop()
                cp.alive = False
                self._kept = (self.stack[-1] if self.stack else None, cp.tokens)
            else:
                self._release(cp)
        return problems

    def forget_kept(self) -> None:
        """Release the tokens kept from the last test level: something may happen to the stores now."""
        kept, self._kept = self._kept, None
        if kept is not None:
            self._release_tokens(kept[1])

    def _skipped(self, cp: Checkpoint) -> set[str]:
        """The stores whose restore to ``cp`` nobody can observe: throwaway servers at the end of the
        run, for a scope's level with no level below it whose owner's teardown may read a store."""
        if not self.ending or not self.throwaway or cp.kind in ("test", "checkpoint"):
            return set()
        if not self._unobserved(self.stack.index(cp)):
            return set()
        return self.throwaway & set(self.adapters)

    def _unobserved(self, depth: int) -> bool:
        """Whether no level among the ``depth`` lowest of the stack has an owner whose teardown may read a store."""
        return all(lv.owner is None or self.silent_owner(lv.owner) for lv in self.stack[:depth])

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
        self._release_tokens(cp.tokens)

    def _release_tokens(self, tokens: dict[str, Any]) -> None:
        for name, token in tokens.items():
            adapter = self.adapters.get(name)
            release = getattr(adapter, "release", None)
            if release is not None and name not in self.broken:  # a broken store's server may be gone
                release(token)

    def _check(self, cp: Checkpoint) -> None:
        if not cp.alive or cp not in self.stack:
            raise RollbackError(f"pytest-rollback: checkpoint {cp.label!r} was already released or rolled past")

    def token(self, cp: Checkpoint, name: str) -> Any:
        """``name``'s token at ``cp``: its own, else (the store was activated later) the store's start.

        None for a broken store: no level of it is to be trusted any more.
        """
        if name in self.broken:
            return None
        return cp.tokens.get(name, self.roots.get(name))

    def _writing_hooks(self) -> bool:
        """Whether another plugin implements ``pytest_rollback_after_rollback``: it may write a store restored
        after the one it is called for, which a probe sent before that write would not see."""
        caller = getattr(self.hook, "pytest_rollback_after_rollback", None)
        impls = caller.get_hookimpls() if caller is not None and hasattr(caller, "get_hookimpls") else []
        return any(not _own(impl.plugin) for impl in impls)

    # -- broken stores -------------------------------------------------------
    def _when(self, side: str, label: str | None) -> str:
        """``after tests/t.py::test_x`` for a test's own level, else ``to <label>[, during <test>]``."""
        running = self.running()
        if label is not None and label.startswith("test "):
            return f"{side} {label[5:]}"
        where = f"to {label}" if side == "after" else f"of {label}"
        return f"{where}, during {running}" if running else where

    def _mark_broken(self, name: str, exc: BaseException, what_failed: str) -> str:
        """Record ``name`` as broken (the first failure is kept) and return the line that says so."""
        reason = f"{what_failed}: {_what(exc, name)}"
        self.broken.setdefault(name, reason)
        return STORE_BROKEN.format(store=name, reason=reason)

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
            report.label = label  # a shared token's adapter may know it by the level it was taken for
        else:
            report = RestoreReport(adapter.name, label, time.perf_counter() - start, "restored")
        self.reports.append((label, report))
        self.hook.pytest_rollback_after_rollback(adapter=adapter, checkpoint=token, report=report)
        return report


def _prefetch(ahead: list[tuple[Any, Any]], probes: contextlib.ExitStack) -> None:
    """Let each of these adapters send the first request of its rollback to its token now (see ``prefetch``
    in :class:`~pytest_rollback.Rollbackable`): the probes of the stores are then in flight at once.
    Leaving ``probes`` lets each adapter drop a reply its rollback did not use."""
    for adapter, token in ahead:
        try:
            probes.enter_context(adapter.prefetch(token))
        except Exception:  # nothing was sent ahead: the rollback asks itself, and says any fault in one line
            continue


def _own(plugin: Any) -> bool:
    """Whether a pluggy plugin (a module or an object) is one of pytest-rollback's own."""
    name = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
    return name == "pytest_rollback" or name.startswith("pytest_rollback.")


def _what(exc: BaseException, store: str) -> str:
    """An adapter's error as a short clause: one line, without the ``pytest-rollback: <store>:`` prefix."""
    text = " ".join(str(exc).split())
    for prefix in ("pytest-rollback: ", f"{store}: ", "rollback failed: ", "checkpoint failed: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text if len(text) <= MAX_WHAT else text[: MAX_WHAT - 3] + "..."
