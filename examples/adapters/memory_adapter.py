"""An adapter for data kept in a dict of this process: the smallest complete one."""

from __future__ import annotations

import copy
from typing import Any

from pytest_rollback import Changes, Observation


class MemoryAdapter:
    """Checkpoints a dict by deep copy; a rollback puts the copy's content back into the same dict."""

    def __init__(self, name: str, data: dict[str, Any]) -> None:
        self.name = name  # the store's name: rollback("flags"), reports, messages
        self.data = data

    def checkpoint(self, label: str | None) -> dict[str, Any]:
        # The token: a copy that nothing else holds, so later writes cannot reach it.
        return copy.deepcopy(self.data)

    def rollback(self, token: dict[str, Any]) -> None:
        # In place: code that imported the dict keeps seeing the restored content.
        # A copy of the token again: the same token is rolled back to after every test.
        self.data.clear()
        self.data.update(copy.deepcopy(token))

    # Optional: the whole state, for --rollback-verify and @pytest.mark.rollback(verify=True).
    def observe(self) -> Observation:
        return Observation(self.name, copy.deepcopy(self.data))

    # Optional: what a test changed since a checkpoint, for rollback.changes().
    def changes(self, token: dict[str, Any]) -> Changes:
        now = self.data
        return Changes(
            self.name,
            added=frozenset(now.keys() - token.keys()),
            modified=frozenset(k for k in now.keys() & token.keys() if now[k] != token[k]),
            removed=frozenset(token.keys() - now.keys()),
        )
