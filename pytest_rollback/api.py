"""Public types: the adapter protocol, checkpoints, services and reports.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .masking import mask

PROVIDERS = ("auto", "docker", "local", "external", "embedded")


@runtime_checkable
class Rollbackable(Protocol):
    """What a store adapter must offer to be checkpointed and rolled back.

    Required: ``name``, ``checkpoint(label) -> token`` and ``rollback(token)``.
    Optional methods, used when present: ``observe() -> Observation`` (a full,
    comparable view of the store, for ``verify``), ``changes(token)``,
    ``release(token)``, ``close()`` and ``prefetch(token)``: a context manager
    entered before a restore of several stores begins (every store's, so that
    their first requests are in flight at once) and left once it is over;
    ``rollback(token)`` inside it may use the reply to a request it sent, and
    leaving it drops a reply no rollback used.

    A token is opaque to the plugin. ``rollback(token)`` must leave the store
    exactly as it was when ``checkpoint`` returned ``token``, and the token must
    stay usable: the same token is rolled back to again and again. Checkpoints
    nest: rolling back to an older token invalidates the newer ones.
    """

    name: str

    def checkpoint(self, label: str | None) -> Any: ...

    def rollback(self, token: Any) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Observation:
    """A comparable picture of a store's whole logical state (for ``verify``)."""

    store: str
    state: Mapping[Any, Any]

    def diff(self, other: Observation, limit: int | None = 10, then: str = "at checkpoint") -> list[str]:
        """Lines describing what differs from ``other`` (at most ``limit``, then ``...``; ``None``: all).

        ``'k': 'v' at checkpoint, now absent``: this observation's value is described
        as ``then``, ``other``'s as ``now``.
        """
        lines: list[str] = []
        for key in sorted(set(self.state) | set(other.state), key=repr):
            a, b = self.state.get(key, _MISSING), other.state.get(key, _MISSING)
            if a != b:
                lines.append(f"{key!r}: {_show(a)} {then}, now {_show(b)}")
                if limit is not None and len(lines) >= limit:
                    lines.append("...")
                    break
        return lines


_MISSING = object()


def _show(value: Any) -> str:
    """A value in a difference line: ``absent``, or its repr cut to 80 characters."""
    if value is _MISSING:
        return "absent"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass(frozen=True)
class Changes:
    """What changed in one store since a checkpoint."""

    store: str
    added: frozenset[Any] = frozenset()
    modified: frozenset[Any] = frozenset()
    removed: frozenset[Any] = frozenset()
    #: True when change tracking lost track (e.g. a FLUSHALL): the sets are then a lower bound.
    complete: bool = True

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.removed) or not self.complete


@dataclasses.dataclass
class RestoreReport:
    """How one rollback went, passed to ``pytest_rollback_after_rollback``."""

    store: str
    label: str | None
    seconds: float
    #: "incremental" (only what was written), "full" (an exact full restore), or "none".
    mode: str = "incremental"
    restored: int = 0
    reason: str | None = None


@dataclasses.dataclass
class Service:
    """A running server for one store (what ``redis_service`` and friends return)."""

    name: str
    provider: str
    url: str
    host: str
    port: int
    version: str
    startup_ms: float = 0.0
    #: True when pytest-rollback started the server itself (it is thrown away at the end).
    owned: bool = True
    #: Store-specific details (e.g. the database numbers this worker owns).
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop: Callable[[], None] = dataclasses.field(default=lambda: None, repr=False)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={mask(repr(getattr(self, f.name)))}" for f in dataclasses.fields(self) if f.repr
        )
        return f"{type(self).__name__}({fields})"

    def describe(self) -> str:
        """The service line: store, provider, address (its password masked), version, start-up time."""
        where = mask(self.url) or ("" if self.port else "in-process")
        detail = self.extra.get("detail")  # a container: its name, or "reused <name> (started <when>)"
        return (
            f"pytest-rollback: {self.name} via {self.provider} at {where}, "
            f"version {self.version}, ready in {self.startup_ms:.0f} ms" + (f", {detail}" if detail else "")
        )


class StoreUnavailable(Exception):
    """No server could be had for a store; the message says how to get one."""


class RollbackError(Exception):
    """A checkpoint or rollback failed; the message names the store and what to do."""


class StoreBroken(RollbackError):
    """A store's restore (or checkpoint) failed and the store is now marked broken.

    The message has one line per store that broke. ``stores`` names them; the
    engine's ``broken`` mapping keeps why, for the rest of the run.
    """

    def __init__(self, lines: list[str], stores: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.stores = stores


class StoreFault(RollbackError):
    """A store's server failed the plugin: gone, not answering, or refusing its credentials.

    The message is one line naming the store, its address (secrets masked) and
    what to do; the plugin reports it as that line, without a traceback, and
    once per scope's teardown. An adapter raises it for any such fault of its
    connection, and leaves itself ready to try again (and to restore fully) on
    its next call.
    """

    def __init__(self, line: str, store: str = "", gone: bool = False) -> None:
        super().__init__(line)
        #: The store whose server failed.
        self.store = store
        #: True when the server refused the connection (it is not running); False for a time-out or credentials.
        self.gone = gone


class RollbackWarning(UserWarning):
    """Something a store adapter could not put back exactly (shown in pytest's warnings summary)."""
