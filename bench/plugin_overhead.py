"""What the plugin costs a suite whose tests touch no store: whole pytest runs, timed.

Run from the repository root::

    .venv/bin/python bench/plugin_overhead.py            # 500 tests, 7 timed runs per variant
    .venv/bin/python bench/plugin_overhead.py --tests 500 --runs 3

It writes a suite of trivial tests (no fixture of this plugin) into a temporary
directory and runs it with ``python -m pytest -q -p no:cacheprovider`` in four
variants, interleaved run by run so that a change in the machine's load hits them all:

* ``plugin``        -- the plugin loaded as installed, no store started;
* ``no plugin``     -- the same with ``-p no:rollback`` (the pytest11 entry point);
* ``session redis`` -- the plugin, and a conftest whose autouse session fixture asks
  for ``redis_client`` (``--rollback-provider=local``): a redis-server is started
  and every test is checkpointed and rolled back although no test touches it;
* ``no plugin, empty conftest`` -- the same tests with a conftest that starts
  nothing and ``-p no:rollback``: the baseline for ``session redis``. It is the
  ``no plugin`` configuration again, measured separately: the ratio of the two
  shows the measurement's noise.

Other pytest plugins installed in the environment (pytest-asyncio, hypothesis,
xdist, ...) are switched off with ``-p no:NAME`` in every variant, so the baseline
is bare pytest (hypothesis alone imports itself at the end of every run, a constant
that would make every ratio look closer to 1); ``--keep-other-plugins`` keeps them.

The target: tests that touch no store cost <= 1.1x pytest without the plugin (issue 15; it was 1.2x).
Reported: median wall time of the whole run (interpreter start, imports,
collection, tests) and pytest's own "in X s" (the session alone), with their
ratios. The script only prints: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

TARGET = 1.1
FILES = 10
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
SESSION_TIME = re.compile(r" in ([0-9.]+)s")
STARTED = re.compile(r"pytest-rollback: redis via local .*ready in (\d+) ms")

REDIS_CONFTEST = '''\
import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_redis(redis_client):
    """Starts the session's Redis; no test uses it."""
    yield
