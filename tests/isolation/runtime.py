"""Runs inside a generated isolation project (copied there as ``iso_runtime``).

Each generated test first compares the whole store (``iso_store.dump``) with the state its
scopes set up, recorded by the scope's fixture right after it seeded; any difference is a
leak: it is appended to a file of the worker's own in ``ISO_LEAKS_DIR`` and fails the test.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import iso_store  # type: ignore[import-not-found]  # the store's file, copied beside this one
import pytest

_expected: dict[str, Any] = {}


class Intended(Exception):
    """A failure or error the generator planned (not a leak)."""


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` differs from ``expected``, as short ``path: expected != actual`` lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual), key=repr):
            where = f"{path}/{key}"
            if key not in actual:
                out.append(f"{where}: missing (was {_short(expected[key])})")
            elif key not in expected:
                out.append(f"{where}: unexpected {_short(actual[key])}")
            else:
                out.extend(differences(expected[key], actual[key], where))
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        pairs = enumerate(zip(expected, actual, strict=True))
        return [d for i, (e, a) in pairs for d in differences(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path or '/'}: {_short(expected)} != {_short(actual)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def record(scope: str, client: Any) -> None:
    """The state every test of ``scope`` must start from: the store as it is now."""
    _expected[scope] = iso_store.dump(client)


def check(where: str, scope: str, client: Any, expected: Any = None) -> None:
    """Fail (and record a leak) unless the store equals ``scope``'s state (or ``expected``)."""
    want = _expected[scope] if expected is None else expected
    found = differences(want, iso_store.dump(client))
    if not found:
        return
    path = os.path.join(os.environ["ISO_LEAKS_DIR"], f"leaks-{os.getpid()}.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"where": where, "scope": scope, "differences": found[:10]}) + "\n")
    pytest.fail(f"LEAK at {where} (scope {scope}): " + "; ".join(found[:3]), pytrace=False)


def _writes(client: Any, rng: random.Random, n: int) -> None:
    errors = getattr(iso_store, "EXPECTED_ERRORS", ())
    for _ in range(n):
        op = rng.choice(iso_store.OPS)
        try:
            op(rng, client)
        except errors:
            pass


def act(where: str, client: Any, rollback: Any, rng: random.Random, steps: int) -> None:
    """``steps`` random writes, with ``checkpoint()/restore()`` and ``branch()`` blocks, each checked."""
    for step in range(steps):
        roll = rng.random()
        if roll < 0.12:
            before = iso_store.dump(client)
            token = rollback.checkpoint(f"step {step}")
            _writes(client, rng, rng.randint(1, 4))
            rollback.restore(token)
            check(f"{where} after restore() at step {step}", "", client, expected=before)
        elif roll < 0.24:
            before = iso_store.dump(client)
            with rollback.branch(f"step {step}"):
                _writes(client, rng, rng.randint(0, 4))
            check(f"{where} after branch() at step {step}", "", client, expected=before)
        else:
            _writes(client, rng, 1)


def seed(client: Any, rng: random.Random, scope: str) -> None:
    """What a fixture of ``scope`` adds: the store's own seed (or random writes when it has none)."""
    if hasattr(iso_store, "seed"):
        iso_store.seed(client, rng, scope)
    else:
        _writes(client, rng, rng.randint(1, 6))
