"""The randomized isolation suite's generator and runner.

A store plugs in with one file, ``tests/isolation/store_<store>.py``, defining ``STORE``,
``CLIENT_FIXTURE``, ``dump(client)`` (the whole state, comparable), ``OPS`` (write
operations ``op(rng, client)``) and optionally ``seed(client, rng, scope)``,
``EXPECTED_ERRORS`` (exceptions an op may raise that are not bugs) and ``INNER_ARGS``.
:func:`run` generates a project of modules, classes and fixtures of every scope that seed
data, and tests that start by comparing the store with their scopes' state, then write
at random (with ``rollback.checkpoint()/restore()`` and ``rollback.branch()`` blocks) and
end passing, failing, erroring, skipping or xfailing; it runs the project under
``-n 2`` and counts the leaks.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly")
OUTCOMES = ("passed", "failed", "errors", "skipped", "xfailed")

CONFTEST = '''
import random

import iso_runtime as rt
import iso_store
import pytest


@pytest.fixture(scope="session")
def client(request):
    return request.getfixturevalue(iso_store.CLIENT_FIXTURE)


@pytest.fixture(scope="session", autouse=True)
def _session_data(client):
    rt.record("empty", client)
    rt.seed(client, random.Random({seed}), "session")
    rt.record("session", client)
'''


@dataclass
class Outcome:
    """What one generated project's run found."""

    store: str
    seed: int
    tests: int
    leaks: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    result: Any = None
    workers: int = 2

    def line(self) -> str:
        per_test = self.seconds / max(self.tests, 1) * 1000
        return (
            f"isolation {self.store}: {self.tests} tests (seed {self.seed}, -n {self.workers}), "
            f"{len(self.leaks)} leaks, {per_test:.1f} ms per test, {self.seconds:.1f} s in all"
        )


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.expected = dict.fromkeys(OUTCOMES, 0)
        self.count = 0

    def _end(self) -> tuple[str, str, bool]:
        """A test's decorator, its last line and whether it errors in teardown; counts the outcome."""
        roll = self.rng.random()
        if roll < 0.70:
            self.expected["passed"] += 1
            return "", "", False
        if roll < 0.80:
            self.expected["failed"] += 1
            return "", "    raise rt.Intended('a planned failure after writing')\n", False
        if roll < 0.88:
            self.expected["skipped"] += 1
            return "", "    pytest.skip('a planned skip after writing')\n", False
        if roll < 0.94:
            self.expected["xfailed"] += 1
            return "@pytest.mark.xfail(raises=rt.Intended, strict=True)\n", "    raise rt.Intended('planned')\n", False
        self.expected["passed"] += 1  # pytest reports the call as passed and the teardown as an error
        self.expected["errors"] += 1
        return "", "", True

    def test(self, scope: str, indent: str, method: bool) -> str:
        self.count += 1
        name = f"test_{self.count}"
        decorator, end, breaks_in_teardown = self._end()
        with_fixture = self.rng.random() < 0.15
        args = (["self"] if method else []) + ["client", "rollback"]
        args += ["_function_data"] if with_fixture else []
        args += ["_breaks_in_teardown"] if breaks_in_teardown else []
        check = "" if with_fixture else f"    rt.check({name!r}, {scope!r}, client)\n"
        seed, steps = self.rng.randrange(2**31), self.rng.randint(1, 8)
        body = (
            f"{decorator}def {name}({', '.join(args)}):\n{check}"
            f"    rt.act({name!r}, client, rollback, random.Random({seed}), {steps})\n{end}\n"
        )
        return "".join(indent + line if line.strip() else line for line in body.splitlines(True))

    def module(self, index: int) -> str:
        has_module_data = self.rng.random() < 0.6
        scope = f"module {index}" if has_module_data else "session"
        parts = [
            "import random\n\nimport iso_runtime as rt\nimport pytest\n\n",
            f"@pytest.fixture\ndef _function_data(client):\n    rt.check('function fixture', {scope!r}, client)\n"
            f"    rt.seed(client, random.Random({self.rng.randrange(2**31)}), 'function')\n\n\n",
            "@pytest.fixture\ndef _breaks_in_teardown(client):\n    yield\n"
            f"    rt.seed(client, random.Random({self.rng.randrange(2**31)}), 'function')\n"
            "    raise rt.Intended('a planned error in teardown, after writing')\n\n\n",
        ]
        if has_module_data:
            parts.append(
                "@pytest.fixture(scope='module', autouse=True)\ndef _module_data(client):\n"
                f"    rt.check('module {index} setup', 'session', client)\n"
                f"    rt.seed(client, random.Random({self.rng.randrange(2**31)}), 'module')\n"
                f"    rt.record({scope!r}, client)\n\n\n"
            )
        for _ in range(self.rng.randint(1, 3)):
            parts.append(self.test(scope, "", method=False))
        for c in range(self.rng.randint(0, 2)):
            class_scope = f"{scope} class {c}"
            parts.append(
                f"\nclass TestC{c}:\n"
                "    @pytest.fixture(scope='class', autouse=True)\n"
                "    @classmethod\n    def _class_data(cls, client):\n"
                f"        rt.check('class setup', {scope!r}, client)\n"
                f"        rt.seed(client, random.Random({self.rng.randrange(2**31)}), 'class')\n"
                f"        rt.record({class_scope!r}, client)\n\n"
                "    @pytest.fixture\n    def _function_data(self, client):\n"
                f"        rt.check('function fixture', {class_scope!r}, client)\n"
                f"        rt.seed(client, random.Random({self.rng.randrange(2**31)}), 'function')\n\n"
            )
            for _ in range(self.rng.randint(1, 3)):
                parts.append(self.test(class_scope, "    ", method=True))
        for _ in range(self.rng.randint(0, 2)):
            parts.append(self.test(scope, "", method=False))
        return "".join(parts)


