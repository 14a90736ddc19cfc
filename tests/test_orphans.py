"""Servers the plugin starts end with the pytest run, however it ends; a later run reaps what a killed one left.

Each test runs an inner pytest in a session of its own (as a terminal or a CI
runner would), whose test starts real servers, writes what it started to a
file and then holds; the outer test kills it (SIGKILL, or Ctrl-C's SIGINT to
its process group) and looks at what is left. Every process these tests kill
is one an inner run started, checked by pid and start time first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_rollback.api import Service, StoreUnavailable
from pytest_rollback.options import StoreSettings
from pytest_rollback.services import embedded, free_port, local, orphans, ports
from pytest_rollback.services.state import RunId

#: what these tests look at (who listens on a port, a process's start time) is read from /proc
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")
#: a process that is not a server of ours (PATH may hold nothing but the venv's programs)
SLEEP = shutil.which("sleep") or "/bin/sleep"

#: The inner test: start the servers of FIXTURES, write what this process (or
#: xdist worker) sees to started-<worker>.json, then hold for $HOLD seconds.
HOLDER = """
import json
import os
import pathlib
import time

FIXTURES = {fixtures!r}

def test_hold(request):
    services = [request.getfixturevalue(name) for name in FIXTURES]
    who = os.environ.get("PYTEST_XDIST_WORKER", "main")
    records = pathlib.Path(os.environ["PYTEST_ROLLBACK_STATE_DIR"], "servers").glob("*.json")
    seen = {{
        "run_dir": getattr(request.config, "workerinput", {{}}).get("rollback_shared_dir"),
        "pid": os.getpid(),
        "ticks": int(pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]),
        "servers": [[s.extra["pid"], s.port] for s in services],
        "records": [json.loads(p.read_text()) for p in records],
    }}
    mine = pathlib.Path(__file__).with_name(f"started-{{who}}.json")
    mine.with_suffix(".tmp").write_text(json.dumps(seen))
    mine.with_suffix(".tmp").rename(mine)
    time.sleep(float(os.environ.get("HOLD", "0")))