'''
EMPTY_CONFTEST = '"""A conftest that starts nothing."""\n'


@dataclass
class Variant:
    name: str
    directory: Path
    args: list[str]
    wall: list[float] = field(default_factory=list)
    session: list[float] = field(default_factory=list)
    startup_ms: list[float] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall)

    @property
    def session_s(self) -> float:
        return statistics.median(self.session)


def write_suite(directory: Path, tests: int, conftest: str) -> None:
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no ini of an enclosing project applies
    (directory / "conftest.py").write_text(conftest)
    per_file = -(-tests // FILES)
    for f in range(FILES):
        body = [f'"""Trivial tests, file {f}: no store, no fixture of the plugin."""\n']
        for i in range(f * per_file, min(tests, (f + 1) * per_file)):
            body.append(f"\ndef test_{i}():\n    assert {i} + 1 == {i + 1}\n")
        (directory / f"test_trivial_{f}.py").write_text("\n".join(body))


def other_plugins() -> list[str]:
    """Names of the installed pytest11 plugins other than this one."""
    return sorted({ep.name for ep in entry_points(group="pytest11")} - {"rollback"})


def clean_env() -> dict[str, str]:
    """This environment without settings that would change what pytest loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ROLLBACK_", "PYTEST_ADDOPTS"))}
    env.pop("PYTEST_PLUGINS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def run_once(variant: Variant, tests: int, env: dict[str, str], keep: bool, common: list[str]) -> None:
    cmd = [*PYTEST, *common, *variant.args, "."]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=variant.directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGINT lets pytest finish its session, so the plugin stops the redis-server it started
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise SystemExit(f"{variant.name}: pytest did not finish within 300 s: {' '.join(cmd)}") from None
    wall = time.perf_counter() - t0
    text = out.decode(errors="replace")
    if proc.returncode != 0 or f"{tests} passed" not in text:
        where = " ".join(cmd)
        raise SystemExit(f"{variant.name}: the run failed (exit code {proc.returncode}): {where}\n{text[-3000:]}")
    if "session redis" in variant.name and not STARTED.search(text):
        raise SystemExit(f"{variant.name}: no redis-server was started by the plugin:\n{text[-3000:]}")
    if keep:
        variant.wall.append(wall)
        found = SESSION_TIME.findall(text)
        if found:
            variant.session.append(float(found[-1]))
        started = STARTED.search(text)
        if started:
            variant.startup_ms.append(float(started.group(1)))


def ratio_line(label: str, a: Variant, b: Variant) -> str:
    wall, session = a.wall_s / b.wall_s, a.session_s / b.session_s
    return f"  {label:<46} whole run {wall:5.2f}x   pytest session {session:5.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=500, help="trivial tests in the suite (default 500)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per variant, after one warm-up (default 7)")
    parser.add_argument(
        "--keep-other-plugins", action="store_true", help="leave the other installed pytest plugins loaded"
    )
    args = parser.parse_args(argv)
    env = clean_env()
    others = [] if args.keep_other_plugins else other_plugins()
    common = [arg for name in others for arg in ("-p", f"no:{name}")]
    with tempfile.TemporaryDirectory(prefix="pytest-rollback-bench-") as tmp:
        plain_dir, redis_dir, empty_dir = Path(tmp, "plain"), Path(tmp, "session_redis"), Path(tmp, "empty_conftest")
        write_suite(plain_dir, args.tests, EMPTY_CONFTEST)
        write_suite(redis_dir, args.tests, REDIS_CONFTEST)
        write_suite(empty_dir, args.tests, EMPTY_CONFTEST)
        plugin = Variant("plugin", plain_dir, [])
        no_plugin = Variant("no plugin (-p no:rollback)", plain_dir, ["-p", "no:rollback"])
        redis_on = Variant(
            "session redis (plugin, --rollback-provider=local)", redis_dir, ["--rollback-provider=local"]
        )
        empty = Variant("no plugin, empty conftest (-p no:rollback)", empty_dir, ["-p", "no:rollback"])
        variants = [plugin, no_plugin, redis_on, empty]
        started = time.perf_counter()
        for i in range(args.runs + 1):  # the first round warms the file cache and is not kept
            for v in variants:
                run_once(v, args.tests, env, keep=i > 0, common=common)
        elapsed = time.perf_counter() - started

    print(
        f"{args.tests} trivial tests in {FILES} files; {args.runs} timed runs per variant (after a warm-up), "
        f"interleaved; {elapsed:.0f} s in all; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"other pytest plugins switched off in every variant: {', '.join(others) or 'none'}")
    print(f"  {'variant':<52} {'whole run s':>11} {'(p90)':>7} {'pytest session s':>16}")
    for v in variants:
        p90 = sorted(v.wall)[min(len(v.wall) - 1, round(0.9 * (len(v.wall) - 1)))]
        print(f"  {v.name:<52} {v.wall_s:11.3f} {p90:7.3f} {v.session_s:16.3f}")
    print()
    print("Ratios of medians:")
    print(ratio_line("plugin / no plugin", plugin, no_plugin))
    print(ratio_line("session redis / no plugin, empty conftest", redis_on, empty))
    print(ratio_line("noise: no plugin / no plugin, empty conftest", no_plugin, empty))
    per_test_plugin = (plugin.session_s - no_plugin.session_s) / args.tests * 1000
    per_test_redis = (redis_on.session_s - empty.session_s) / args.tests * 1000
    startup = statistics.median(redis_on.startup_ms) if redis_on.startup_ms else float("nan")
    print()
    print(
        f"Per test (pytest session difference / {args.tests}): plugin {per_test_plugin:+.3f} ms; "
        f"session redis {per_test_redis:+.3f} ms, which includes the redis-server start "
        f"({startup:.0f} ms median, once per session, = {startup / args.tests:.3f} ms per test here)"
    )
    verdict = "MET" if plugin.wall_s / no_plugin.wall_s <= TARGET else "NOT MET"
    print()
    print(
        f"Target: tests that touch no store cost <= {TARGET}x pytest without the plugin: "
        f"plugin / no plugin = {plugin.wall_s / no_plugin.wall_s:.2f}x whole run "
        f"({plugin.session_s / no_plugin.session_s:.2f}x pytest session) -> {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