def generate(path: Path, store_file: Path, tests: int, seed: int) -> dict[str, int]:
    """Write the project into ``path``; return how many tests of each outcome it plans."""
    gen = _Generator(seed)
    shutil.copy(store_file, path / "iso_store.py")
    shutil.copy(HERE / "runtime.py", path / "iso_runtime.py")
    (path / "conftest.py").write_text(CONFTEST.format(seed=seed))
    (path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    index = 0
    while gen.count < tests:  # a module may go a few tests over
        (path / f"test_gen_{index}.py").write_text(gen.module(index))
        index += 1
    return {k: v for k, v in gen.expected.items() if v}


def run(pytester: pytest.Pytester, store: str, tests: int, seed: int, workers: int = 2) -> Outcome:
    """Generate and run one project for ``store``; the outcome says what it planned and what it found."""
    store_file = HERE / f"store_{store}.py"
    leaks_dir = pytester.path / "leaks"
    leaks_dir.mkdir()
    expected = generate(pytester.path, store_file, tests, seed)
    namespace: dict[str, Any] = {}
    exec(compile(store_file.read_text(), str(store_file), "exec"), namespace)  # for its INNER_ARGS
    extra = tuple(namespace.get("INNER_ARGS", ()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISO_LEAKS_DIR", str(leaks_dir))
        mp.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # the same servers on every machine
        started = time.perf_counter()
        result = pytester.runpytest_subprocess(*INNER, "-q", "-n", str(workers), *extra, timeout=max(600, tests))
        seconds = time.perf_counter() - started
    leaks = [json.loads(line) for f in sorted(leaks_dir.iterdir()) for line in f.read_text().splitlines()]
    found = {("errors" if k == "error" else k): v for k, v in result.parseoutcomes().items()}
    found = {k: v for k, v in found.items() if k in OUTCOMES}
    planned = sum(expected.values()) - expected.get("errors", 0)  # a teardown error is a passed test too
    return Outcome(store, seed, planned, leaks, seconds, expected, found, result, workers)
