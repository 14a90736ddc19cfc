"""pytest-rollback: real Redis (and more) for every test, rolled back after each one.

PYTEST_DONT_REWRITE: pytest rewrites the asserts of every module of a plugin's
distribution; the plugin's own modules hold no test assertions (only
``pytest_rollback.testing``, the conformance kit, is left to rewrite), and where
bytecode is not cached (``PYTHONDONTWRITEBYTECODE``, read-only installs, many CI
images) the rewriting cost every run about 50 ms more than compiling them. Each
module's docstring carries the marker pytest looks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import (
    Changes,
    Observation,
    RestoreReport,
    Rollbackable,
    RollbackError,
    RollbackWarning,
    Service,
    StoreBroken,
    StoreFault,
    StoreUnavailable,
)
from .engine import Checkpoint
from .fixtures import RollbackHandle
from .registry import Registry, Store
from .servers import Server, server

if TYPE_CHECKING:
    from .explore import Action, Exploration, InvariantViolated

__version__ = "0.1.0"

#: names imported when first used (exploration is not needed to load the plugin: its import is
#: a few ms of every run's start-up)
_LAZY = {"Action": "explore", "Exploration": "explore", "InvariantViolated": "explore"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Action",
    "Changes",
    "Checkpoint",
    "Exploration",
    "InvariantViolated",
    "Observation",
    "Registry",
    "RestoreReport",
    "RollbackError",
    "RollbackHandle",
    "RollbackWarning",
    "Rollbackable",
    "Server",
    "Service",
    "Store",
    "StoreBroken",
    "StoreFault",
    "StoreUnavailable",
    "__version__",
    "server",
]
