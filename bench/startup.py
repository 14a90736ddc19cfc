"""What the plugin adds to a run's fixed cost: loading it, and connecting to a server that already runs.

Run from the repository root::

    .venv/bin/python bench/startup.py              # 15 timed runs per variant
    .venv/bin/python bench/startup.py --runs 7

This is the loop a developer lives in (``pytest -k one_test``): a one-test run,
timed as a whole process, in three variants interleaved run by run:

* ``bare``     -- ``-p no:rollback``: pytest alone;
* ``plugin``   -- the plugin loaded, no store configured;
* ``redis url`` -- the plugin with ``--rollback-redis-url`` pointing at a
  redis-server that already runs (started here, on 127.0.0.1, with 1,000 keys):
  the plugin connects, takes its lease and the session's checkpoint, rolls the
  test back and puts the server back at the end. The test itself uses no
  client (its own ``import redis`` would be the suite's cost, not the plugin's).

Each variant runs twice: with Python's bytecode cache (a fresh
``PYTHONPYCACHEPREFIX``, warmed by the first round), as on a developer's
machine, and with ``PYTHONDONTWRITEBYTECODE=1``, as in many CI images, where
every module is compiled (and pytest rewrites a plugin's asserts) on every run.

Each run's wall time and CPU time (user + system of the pytest process) are
reported, as medians: on a machine shared with other work the CPU time moves
less with the load than the wall time does.

The target (issue 15): the plugin's fixed cost, ``redis url`` minus ``bare``,
is at most 0.1 s. The script prints; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

TARGET_S = 0.1
SEED_KEYS = 1000
TEST = '"""One test that touches nothing."""\n\n\ndef test_one():\n    assert 1 + 1 == 2\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench/startup.py needs a redis-server on PATH (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                payload = b"".join(
                    b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k)
                    for k in (f"seed:{i}".encode() for i in range(SEED_KEYS))
                )
                conn.sendall(payload)
                got = b""
                while got.count(b"+OK\r\n") < SEED_KEYS:
                    got += conn.recv(65536)
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("redis-server did not start within 10 s") from None
            time.sleep(0.05)


def other_plugins() -> list[str]:
    return sorted({ep.name for ep in entry_points(group="pytest11")} - {"rollback"})


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(directory: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One whole run: its wall time and the CPU time (user + system) of the pytest process."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_one.py"]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True, timeout=120)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0 or "1 passed" not in proc.stdout:
        raise SystemExit(f"the run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr}")
    return wall, cpu


def _medians(timings: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per variant (default 15)")
    args = parser.parse_args(argv)
    off = [arg for name in other_plugins() for arg in ("-p", f"no:{name}")]
    with tempfile.TemporaryDirectory(prefix="pytest-rollback-bench-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / "test_one.py").write_text(TEST)
        redis, port = start_redis(directory)
        try:
            base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ROLLBACK_", "PYTEST_ADDOPTS"))}
            base["PYTEST_ROLLBACK_STATE_DIR"] = str(directory / "state")
            cached = {**base, "PYTHONPYCACHEPREFIX": str(directory / "pycache")}
            cached.pop("PYTHONDONTWRITEBYTECODE", None)
            uncached = {**base, "PYTHONDONTWRITEBYTECODE": "1"}
            variants = {
                "bare (-p no:rollback)": [*off, "-p", "no:rollback"],
                "plugin, no store": off,
                "plugin, --rollback-redis-url": [*off, f"--rollback-redis-url=redis://127.0.0.1:{port}/0"],
            }
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for mode, env in (("bytecode cached", cached), ("PYTHONDONTWRITEBYTECODE=1", uncached)):
                for i in range(args.runs + 1):  # round 0 warms the caches and is not kept
                    for name, extra in variants.items():
                        timing = run(directory, extra, env)
                        if i:
                            results.setdefault((mode, name), []).append(timing)
        finally:
            redis.terminate()
            redis.wait(10)
    print(
        f"one-test runs, {args.runs} timed runs per variant (interleaved, after a warm-up); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; redis-server with {SEED_KEYS} keys"
    )
    print(f"other pytest plugins switched off in every variant: {', '.join(other_plugins()) or 'none'}")
    for mode in ("bytecode cached", "PYTHONDONTWRITEBYTECODE=1"):
        bare_wall, bare_cpu = _medians(results[(mode, "bare (-p no:rollback)")])
        print(f"\n{mode}:")
        print(f"  {'variant':<32} {'wall s':>7} {'- bare':>7} {'/ bare':>7} {'cpu s':>7} {'- bare':>7} {'/ bare':>7}")
        for name in variants:
            wall, cpu = _medians(results[(mode, name)])
            print(
                f"  {name:<32} {wall:7.3f} {wall - bare_wall:+7.3f} {wall / bare_wall:6.2f}x"
                f" {cpu:7.3f} {cpu - bare_cpu:+7.3f} {cpu / bare_cpu:6.2f}x"
            )
        wall, cpu = _medians(results[(mode, "plugin, --rollback-redis-url")])
        cost = wall - bare_wall
        verdict = "MET" if cost <= TARGET_S else "NOT MET"
        print(
            f"  fixed cost of the plugin with a running server: {cost:.3f} s wall, {cpu - bare_cpu:.3f} s of CPU "
            f"(target <= {TARGET_S} s): {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
