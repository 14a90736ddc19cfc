"""Servers the plugin starts are its own: the process that answers on a server's port is the one it started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_rollback.api import Service
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import embedded, free_port, local, ports


def _settings(state_dir: Path, store: str) -> StoreSettings:
    return StoreSettings(store, "embedded", None, "", False, None, None, state_dir=str(state_dir))  # type: ignore[arg-type]


#: how the plugin starts each store's server outside xdist
STARTS: dict[str, Callable[[StoreSettings], Service]] = {
    "redis": local.redis, "mongo": embedded.secantusdb, "elasticsearch": embedded.elasticsearch,
}


@pytest.mark.parametrize("store", ["redis", "mongo", "elasticsearch"])
def test_a_server_whose_port_another_process_took_is_not_used(state_dir: Path, store: str) -> None:
    """The port chosen first is taken by another server of the same kind (it answers as ours would): the
    plugin does not take it for its own, and starts its server on another port."""
    settings = _settings(state_dir, store)
    first = STARTS[store](settings)
    try:
        chosen = iter([first.port])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(local, "free_port", lambda: next(chosen, 0) or free_port())
            service = STARTS[store](settings)
        try:
            assert service.port != first.port, "the server on the taken port was taken for ours"
            assert service.extra["pid"] != first.extra["pid"]
            assert ports.listener(service.port, service.extra["pid"]) == "ours"
        finally:
            service.stop()
    finally:
        first.stop()
