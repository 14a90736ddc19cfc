"""Servers the plugin starts do not outlive it: their records, their watchdogs, and reaping what a dead run left.

Every server the plugin starts (``local.launch``) is guarded twice:

- a **watchdog** process (:mod:`.watchdog`) ends it as soon as its owner ends,
  however it ends (SIGKILL included);
- a **record**, ``<state dir>/servers/<host>-<pid>.json``, says what it is
  (program, pid and start time, port, work directory), who owns it and which
  run it belongs to, and which process is its watchdog. A normal stop removes
  it; so does the watchdog once it has ended the server.

A record whose owner is gone and whose watchdog is gone too (both killed) is
what :func:`reap` finds at the next session's start (or ``--rollback-recover``):
it ends the server if the process is still the one recorded, removes its work
directory and the record, and returns one line per dead run. It also removes
the temporary directory of an xdist run whose controller was killed.

The owner of a server is the pytest process that started it, except for a
server all pytest-xdist workers share: a worker starts it, the controller stops
it after every worker, so the controller owns it. The *run* is the top pytest
process (the controller under xdist): at its end the controller ends whatever
of its run is left (:func:`end_run`), servers of workers that crashed included.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import watchdog
from .state import RunId, ensure_dir, process_start_ticks, read_json, write_json

#: the subdirectory of the state directory that holds the records
SERVERS = "servers"
#: in the pytest-xdist controller's shared directory: the controller's RunId, the run its workers belong to
RUN_FILE = "run.json"
#: the name of such a directory (in the temporary directory) starts so
RUN_DIR_PREFIX = "pytest-rollback-shared-"

_this: dict[int, RunId] = {}


def this_process() -> RunId:
    """This pytest process as a :class:`RunId`, ``started`` being when the process started (where it can be read)."""
    pid = os.getpid()
    if pid not in _this:  # keyed by pid: a forked child is another process
        run = RunId.current()
        started = _wall_clock(run.ticks)
        _this[pid] = dataclasses.replace(run, started=started) if started is not None else run
    return _this[pid]


def _wall_clock(ticks: int | None) -> float | None:
    """Seconds since the epoch at ``ticks`` clock ticks after boot (Linux), or None."""
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None


def same_process(a: RunId, b: RunId) -> bool:
    return (a.pid, a.host, a.ticks) == (b.pid, b.host, b.ticks)


def make_run_dir() -> str:
    """In the xdist controller: a temporary directory for this run, that names the run (for the servers its
    workers start, and for :func:`reap` to remove it once the run is gone)."""
    where = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)
    write_json(Path(where) / RUN_FILE, this_process().to_json())
    return where


def run_of(shared_dir: Path | None) -> RunId:
    """The run this process belongs to: the controller named in ``shared_dir`` (a worker's), else this process."""
    data = read_json(shared_dir / RUN_FILE) if shared_dir is not None else None
    return RunId.from_json(data) if isinstance(data, dict) else this_process()


def records_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SERVERS


def prepare(state_dir: str | os.PathLike[str]) -> None:
    """Make the records' directory; OSError when it cannot be (then no server may start)."""
    ensure_dir(records_dir(state_dir))


@dataclasses.dataclass(frozen=True)
class Record:
    """One started server, as recorded in the state directory."""

    program: str
    pid: int
    #: the server's start time in clock ticks (Linux): a reused pid is not the server
    ticks: int | None
    port: int
    workdir: str
    #: whose end ends the server
    owner: RunId
    #: the run it belongs to (the xdist controller, or the owner itself)
    run: RunId
    watchdog: int | None = None
    watchdog_ticks: int | None = None

    def describe(self) -> str:
        return f"{self.program} on port {self.port}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "owner": self.owner.to_json(), "run": self.run.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        """The record in ``data``; None when it is not one (written by another version, or damaged)."""
        try:
            return cls(
                program=str(data["program"]),
                pid=int(data["pid"]),
                ticks=data.get("ticks"),
                port=int(data["port"]),
                workdir=str(data.get("workdir") or ""),
                owner=RunId.from_json(data["owner"]),
                run=RunId.from_json(data["run"]),
                watchdog=data.get("watchdog"),
                watchdog_ticks=data.get("watchdog_ticks"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class Guard:
    """What keeps one started server from outliving its owner: its watchdog, and its record.

    Made right after the server's process; OSError when the watchdog cannot
    start or the record cannot be written. The watchdog is not waited for: its
    start (~10 ms of Python, at the lowest CPU priority) overlaps the server's.
    ``for_run``: the server serves the whole run (every xdist worker), so it
    ends with the run's top process ``run``, not with this one.
    """

    def __init__(
        self,
        state_dir: str,
        proc: subprocess.Popen[bytes],
        port: int,
        workdir: str,
        run: RunId,
        *,
        for_run: bool = False,
        log: Path | None = None,
    ) -> None:
        me = this_process()
        owner = run if for_run else me
        program = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
        self.path = records_dir(state_dir) / f"{me.host.replace(os.sep, '_')}-{proc.pid}.json"  # dir: prepare()
        ticks = process_start_ticks(proc.pid)
        spec = {"program": program, "pid": proc.pid, "ticks": ticks,
                "owners": sorted({(p.pid, p.ticks) for p in (owner, run)}, key=str),
                "workdir": workdir, "record": str(self.path)}
        with open(log or os.devnull, "ab") as out:  # what it could say goes to the server's log
            self.watchdog = subprocess.Popen(
                _watchdog_command(spec), stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/",
                start_new_session=True,  # a terminal's Ctrl-C to pytest does not reach it
            )
        with contextlib.suppress(OSError, AttributeError):  # the CPUs go to the server starting and to pytest first
            os.setpriority(os.PRIO_PROCESS, self.watchdog.pid, 19)
        self.record = Record(program, proc.pid, ticks, port, workdir, owner, run, self.watchdog.pid,
                             process_start_ticks(self.watchdog.pid))
        try:
            _write_record(self.path, self.record)
        except OSError:
            self.watchdog.kill()
            self.watchdog.wait()
            raise

    def release(self) -> None:
        """After a normal stop: end the watchdog (this process's child), then drop the record."""
        if self.watchdog.poll() is None:
            self.watchdog.terminate()
        try:
            self.watchdog.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGTERM ends it at once
            self.watchdog.kill()
            self.watchdog.wait()
        self.path.unlink(missing_ok=True)


def _write_record(path: Path, record: Record) -> None:
    """Write ``record`` to ``path`` atomically (a reader sees no half-written record), mode 0600.

    Not ``state.write_json``: its fsync costs 1-3 ms of every server's start,
    and it would only keep a record across a crash of the machine, after which
    the processes it names are gone anyway.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(record.to_json(), fh)
    os.replace(tmp, path)


def _watchdog_command(spec: dict[str, Any]) -> list[str]:
    script = watchdog.__file__
    if os.path.isfile(script):  # by path, isolated: importing the package would import pytest
        return [sys.executable, "-I", "-S", script, json.dumps(spec)]
    return [sys.executable, "-m", watchdog.__name__, json.dumps(spec)]  # pragma: no cover - a zipped install


def end(path: Path, record: Record) -> str:
    """End a recorded server if it is still ours, remove its work directory and its record.

    Returns ``"ended"``, ``"stopped"`` (it had stopped, or its pid is another
    process now) or ``"unsure"`` (a process with its pid runs but this system
    cannot tell whether it is the server: not Linux; it is left running, to be
    named to the user once).
    """
    ours = watchdog.is_ours(record.pid, record.ticks, record.program)
    if ours is None:
        outcome = "unsure"
    elif ours and watchdog.end_group(record.pid, record.ticks, record.program):
        outcome = "ended"
    else:
        outcome = "stopped"
    if record.workdir:
        watchdog.remove_workdir(record.workdir)
    path.unlink(missing_ok=True)
    return outcome


def _records(state_dir: str | os.PathLike[str]) -> list[tuple[Path, Record]]:
    try:
        paths = sorted(records_dir(state_dir).glob("*.json"))
    except OSError:
        return []
    found = []
    for path in paths:
        record = Record.from_json(read_json(path))
        if record is not None:
            found.append((path, record))
    return sorted(found, key=lambda item: (item[1].ticks or 0, item[1].pid))  # in the order they started


def _watched(record: Record) -> bool:
    """True while the record's watchdog still runs (it is ending the server itself)."""
    return record.watchdog is not None and bool(watchdog.is_ours(record.watchdog, record.watchdog_ticks, "watchdog"))


def reap(state_dir: str | os.PathLike[str]) -> list[str]:
    """End what runs that are gone left: servers, their work directories and records; one line per dead run.

    A record is left alone while its owner and its run are alive (another
    session's server), and while its watchdog runs (it is ending the server).
    """
    left: dict[tuple[int, str, int | None], tuple[RunId, dict[str, list[Record]]]] = {}
    for path, record in _records(state_dir):
        if (record.owner.alive() and record.run.alive()) or _watched(record):
            continue
        outcome = end(path, record)
        key = (record.run.pid, record.run.host, record.run.ticks)
        left.setdefault(key, (record.run, {}))[1].setdefault(outcome, []).append(record)
    _remove_run_dirs_of_dead_runs()
    return [_line(run, outcomes) for run, outcomes in left.values()]


def _remove_run_dirs_of_dead_runs() -> None:
    """Remove the temporary directories of xdist runs that are gone (a killed controller never removes its own)."""
    for where in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        data = read_json(where / RUN_FILE)  # none yet: a run making it now
        if isinstance(data, dict) and not RunId.from_json(data).alive():
            shutil.rmtree(where, ignore_errors=True)


def _line(run: RunId, outcomes: dict[str, list[Record]]) -> str:
    """``pytest-rollback: ended 2 servers left by an interrupted run (pid 1234, started ...): ...``."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    who = f"an interrupted run (pid {run.pid}, started {when})"
    ended, stopped, unsure = (outcomes.get(k, []) for k in ("ended", "stopped", "unsure"))

    def servers(records: list[Record]) -> str:
        return f"{len(records)} server{'s' if len(records) != 1 else ''}"

    def names(records: list[Record]) -> str:
        return ", ".join(r.describe() for r in records)

    parts = []
    if ended:
        parts.append(f"ended {servers(ended)} left by {who}: {names(ended)}")
    if stopped:
        what = f"the files of {servers(stopped)} that had stopped"
        by = "" if ended else f", left by {who}"
        parts.append(f"removed {what}{by}: {names(stopped)}")
    if unsure:
        running = ", ".join(f"{r.describe()} (pid {r.pid})" for r in unsure)
        parts.append(f"left {servers(unsure)} of {who} running, as this system cannot tell they are still ours "
                     f"(end them yourself if they are): {running}")
    return "pytest-rollback: " + "; ".join(parts)


def end_run(state_dir: str | os.PathLike[str], run: RunId) -> None:
    """At the end of run ``run`` (the xdist controller): end every server of it still recorded.

    These are the servers all workers shared, and those of a worker that
    crashed (its watchdog has usually ended them already).
    """
    for path, record in _records(state_dir):
        if same_process(record.run, run):
            end(path, record)
