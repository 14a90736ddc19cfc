"""The ``rollback`` marker, validated by binding its arguments to a signature.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NoReturn

import pytest

ROLLBACK_MARKER_HELP = (
    "rollback(*stores, enabled=True, verify=False): roll back only the named stores after "
    "this test; enabled=False keeps its writes for later tests of its scope; verify=True "
    "compares the whole store with the checkpoint after the restore"
)
ROLLBACK_ACCEPTED = "accepted: @pytest.mark.rollback(*stores, enabled=True, verify=False) with stores among {names}"
BAD_MARKER = "{nodeid}: @pytest.mark.rollback: {problem}; " + ROLLBACK_ACCEPTED


@dataclasses.dataclass(frozen=True)
class RollbackMarker:
    """The parsed ``@pytest.mark.rollback`` of one test."""

    #: The stores to roll back; empty means every store.
    stores: tuple[str, ...] = ()
    enabled: bool = True
    verify: bool = False


def _signature(
    *stores: object, enabled: object = True, verify: object = False
) -> tuple[tuple[object, ...], object, object]:
    return stores, enabled, verify


def parse_rollback_marker(item: pytest.Item, known: Sequence[str]) -> RollbackMarker:
    """The test's marker, or the default; ``pytest.fail`` with one line if it is wrong."""
    mark = item.get_closest_marker("rollback")
    if mark is None:
        return RollbackMarker()
    names = ", ".join(repr(n) for n in known) or "(none registered)"

    def fail(problem: str) -> NoReturn:
        pytest.fail(BAD_MARKER.format(nodeid=item.nodeid, problem=problem, names=names), pytrace=False)

    try:
        stores, enabled, verify = _signature(*mark.args, **mark.kwargs)
    except TypeError as exc:
        problem = str(exc).replace("_signature()", "rollback()")
    else:
        problem = ""
    if problem:
        fail(problem)
    for store in stores:
        if not isinstance(store, str):
            fail(f"store {store!r} is not a store name")
        if store not in known:
            fail(f"unknown store {store!r}")
    if not isinstance(enabled, bool):
        fail(f"enabled={enabled!r} is not True or False")
    if not isinstance(verify, bool):
        fail(f"verify={verify!r} is not True or False")
    return RollbackMarker(tuple(str(s) for s in stores), bool(enabled), bool(verify))
