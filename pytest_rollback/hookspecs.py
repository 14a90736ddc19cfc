"""The hooks pytest-rollback adds to pytest (``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin. Implementations may take fewer
arguments than the spec lists.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .api import RestoreReport, Rollbackable, Service
    from .registry import Registry


def pytest_rollback_register(registry: Registry) -> None:
    """Register adapters and stores, once per session, before the first test.

    Call ``registry.add_adapter(adapter)`` for an adapter that is active for the
    whole session (checkpointed and rolled back around every test), or
    ``registry.add_store(store)`` for a store with its own services and fixtures.
    The built-in Redis support registers through this same hook.

    :param registry: the session's :class:`pytest_rollback.Registry`.

    .. versionadded:: 0.1
    """


@pytest.hookspec(firstresult=True)
def pytest_rollback_make_service(store: str, config: pytest.Config) -> Service | None:
    """Provide the running server for ``store`` yourself.

    Return a :class:`pytest_rollback.Service` (a company cluster, a container
    started your way) or ``None`` to let the next implementation (in the end the
    built-in providers: external URL, Docker, local binary, embedded) decide.
    Raise :class:`pytest_rollback.StoreUnavailable` with a one-line message when
    the store cannot be had; tests that need it then fail with that message.

    :param store: the store's name, e.g. ``"redis"``.
    :param config: the pytest config (options, ``workerinput`` under xdist).
    :return: the service, or ``None``.

    .. versionadded:: 0.1
    """


@pytest.hookspec(firstresult=True)
def pytest_rollback_checkpoint(adapter: Rollbackable, label: str | None) -> Any:
    """Take a checkpoint of ``adapter``'s store and return its token.

    Called before each test and before each fixture of a wider scope. The
    default calls ``adapter.checkpoint(label)``; return a non-``None`` token to
    replace that strategy (your ``pytest_rollback_rollback`` then receives it).

    :param adapter: the store's adapter.
    :param label: what the checkpoint is for, e.g. ``"test tests/test_a.py::test_x"``.
    :return: an opaque token, or ``None`` to let the next implementation decide.

    .. versionadded:: 0.1
    """


@pytest.hookspec(firstresult=True)
def pytest_rollback_rollback(adapter: Rollbackable, checkpoint: Any) -> Any:
    """Bring ``adapter``'s store back to ``checkpoint`` (a token).

    The default calls ``adapter.rollback(checkpoint)``. Return anything but
    ``None`` (ideally a :class:`pytest_rollback.RestoreReport`) to say that you
    did the restore.

    :param adapter: the store's adapter.
    :param checkpoint: a token returned by ``pytest_rollback_checkpoint``.
    :return: a report, ``True``, or ``None`` to let the next implementation decide.

    .. versionadded:: 0.1
    """


def pytest_rollback_after_rollback(adapter: Rollbackable, checkpoint: Any, report: RestoreReport) -> None:
    """Observe every restore: its store, label, timing, mode and what it restored.

    :param adapter: the store's adapter.
    :param checkpoint: the token that was rolled back to.
    :param report: how it went (``report.mode`` is ``"none"``, ``"incremental"``
        or ``"full"``; ``report.reason`` says why a restore was full).

    .. versionadded:: 0.1
    """
