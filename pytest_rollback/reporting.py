"""What the plugin tells the user about restores: per-test change sections and the terminal summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plugin import RollbackSession


class Reporter:
    """Registered as a plugin next to the session; reads the engine's restore reports."""

    def __init__(self, session: RollbackSession) -> None:
        self.session = session
