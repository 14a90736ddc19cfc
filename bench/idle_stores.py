"""What idle stores cost: trivial tests that touch no store, with Redis, MongoDB and Elasticsearch started.

Run from the repository root::

    .venv/bin/python bench/idle_stores.py                 # 1,000 tests, 3 timed runs per variant
    .venv/bin/python bench/idle_stores.py --tests 500 --runs 5

It writes a suite of trivial tests and a conftest whose autouse session fixture asks
for ``redis_client``, ``mongo_db`` and ``es_client`` (so all three servers are started
and every test is checkpointed and rolled back, although none touches them), and runs
it with ``python -m pytest -q -p no:cacheprovider`` in two variants, interleaved run by
run: rollback on, and ``--no-rollback`` (the same servers started, nothing rolled
back). Servers come from ``--rollback-provider`` (default ``auto`` with Docker hidden:
redis-server from PATH, SecantusDB and noida-db in-process providers).

Reported: the median of pytest's own "in X s" (the session, server start-ups included)
per variant, their ratio, and the difference per test: the plugin's time for a test that
touches no store; then the same from the tests' phase alone (the second test's start to
the last test's end, timed by a conftest hook), which leaves out the servers' start-up
(whose spread is about a second) and the session-end restore. A second suite registers
three in-process stores instead (``DictAdapter`` on empty dicts, through
``pytest_rollback_register``): the same plugin work per test with no server to ask,
which separates the plugin's own time from the servers' round trips. The per-store
medians of the rollback summary are shown for the last run. Prints only; asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from plugin_overhead import write_suite  # the same trivial suite (bench/ is on sys.path when run)

SESSION_TIME = re.compile(r" in ([0-9.]+)s")
STORE_LINE = re.compile(r"^(redis|mongo|elasticsearch) \([a-z]+\): \d+ restores, median .*$", re.M)

#: appended to both conftests: the time from the second test's start to the last one's end (the first
#: test's setup starts the servers), written where IDLE_PHASE_FILE says
PHASE = '''

import os
import time

_MARKS = []


def pytest_runtest_logstart(nodeid, location):
    if len(_MARKS) < 2:
        _MARKS.append(time.perf_counter())


def pytest_runtest_logfinish(nodeid, location):
    _MARKS[2:] = [time.perf_counter()]


def pytest_unconfigure(config):
    with open(os.environ["IDLE_PHASE_FILE"], "w") as f:
        f.write(str(_MARKS[2] - _MARKS[1]))
'''

CONFTEST = '''\
import pytest


@pytest.fixture(scope="session", autouse=True)
def _stores(redis_client, mongo_db, es_client):
    """Starts the three stores; no test uses them."""
    yield
'''


IN_PROCESS_CONFTEST = '''\
from pytest_rollback.adapters.memory import DictAdapter


def pytest_rollback_register(registry):
    """Three stores that live in this process: rolled back around every test, no round trip."""
    for name in ("one", "two", "three"):
        registry.add_adapter(DictAdapter(name, {}))
'''


def run(directory: Path, args: list[str], tests: int, env: dict[str, str]) -> tuple[float, float, str]:
    """pytest's session time, the tests' phase (second test to last), and the output."""
    others = sorted({ep.name for ep in entry_points(group="pytest11")} - {"rollback"})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *(a for name in others for a in ("-p", f"no:{name}")), *args, "."]
    phase = directory / "phase.txt"
    proc = subprocess.run(cmd, cwd=directory, env={**env, "IDLE_PHASE_FILE": str(phase)}, capture_output=True,
                          text=True, timeout=900)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or f"{tests} passed" not in text:
        raise SystemExit(f"the run failed ({proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return float(SESSION_TIME.findall(text)[-1]), float(phase.read_text()), text


def per_test(on: list[float], off: list[float], tests: int) -> None:
    """The tests' phase alone (second test to last: no server start-up, no session-end restore)."""
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"  tests alone (2nd to last): rollback {m_on:.3f} s, --no-rollback {m_off:.3f} s, ratio "
          f"{m_on / m_off:.2f}x; {(m_on - m_off) / (tests - 1) * 1000:.2f} ms per test "
          f"(runs: {', '.join(f'{t:.2f}' for t in on)} / {', '.join(f'{t:.2f}' for t in off)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000, help="trivial tests (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant, after a warm-up (default 3)")
    parser.add_argument("--provider", default="auto", help="--rollback-provider of both variants (default auto)")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ROLLBACK_", "PYTEST_ADDOPTS"))}
    env.setdefault("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # auto: no Docker, the machine's servers
    common = [f"--rollback-provider={args.provider}"]
    on: list[float] = []
    off: list[float] = []
    local_on: list[float] = []
    local_off: list[float] = []
    last = ""
    with tempfile.TemporaryDirectory(prefix="pytest-rollback-idle-") as tmp:
        env["PYTEST_ROLLBACK_STATE_DIR"] = str(Path(tmp, "state"))
        suite = Path(tmp, "suite")
        write_suite(suite, args.tests, CONFTEST + PHASE)
        in_process = Path(tmp, "in_process")
        write_suite(in_process, args.tests, IN_PROCESS_CONFTEST + PHASE)
        phases: dict[str, list[float]] = {"on": [], "off": [], "local on": [], "local off": []}
        for i in range(args.runs + 1):  # the first round warms the caches and is not kept
            t_on, p_on, last = run(suite, common, args.tests, env)
            t_off, p_off, _ = run(suite, [*common, "--no-rollback"], args.tests, env)
            l_on, lp_on, _ = run(in_process, [], args.tests, env)
            l_off, lp_off, _ = run(in_process, ["--no-rollback"], args.tests, env)
            if i:
                on.append(t_on)
                off.append(t_off)
                local_on.append(l_on)
                local_off.append(l_off)
                for key, value in zip(phases, (p_on, p_off, lp_on, lp_off), strict=True):
                    phases[key].append(value)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"{args.tests} trivial tests, Redis + MongoDB + Elasticsearch started (provider {args.provider}); "
          f"{args.runs} timed runs per variant; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"  rollback       pytest session {m_on:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in on)})")
    print(f"  --no-rollback  pytest session {m_off:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in off)})")
    print(f"  ratio {m_on / m_off:.2f}x; plugin time per untouched test {(m_on - m_off) / args.tests * 1000:.2f} ms")
    per_test(phases["on"], phases["off"], args.tests)
    for line in STORE_LINE.findall(last) and STORE_LINE.finditer(last):
        print("  last run: " + line.group(0))
    l_on, l_off = statistics.median(local_on), statistics.median(local_off)
    print(f"{args.tests} trivial tests, three in-process stores (DictAdapter, no server):")
    print(f"  rollback       pytest session {l_on:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in local_on)})")
    print(f"  --no-rollback  pytest session {l_off:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in local_off)})")
    print(f"  ratio {l_on / l_off:.2f}x; the plugin's own time per test {(l_on - l_off) / args.tests * 1000:.2f} ms "
          f"(three stores checkpointed and rolled back, no round trip)")
    per_test(phases["local on"], phases["local off"], args.tests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
