"""Whole-run cost of the plugin for tests that touch no store.

    python bench/plugin_overhead.py [--tests 500] [--runs 5]

Generates a suite of trivial tests (no store fixture) in a temporary directory
and times whole pytest runs (median of several):

* plain      - pytest with the plugin disabled (-p no:rollback)
* plugin     - the plugin loaded, no store started
* redis idle - the plugin with a session-scoped Redis started (local provider)
               that the tests never touch: every test still gets a checkpoint
               and a rollback (guarantee: rolled back whether asked for or not)

Prints medians and ratios against plain; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_suite(root: Path, n: int, with_redis: bool) -> None:
    lines = [f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n" for i in range(n)]
    (root / "test_many.py").write_text("\n\n".join(lines))
    conftest = ""
    if with_redis:
        conftest = (
            "import pytest\n\n\n@pytest.fixture(scope='session', autouse=True)\n"
            "def _start_redis(redis_client):\n    redis_client.set('seed', 1)\n"
        )
    (root / "conftest.py").write_text(conftest)


def run(root: Path, extra: list[str], runs: int) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *extra]
    samples = []
    for i in range(runs + 1):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"run failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if i:  # the first run warms caches
            samples.append(elapsed)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir, redis_dir = Path(tmp, "plain"), Path(tmp, "redis")
        plain_dir.mkdir()
        redis_dir.mkdir()
        make_suite(plain_dir, args.tests, with_redis=False)
        make_suite(redis_dir, args.tests, with_redis=True)
        plain = run(plain_dir, ["-p", "no:rollback"], args.runs)
        plugin = run(plain_dir, [], args.runs)
        idle = run(redis_dir, ["--rollback-provider=local"], args.runs)
    print(f"{args.tests} trivial tests, whole pytest run, median of {args.runs}")
    print(f"{'variant':<34} {'seconds':>8} {'vs plain':>9}")
    for name, value in (
        ("plain pytest (-p no:rollback)", plain),
        ("plugin loaded, no store", plugin),
        ("plugin, idle session Redis", idle),
    ):
        print(f"{name:<34} {value:>8.3f} {value / plain:>8.2f}x")
    print("\ntarget (issue 2): tests that touch no store <= 1.2x plain pytest: "
          f"{plugin / plain:.2f}x -> {'met' if plugin / plain <= 1.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
