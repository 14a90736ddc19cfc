"""The randomized isolation suite: every store exact under generated projects of random tests.

Each ``store_<store>.py`` beside this file is run at a small size on every change; at scale::

    ROLLBACK_ISOLATION_TESTS=10000 ROLLBACK_ISOLATION_SEED=7 pytest tests/isolation -k redis -s

prints tests run, leaks found and time per test (see docs/performance.md for the figures);
``ROLLBACK_ISOLATION_WORKERS=0`` runs the generated project without xdist workers.
"""

from __future__ import annotations

import os

import pytest

from .harness import HERE, run

STORES = sorted(p.stem.removeprefix("store_") for p in HERE.glob("store_*.py"))
SIZE = int(os.environ.get("ROLLBACK_ISOLATION_TESTS", "40"))
SEEDS = [int(s) for s in os.environ.get("ROLLBACK_ISOLATION_SEED", "1").split(",")]
#: xdist workers of the generated run; 0 runs it in one process, where a server is nobody else's (the
#: MongoDB adapter's counters, and what mongo_client notes, then decide what a rollback looks at)
WORKERS = int(os.environ.get("ROLLBACK_ISOLATION_WORKERS", "2"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("store", STORES)
def test_no_leaks(pytester: pytest.Pytester, store: str, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run(pytester, store, SIZE, seed, WORKERS)
    with capsys.disabled():
        print(f"\n{outcome.line()}")
    assert not outcome.leaks, "\n".join(
        f"{leak['where']}: " + "; ".join(leak["differences"]) for leak in outcome.leaks[:10]  # type: ignore[arg-type]
    )
    assert outcome.found == outcome.expected, outcome.result.stdout.str()[-5000:]
