"""The registry that ``pytest_rollback_register`` fills: adapters and stores.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .api import Rollbackable, Service

if TYPE_CHECKING:
    from .options import StoreSettings

ProviderFn = Callable[["StoreSettings"], Service]


class RegistrationError(TypeError, ValueError):
    """A ``pytest_rollback_register`` implementation added something the registry refuses.

    A ``TypeError`` for an object that is not an adapter, a ``ValueError`` for a
    name that is taken; the plugin reports it as one usage-error line.
    """


@dataclasses.dataclass
class Store:
    """A store with servers of its own (Redis, MongoDB, ...).

    :param name: the store's name, used in markers (``rollback("redis")``) and options.
    :param make_adapter: builds the adapter for a running service.
    :param providers: provider name (``"docker"``, ``"local"``, ``"embedded"``,
        ``"external"``) to a function that starts or connects to a server and
        returns its :class:`~pytest_rollback.Service`, raising
        :class:`~pytest_rollback.StoreUnavailable` when it cannot.
    :param default_image: the pinned Docker image.
    :param how_to_get: the hint shown when no provider can serve the store.
    :param recover: ``recover(journal_dir, url, restore_data, timeout) -> str``:
        put a server the plugin did not start back from the journal its adapter's
        ``save_journal(journal_dir)`` wrote (``restore_data`` false: only undo what
        the adapter set up and remove its leftovers); returns what was done, in
        words. Without it, a crashed run's server is reported, not put back.
    """

    name: str
    make_adapter: Callable[[Service, StoreSettings], Rollbackable]
    providers: dict[str, ProviderFn]
    default_image: str = ""
    how_to_get: str = ""
    recover: Callable[[Path, str, bool, float], str] | None = None


class Registry:
    """What ``pytest_rollback_register`` implementations add to."""

    def __init__(self) -> None:
        self.adapters: list[Rollbackable] = []
        self.stores: dict[str, Store] = {}

    def add_adapter(self, adapter: Rollbackable) -> None:
        """Add an adapter that is checkpointed and rolled back for the whole session."""
        if not isinstance(adapter, Rollbackable):
            raise RegistrationError(
                f"pytest-rollback: {adapter!r} is not an adapter: it needs a 'name' and "
                "'checkpoint(label)' and 'rollback(token)' methods (see pytest_rollback.Rollbackable)"
            )
        if adapter.name in self.names():
            raise RegistrationError(
                f"pytest-rollback: an adapter or store named {adapter.name!r} is already registered"
            )
        self.adapters.append(adapter)

    def add_store(self, store: Store) -> None:
        """Add a store whose server is started (or connected to) when first needed."""
        if store.name in self.names():
            raise RegistrationError(f"pytest-rollback: an adapter or store named {store.name!r} is already registered")
        self.stores[store.name] = store

    def names(self) -> list[str]:
        """Every registered store and adapter name."""
        return sorted({a.name for a in self.adapters} | set(self.stores))
