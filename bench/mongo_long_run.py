"""A long run on SecantusDB: per-test time early and late, with retryable writes on and off.

Run from the repository root::

    .venv/bin/python bench/mongo_long_run.py               # 3,000 tests per variant
    .venv/bin/python bench/mongo_long_run.py --tests 1000

SecantusDB keeps the reply of every retryable write for 30 minutes and goes through all
of them on each retryable write (sorting them once there are more than 10,000), so on a
server that took many, each write costs more. The plugin's embedded SecantusDB is
therefore given a URL with ``retryWrites=false`` (every client made from it, the
adapter's own included, then sends plain writes). This script shows what that changes
in a whole pytest run: a generated suite whose tests each write 4 documents through
``mongo_client`` (on a session seed of 1,000), run against a fresh SecantusDB per
variant, started here on 127.0.0.1 and given with ``--rollback-mongo-url``:

* rollback, ``retryWrites=true`` -- what the embedded provider gave before;
* rollback, ``retryWrites=false`` -- what it gives now;
* ``--no-rollback`` with each -- the tests alone, without the plugin.

Per variant: the median time of a test (its setup, call and teardown: the rollback
included) over the first and the last 10% of the tests, the tests' phase in all, and
the plugin's time per test (rollback minus ``--no-rollback``). Prints only; asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymongo  # noqa: E402

from pytest_rollback.services.embedded import find_secantusd  # noqa: E402

CONFTEST = '''\
import os
import time

import pytest

_TIMES = []
_STARTED = {}


@pytest.fixture(scope="session", autouse=True)
def _seed(mongo_client):
    mongo_client.shop.products.insert_many([{"_id": i, "n": i} for i in range(1000)])


def pytest_runtest_logstart(nodeid, location):
    _STARTED[nodeid] = time.perf_counter()


def pytest_runtest_logfinish(nodeid, location):
    _TIMES.append(time.perf_counter() - _STARTED.pop(nodeid))


def pytest_unconfigure(config):
    with open(os.environ["LONG_RUN_TIMES"], "w") as f:
        f.write("\\n".join(map(str, _TIMES)))
'''

TEST = '''
def test_{i}(mongo_client):
    db = mongo_client.shop
    db.products.insert_one({{"_id": "new-{i}", "n": {i}}})
    db.products.update_one({{"_id": {a}}}, {{"$set": {{"n": -1}}}})
    db.orders.insert_one({{"sku": {i}}})
    db.products.delete_one({{"_id": {b}}})
'''


def write_suite(directory: Path, tests: int) -> None:
    directory.mkdir()
    (directory / "conftest.py").write_text(CONFTEST)
    for module in range(0, tests, 100):
        numbers = range(module, min(tests, module + 100))
        body = "".join(TEST.format(i=i, a=i % 1000, b=(i * 7 + 1) % 1000) for i in numbers)
        (directory / f"test_long_{module // 100}.py").write_text(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_secantusdb(exe: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:",
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=200)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"SecantusDB ({exe}) did not start on port {port}") from None
            time.sleep(0.05)
    client.close()
    return proc, port


def run(suite: Path, exe: str, retry: bool, rollback: bool, tests: int, env: dict[str, str]) -> list[float]:
    """One whole pytest run on a fresh server: each test's time, in the order run."""
    proc, port = start_secantusdb(exe)
    try:
        url = f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites={'true' if retry else 'false'}"
        others = sorted({ep.name for ep in entry_points(group="pytest11")} - {"rollback"})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *(a for name in others for a in ("-p", f"no:{name}")), f"--rollback-mongo-url={url}",
               *([] if rollback else ["--no-rollback"]), "."]
        times = suite / "times.txt"
        done = subprocess.run(cmd, cwd=suite, env={**env, "LONG_RUN_TIMES": str(times)}, capture_output=True,
                              text=True, timeout=1800)
        text = done.stdout + done.stderr
        if done.returncode != 0 or f"{tests} passed" not in text:
            raise SystemExit(f"the run failed ({done.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
        return [float(line) for line in times.read_text().split()]
    finally:
        proc.kill()  # ours, by its handle
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=3000, help="tests per run (default 3000)")
    args = parser.parse_args(argv)
    exe = find_secantusd()
    if exe is None:
        raise SystemExit("mongo_long_run.py: SecantusDB is not installed (pip install 'pytest-rollback[secantusdb]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ROLLBACK_", "PYTEST_ADDOPTS"))}
    results: dict[tuple[bool, bool], list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pytest-rollback-long-") as tmp:
        env["PYTEST_ROLLBACK_STATE_DIR"] = str(Path(tmp, "state"))
        suite = Path(tmp, "suite")
        write_suite(suite, args.tests)
        for retry in (True, False):
            for rollback in (True, False):
                results[(retry, rollback)] = run(suite, exe, retry, rollback, args.tests, env)
    tenth = max(1, args.tests // 10)
    print(f"{args.tests} tests, each writing 4 documents through mongo_client, a fresh SecantusDB per run; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")
    print(f"{'variant':<36} {'first 10% ms':>12} {'last 10% ms':>12} {'last/first':>10} {'all tests s':>11}")
    for (retry, rollback), times in results.items():
        first, last = statistics.median(times[:tenth]) * 1000, statistics.median(times[-tenth:]) * 1000
        name = f"{'rollback' if rollback else '--no-rollback'}, retryWrites={'true' if retry else 'false'}"
        print(f"{name:<36} {first:>12.2f} {last:>12.2f} {last / first:>9.1f}x {sum(times):>11.1f}")
    for retry in (True, False):
        on, off = results[(retry, True)], results[(retry, False)]
        per_test = (sum(on) - sum(off)) / args.tests * 1000
        late = (statistics.median(on[-tenth:]) - statistics.median(off[-tenth:])) * 1000
        print(f"plugin per test, retryWrites={'true' if retry else 'false'}: {per_test:.2f} ms over the run, "
              f"{late:.2f} ms over the last 10%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
