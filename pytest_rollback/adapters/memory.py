"""A minimal adapter over a plain ``dict``: the reference for adapter authors.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import copy
from typing import Any

from ..api import Changes, Observation


class DictAdapter:
    """Checkpoints a dict by deep copy; ``rollback`` puts the copy's content back.

    Exact but not cheap (each checkpoint copies everything): a good start for a
    store of your own, and what the conformance suite is checked against.
    """

    def __init__(self, name: str, data: dict[Any, Any]) -> None:
        self.name = name
        self.data = data

    def checkpoint(self, label: str | None = None) -> dict[Any, Any]:
        return copy.deepcopy(self.data)

    def rollback(self, token: dict[Any, Any]) -> None:
        self.data.clear()
        self.data.update(copy.deepcopy(token))

    def observe(self) -> Observation:
        return Observation(self.name, copy.deepcopy(self.data))

    def changes(self, token: dict[Any, Any]) -> Changes:
        now = self.data
        return Changes(
            self.name,
            added=frozenset(k for k in now if k not in token),
            modified=frozenset(k for k in now if k in token and now[k] != token[k]),
            removed=frozenset(k for k in token if k not in now),
        )