"""

#: store -> (fixture, provider option, what its server's command line names)
STORES = {
    "redis": ("redis_service", "--rollback-provider=local", "redis-server"),
    "mongo": ("mongo_service", "--rollback-provider=embedded", "secantusd-py"),
    "elasticsearch": ("elasticsearch_service", "--rollback-provider=embedded", "noida-db"),
}


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state, start ticks) of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[19])


def _running(pid: int, ticks: int | None) -> bool:
    """True while ``pid`` is the process that started at ``ticks`` and has not exited (a zombie has)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != b"Z" and (ticks is None or stat[1] == ticks)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _watchdogs_of(state_dir: Path) -> list[int]:
    """Watchdog processes that guard servers recorded in ``state_dir`` (their spec names its records)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "watchdog" in line and str(state_dir / orphans.SERVERS) in line and _running(int(entry), None):
                found.append(int(entry))
    return found


class Inner:
    """One inner pytest run in a session of its own, and every process it reported starting (killed at the end)."""

    def __init__(self, pytester: pytest.Pytester, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester, self.state_dir, self.monkeypatch = pytester, state_dir, monkeypatch
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[tuple[int, int]] = []  # (pid, start ticks) of what it started: to end if a test fails
        self.dirs: set[str] = set()  # the temporary directories its servers and runs had: removed then too

    def project(self, *stores: str) -> list[str]:
        """Write the inner test for ``stores``; return the provider option they need."""
        self.pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        self.pytester.makepyfile(test_hold=HOLDER.format(fixtures=[STORES[s][0] for s in stores]))
        return sorted({STORES[s][1] for s in stores})

    def start(self, *args: str, hold: float = 120) -> subprocess.Popen[bytes]:
        for old in self.pytester.path.glob("started-*.json"):
            old.unlink()
        self.monkeypatch.setenv("HOLD", str(hold))
        tmp = self.pytester.path / "tmp"  # its own: another run on the machine reaps dead runs' dirs in the shared one
        tmp.mkdir(exist_ok=True)
        self.monkeypatch.setenv("TMPDIR", str(tmp))
        out = open(self.pytester.path / "inner.log", "wb")  # noqa: SIM115 - closed in output()
        self._out = out
        self.proc = self.pytester.popen(
            [sys.executable, "-m", "pytest", *INNER, *args], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # as from a terminal: a group of its own, Ctrl-C goes to the whole group
        )
        self.started.append((self.proc.pid, _stat(self.proc.pid)[1]))  # type: ignore[index]
        return self.proc

    def output(self) -> str:
        self._out.close()
        return (self.pytester.path / "inner.log").read_text()

    def wait_started(self, workers: tuple[str, ...] = ("main",), timeout: float = 90) -> list[dict[str, Any]]:
        """What the inner test(s) wrote once every one of ``workers`` holds; fails with the inner output if not."""
        files = [self.pytester.path / f"started-{w}.json" for w in workers]
        assert self.proc is not None
        if not _eventually(lambda: all(f.exists() for f in files) or self.proc.poll() is not None, timeout):
            pytest.fail(f"the inner run did not start its servers in {timeout} s:\n{self.output()}")
        if not all(f.exists() for f in files):
            pytest.fail(f"the inner run ended before holding:\n{self.output()}")
        seen = [json.loads(f.read_text()) for f in files]
        self.started += [(s["pid"], s["ticks"]) for s in seen if s["pid"] != self.proc.pid]  # xdist workers
        self.dirs |= {s["run_dir"] for s in seen if s["run_dir"]}
        return seen

    def records(self) -> list[dict[str, Any]]:
        """The server records in the state directory; whatever they name is ended at the end of the test."""
        return self.track([json.loads(p.read_text()) for p in (self.state_dir / orphans.SERVERS).glob("*.json")])

    def track(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``records`` in the order their servers started; what they name is ended at the end of the test."""
        for r in records:
            self.started += [(r["pid"], r["ticks"]), (r["watchdog"], r["watchdog_ticks"])]
            self.dirs.add(r["workdir"])
        return sorted(records, key=lambda r: r["ticks"])

    def kill(self, pid: int, ticks: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal ``pid`` if it is still the process this run started (its start ticks match)."""
        assert (pid, ticks) in self.started, "only what an inner run started is killed"
        if _running(pid, ticks):
            os.kill(pid, sig)

    def finish(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        """End whatever the inner run started that is still running (only after a failed test)."""
        for pid, ticks in self.started:
            if _running(pid, ticks):
                with contextlib.suppress(ProcessLookupError):
                    leads = os.getpgid(pid) == pid  # a server: its group (noida-db's launcher has a child)
                    (os.killpg if leads else os.kill)(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for where in self.dirs:
            if Path(where).name.startswith("pytest-rollback-"):
                shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def inner(pytester: pytest.Pytester, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Inner]:
    run = Inner(pytester, state_dir, monkeypatch)
    yield run
    run.close()


def assert_all_gone(inner: Inner, records: list[dict[str, Any]], timeout: float = 10) -> None:
    """Within ``timeout`` s: every recorded server and watchdog has exited, its port is free, its work dir,
    its record and every watchdog of the state directory are gone."""
    assert records, "no server was recorded"
    for r in records:
        what = f"{r['program']} (pid {r['pid']}, port {r['port']})"
        assert _eventually(lambda r=r: not _running(r["pid"], r["ticks"]), timeout), f"{what} still runs"
        assert _eventually(lambda r=r: _port_free(r["port"]), timeout), f"port {r['port']} of {what} is still bound"
        assert _eventually(lambda r=r: not Path(r["workdir"]).exists(), timeout), f"{what}: work dir left"
        assert _eventually(lambda r=r: not _running(r["watchdog"], r["watchdog_ticks"]), timeout), (
            f"the watchdog of {what} still runs"
        )
    records_dir = inner.state_dir / orphans.SERVERS
    assert _eventually(lambda: not list(records_dir.glob("*.json")), timeout), "records left"
    assert _watchdogs_of(inner.state_dir) == [], "a watchdog is left"


@pytest.mark.parametrize("store", ["redis", "mongo", "elasticsearch"])
def test_servers_end_when_pytest_is_killed(inner: Inner, store: str) -> None:
    """SIGKILL during a test (a CI time-out, the OOM killer): the watchdog ends the server at once."""
    options = inner.project(store)
    proc = inner.start(*options)
    (seen,) = inner.wait_started()
    records = inner.records()
    assert [r["program"] for r in records] == [STORES[store][2]]
    assert {r["pid"] for r in records} == {pid for pid, _ in seen["servers"]}, "the record is not of the server"
    assert {r["port"] for r in records} == {port for _, port in seen["servers"]}
    assert all(_running(r["pid"], r["ticks"]) and Path(r["workdir"]).is_dir() for r in records)
    inner.kill(proc.pid, inner.started[0][1])
    proc.wait(10)
    assert_all_gone(inner, records)


def test_servers_end_when_pytest_is_terminated(inner: Inner) -> None:
    """SIGTERM (what a CI runner sends first) to pytest alone: its servers end with it too."""
    options = inner.project("mongo", "elasticsearch")
    proc = inner.start(*options)
    inner.wait_started()
    records = inner.records()
    assert [r["program"] for r in records] == ["secantusd-py", "noida-db"]
    inner.kill(proc.pid, inner.started[0][1], signal.SIGTERM)
    proc.wait(30)
    assert_all_gone(inner, records)


def test_servers_of_an_xdist_run_end_when_its_controller_is_killed(inner: Inner) -> None:
    """-n 2: the SecantusDB all workers share (its owner is the controller) and each worker's noida-db end
    once the controller is killed, although the workers outlive it for a while."""
    options = inner.project("mongo", "elasticsearch")
    proc = inner.start(*options, "-n", "2", "--dist", "each")
    seen = inner.wait_started(("gw0", "gw1"))
    records = inner.records()
    programs = sorted(r["program"] for r in records)
    assert programs == ["noida-db", "noida-db", "secantusd-py"], "one shared SecantusDB, a noida-db per worker"
    assert {pid for s in seen for pid, _ in s["servers"]} == {r["pid"] for r in records}
    controller = RunId.from_json(records[0]["run"]).pid
    assert controller == proc.pid and all(r["run"]["pid"] == proc.pid for r in records)
    shared_server = next(r for r in records if r["program"] == "secantusd-py")
    assert shared_server["owner"]["pid"] == proc.pid, "the shared server belongs to the controller"
    workers = {s["pid"] for s in seen}
    assert {r["owner"]["pid"] for r in records if r["program"] == "noida-db"} == workers
    inner.kill(proc.pid, inner.started[0][1])
    proc.wait(10)
    assert_all_gone(inner, records)
    (run_dir,) = {s["run_dir"] for s in seen}
    assert Path(run_dir, orphans.RUN_FILE).exists(), "the killed controller's directory names its run"

    inner.start(*options, hold=0)  # the next run removes that directory (it held no server)
    assert inner.finish() == 0, inner.output()
    assert not Path(run_dir).exists()


@pytest.mark.parametrize("how", ["next run", "--rollback-recover"])
@pytest.mark.parametrize("stores", [("redis",), ("mongo", "elasticsearch")], ids=["redis", "mongo+elasticsearch"])
def test_a_later_run_reaps_what_a_run_killed_with_its_watchdogs_left(
    inner: Inner, stores: tuple[str, ...], how: str
) -> None:
    """pytest and its watchdogs SIGKILLed: the servers run on until the next run ends them, saying so in one line."""
    options = inner.project(*stores)
    launched = time.time()
    proc = inner.start(*options)
    inner.wait_started()
    records = inner.records()
    assert [r["program"] for r in records] == [STORES[s][2] for s in stores]
    for r in records:
        inner.kill(r["watchdog"], r["watchdog_ticks"])
    assert _eventually(lambda: not any(_running(r["watchdog"], r["watchdog_ticks"]) for r in records))
    inner.kill(proc.pid, inner.started[0][1])
    proc.wait(10)
    time.sleep(0.5)
    assert all(_running(r["pid"], r["ticks"]) for r in records), "nothing but the watchdogs ends the servers"
    run = RunId.from_json(records[0]["owner"])
    assert run.pid == proc.pid
    assert abs(run.started - launched) < 2, "the run is named by when it started"

    inner.start(*(options if how == "next run" else ["--rollback-recover"]), hold=0)
    assert inner.finish() == 0, inner.output()
    output = inner.output()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    servers = ", ".join(f"{r['program']} on port {r['port']}" for r in records)
    count = f"{len(stores)} server{'s' if len(stores) > 1 else ''}"
    line = f"pytest-rollback: ended {count} left by an interrupted run (pid {proc.pid}, started {when}): {servers}"
    assert [x for x in output.splitlines() if "interrupted run" in x] == [line]
    assert_all_gone(inner, records, timeout=0.5)  # ended before the run started its own


@pytest.mark.parametrize("xdist", [False, True], ids=["single", "xdist"])
def test_a_normal_run_leaves_nothing(inner: Inner, xdist: bool) -> None:
    options = inner.project("mongo", "elasticsearch")
    workers = ("gw0", "gw1") if xdist else ("main",)
    inner.start(*options, *(("-n", "2", "--dist", "each") if xdist else ()), hold=0)
    assert inner.finish() == 0, inner.output()
    seen = inner.wait_started(workers)
    records = inner.track(list({r["pid"]: r for s in seen for r in s["records"]}.values()))
    assert {pid for s in seen for pid, _ in s["servers"]} <= {r["pid"] for r in records}
    assert_all_gone(inner, records, timeout=2)


@pytest.mark.parametrize("xdist", [False, True], ids=["single", "xdist"])
def test_a_run_stopped_with_ctrl_c_leaves_nothing(inner: Inner, xdist: bool) -> None:
    """Ctrl-C reaches the terminal's foreground group: pytest (and its workers), not the servers, which
    pytest stops at the end of the interrupted session."""
    options = inner.project("mongo", "elasticsearch")
    workers = ("gw0", "gw1") if xdist else ("main",)
    proc = inner.start(*options, *(("-n", "2", "--dist", "each") if xdist else ()))
    inner.wait_started(workers)
    records = inner.records()
    os.killpg(proc.pid, signal.SIGINT)  # the inner run leads its own group: what a terminal's Ctrl-C signals
    assert inner.finish() != 0
    assert "KeyboardInterrupt" in inner.output()
    assert_all_gone(inner, records, timeout=2)


def _settings(state_dir: Path, store: str) -> StoreSettings:
    return StoreSettings(store, "embedded", None, "", False, None, None, state_dir=str(state_dir))  # type: ignore[arg-type]


#: how the plugin starts each store's server outside xdist
STARTS: dict[str, Callable[[StoreSettings], Service]] = {
    "redis": local.redis, "mongo": embedded.secantusdb, "elasticsearch": embedded.elasticsearch,
}


@pytest.mark.parametrize("store", ["redis", "mongo", "elasticsearch"])
def test_a_server_whose_port_another_process_took_is_not_used(state_dir: Path, store: str) -> None:
    """The port chosen first is taken by another server of the same kind (it answers as ours would): the
    plugin does not take it for its own, and starts its server on another port."""
    settings = _settings(state_dir, store)
    first = STARTS[store](settings)
    try:
        chosen = iter([first.port])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(local, "free_port", lambda: next(chosen, 0) or free_port())
            service = STARTS[store](settings)
        try:
            assert service.port != first.port, "the server on the taken port was taken for ours"
            assert service.extra["pid"] != first.extra["pid"]
            assert ports.listener(service.port, service.extra["pid"]) == "ours"
        finally:
            service.stop()
    finally:
        first.stop()


@pytest.mark.parametrize("store", ["redis", "mongo", "elasticsearch"])
def test_a_stopped_server_is_killed_at_once_and_its_directory_removed(state_dir: Path, store: str) -> None:
    """A server the plugin started holds nothing outside its work directory, which goes with it: it is ended
    with SIGKILL, not asked to shut down (SecantusDB took 2 s on SIGTERM, at the end of every run)."""
    service = STARTS[store](_settings(state_dir, store))
    handle = service.stop.__self__  # type: ignore[attr-defined]
    workdir, pid = Path(handle.workdir), service.extra["pid"]
    assert workdir.is_dir() and _stat(pid) is not None
    service.stop()
    assert handle.proc.returncode == -signal.SIGKILL, "asked to shut down instead"
    assert not workdir.exists()
    assert _stat(pid) is None
    assert not list((state_dir / "servers").glob("*.json")), "its record was left"


def test_reaping_ends_nothing_that_is_not_the_recorded_server(state_dir: Path, tmp_path: Path) -> None:
    """A record of a dead run whose pid is now another process (its start time, or its command line, differs)
    leaves that process alone; its record goes, and only a work dir named like the plugin's is removed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_ticks = _stat(dead.pid)[1]  # type: ignore[index]
    dead.wait()
    owner = RunId(dead.pid, socket.gethostname(), time.time(), dead_ticks)
    other = subprocess.Popen([SLEEP, "60"])
    try:
        ticks = _stat(other.pid)[1]  # type: ignore[index]
        not_ours = tmp_path / "user-data"
        not_ours.mkdir()
        ours = tmp_path / "pytest-rollback-redis-x"
        ours.mkdir()
        directory = state_dir / orphans.SERVERS
        directory.mkdir()
        cases = {
            "reused-pid": orphans.Record("sleep", other.pid, ticks + 1, 1, str(not_ours), owner, owner),
            "other-program": orphans.Record("redis-server", other.pid, ticks, 2, str(ours), owner, owner),
        }
        for name, record in cases.items():
            (directory / f"{name}.json").write_text(json.dumps(record.to_json()))
        lines = orphans.reap(state_dir)
        assert other.poll() is None and _running(other.pid, ticks), "a process that is not the server was ended"
        assert len(lines) == 1
        assert lines[0].startswith("pytest-rollback: removed the files of 2 servers that had stopped, left by an ")
        assert lines[0].endswith("redis-server on port 2, sleep on port 1"), "in the order they started"
        assert list(directory.iterdir()) == []
        assert not_ours.is_dir(), "a directory not named like the plugin's was removed"
        assert not ours.exists()
    finally:
        other.kill()
        other.wait()


def test_reaping_leaves_the_servers_of_a_live_run_alone(state_dir: Path, tmp_path: Path) -> None:
    """Another session's record (its run is alive) is not touched: its server and files stay."""
    other = subprocess.Popen([SLEEP, "60"], start_new_session=True)
    try:
        ticks = _stat(other.pid)[1]  # type: ignore[index]
        live = RunId(os.getpid(), socket.gethostname(), time.time(), _stat(os.getpid())[1])  # type: ignore[index]
        workdir = tmp_path / "pytest-rollback-x"
        workdir.mkdir()
        directory = state_dir / orphans.SERVERS
        directory.mkdir()
        record = orphans.Record("sleep", other.pid, ticks, 1, str(workdir), live, live)
        (directory / "live.json").write_text(json.dumps(record.to_json()))
        assert orphans.reap(state_dir) == []
        assert _running(other.pid, ticks) and workdir.is_dir() and (directory / "live.json").exists()
    finally:
        other.kill()
        other.wait()


def test_an_unwritable_state_directory_is_one_clear_line(tmp_path: Path) -> None:
    """No record, no server: it could outlive a killed run. The message says what to do."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StoreUnavailable) as info:
        local.redis(_settings(blocked / "state", "redis"))
    message = str(info.value)
    assert message.startswith(f"cannot record the redis server in the state directory {blocked / 'state'} (")
    assert message.endswith("make the directory writable, or choose another with --rollback-state-dir")
