"""pytest-rollback: real Redis (and more) for every test, rolled back after each one."""

from __future__ import annotations

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
from .explore import Action, Exploration, InvariantViolated
from .fixtures import RollbackHandle
from .registry import Registry, Store
from .servers import Server, server

__version__ = "0.1.0"

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
