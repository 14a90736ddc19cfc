"""What the plugin tells the user about restores: per-test change sections and the terminal summary.

Two things live here, both in the :class:`Reporter` plugin object:

* **What a test changed.** When a test fails, its report gains a section titled
  ``rollback: what this test changed``: per store it changed, the keys, documents or
  indices the test added, modified and removed (at most :data:`MAX_PER_KIND` of
  each, then a count). It is computed in ``pytest_runtest_makereport``, while the
  test's checkpoint is still alive (its teardown has not run yet), and only when
  pytest will show it: a failure, or a passing test under ``-rP`` / ``-rA``.
* **The rollback summary.** At the end of the run, one line per store: its
  provider, how many restores were made, their median and slowest duration (with
  what caused the slowest), and how many fell back to a full restore, by reason.
  Under pytest-xdist each worker sends its figures to the controller through
  ``workeroutput``, and the controller prints one combined summary.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import pytest

from .api import Changes, RestoreReport, Rollbackable
from .masking import mask

if TYPE_CHECKING:
    from .engine import Checkpoint
    from .plugin import RollbackSession

# -- what a test changed -------------------------------------------------------

#: Title of the report section listing what a test changed.
SECTION_TITLE = "rollback: what this test changed"
#: At most this many names are listed per kind (added, modified, removed) and store.
MAX_PER_KIND = 10
#: A longer key, document or index name is cut to this many characters.
MAX_NAME_CHARS = 120
#: First line of a store that changed: ``redis: 2 added, 1 removed``.
CHANGED = "{store}: {counts}"
#: One changed name, under its store's line; ``sign`` is ``+`` (added), ``~`` (modified) or ``-`` (removed).
CHANGED_NAME = "  {sign} {name}"
#: After :data:`MAX_PER_KIND` names of one kind.
MORE_NAMES = "  ... and {count} more {kind}"
#: Added to a store's first line when its change tracking had a gap (``Changes.complete`` is False).
INCOMPLETE = " (change tracking was incomplete: more may have changed than is listed)"
#: A store whose change tracking had a gap and that lists nothing (a FLUSHALL, say).
NOT_KNOWN = "{store}: not known (change tracking was incomplete)"
#: Added to a store's first line when the test's ``rollback`` marker leaves that store out.
KEPT = " (kept: the test's rollback marker does not roll {store} back)"
#: A store whose adapter has no ``changes()`` method.
NO_CHANGES_METHOD = "{store}: not known (its adapter has no changes() method)"
#: A store whose ``changes()`` raised.
CHANGES_FAILED = "{store}: could not be listed: {error}"
#: Anything else that went wrong while building the section (never an internal error).
SECTION_FAILED = "could not list what this test changed: {error}"

_KINDS = (("added", "+"), ("modified", "~"), ("removed", "-"))

# -- the summary ---------------------------------------------------------------

#: Title of the terminal summary section.
SUMMARY_TITLE = "rollback summary"
#: One line per store.
SUMMARY_STORE = "{store} ({provider}): {count} {restores}, median {median}, slowest {slowest} ({cause})"
#: How the restores of a store went, under its line: ``3 incremental, 20 with nothing to undo, 1 full``.
SUMMARY_MODES = "  {modes}"
#: One line per reason a store fell back to a full restore.
SUMMARY_FULL = "  {count} full because {reason}; first: {cause}"
#: A full restore whose adapter gave no reason.
NO_REASON = "no reason was given"
#: With ``-v`` under pytest-xdist: one line per worker, under its store.
SUMMARY_WORKER = "  {worker}: {count} {restores}, median {median}, slowest {slowest} ({cause})"
#: Under pytest-xdist: workers whose figures never reached the controller.
SUMMARY_MISSING = "no figures from {workers} (a worker that crashes sends none)"
#: The cause of a restore of a level that is not a test's, made while a test ran.
CAUSE_DURING = "{label}, during {nodeid}"
#: The cause of a restore made after the last test (the stores' own start levels).
CAUSE_AT_END = "{label}, at session end"
#: The key of a worker's figures in ``config.workeroutput``.
WORKER_OUTPUT_KEY = "pytest_rollback_reports"

_MODE_WORDS = {"incremental": "incremental", "none": "with nothing to undo", "full": "full"}
_FORMAT_VERSION = 1


class Reporter:
    """Registered as a plugin next to the session: change sections on test reports, and the summary.

    Its methods named ``pytest_*`` are pytest (and pytest-rollback) hook
    implementations.
    """

    def __init__(self, session: RollbackSession) -> None:
        self.session = session
        #: This process's restores, per store (adapter name).
        self.stats: dict[str, StoreStats] = {}
        #: xdist controller: each worker's figures, per store.
        self.workers: dict[str, dict[str, StoreStats]] = {}
        #: xdist controller: workers that went down without sending figures.
        self.missing: list[str] = []
        #: xdist controller: each worker's service lines (its servers, or the shared one it joined).
        self.worker_services: dict[str, list[str]] = {}

    # -- what a test changed -------------------------------------------------
    def add_section(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """Add the change section to a setup or call report that pytest will show (from the session's
        ``pytest_runtest_makereport``)."""
        if call.when in ("setup", "call") and _shown(report, item.config):
            try:
                text = self.changes_text(item)
            except Exception as exc:  # never an internal error: the test's own outcome matters more
                text = SECTION_FAILED.format(error=_error(exc))
            if text:
                report.sections.append((SECTION_TITLE, mask(text)))

    def changes_text(self, item: pytest.Item) -> str:
        """The section's text for ``item``: one block per store it changed ("" when it changed none).

        A store the test did not touch is left out, and a test that touched none
        gets no section at all, as pytest leaves out empty capture sections.
        """
        cp: Checkpoint | None = getattr(item, "_rollback_checkpoint", None)
        engine = self.session.engine
        if cp is None or not cp.alive or cp not in engine.stack or not engine.adapters:
            return ""  # rollback is off for this test, or its level is gone: nothing to compare with
        rolled_back: tuple[str, ...] = getattr(item, "_rollback_stores", ())
        lines: list[str] = []
        changed = False
        for name, adapter in sorted(engine.adapters.items()):
            token = engine.token(cp, name)
            if token is None:
                continue
            block, differs = _store_block(name, adapter, token)
            if differs and block and rolled_back and name not in rolled_back:
                block[0] += KEPT.format(store=name)
            lines += block  # empty for a store the test did not touch
            changed = changed or differs
        # a store that cannot tell (no changes() method) is named only in a section that exists anyway
        return "\n".join(lines) if changed else ""

    # -- restores ------------------------------------------------------------
    def pytest_rollback_after_rollback(self, adapter: Rollbackable, report: RestoreReport) -> None:
        """Count one restore of ``adapter``'s store."""
        name = adapter.name
        stats = self.stats.get(name)
        if stats is None:
            service = self.session.services.get(name)
            stats = self.stats[name] = StoreStats(providers={service.provider if service else "adapter"})
        stats.add(report.seconds, report.mode, report.reason, _cause(report.label, self.session.running))

    # -- xdist ---------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, Any, Any]:
        """xdist worker: put this worker's figures in ``workeroutput`` for the controller.

        Written before the other implementations run and again after them (this
        wrapper is the innermost, so it ends before pytest-xdist sends
        ``workeroutput``): the second writing adds the restores of the stores'
        start levels, made when the session closes the engine. Should the
        second writing come too late, the first one still arrives.
        """
        self._write_worker_output()
        try:
            return (yield)
        finally:
            self._write_worker_output()

    def _write_worker_output(self) -> None:
        output = getattr(self.session.config, "workeroutput", None)
        if self.session.worker is not None and isinstance(output, dict):
            output[WORKER_OUTPUT_KEY] = {
                "version": _FORMAT_VERSION,
                "stores": {name: stats.to_json() for name, stats in self.stats.items()},
                "services": [line for line, _ in self.session.service_lines],
            }

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist controller: keep a worker's figures for the combined summary."""
        workerinput = getattr(node, "workerinput", None) or {}
        worker = str(workerinput.get("workerid") or getattr(getattr(node, "gateway", None), "id", "?"))
        data = getattr(node, "workeroutput", None) or {}
        try:
            sent = data[WORKER_OUTPUT_KEY]
            if sent.get("version") != _FORMAT_VERSION:
                raise ValueError(sent.get("version"))
            stores = {name: StoreStats.from_json(value) for name, value in sent["stores"].items()}
            services = [str(line) for line in sent.get("services", [])]
        except Exception:  # crashed before sessionfinish, or another version of the plugin
            self.missing.append(worker)
            return
        self.workers[worker] = stores
        self.worker_services[worker] = services

    # -- the summary ---------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        """Print the rollback summary (not on a worker; hidden by ``-qq`` and ``--no-summary``)."""
        if self.session.worker is not None or config.get_verbosity() < -1 or config.option.no_summary:
            return
        lines = self.summary_lines(verbose=config.get_verbosity() > 0)
        if not lines:
            return
        terminalreporter.write_sep("=", SUMMARY_TITLE)
        for line in lines:
            terminalreporter.write_line(mask(line))  # reasons may quote a server's error, URL and all

    def service_summary(self, verbose: bool = False) -> list[str]:
        """The service lines not shown yet: servers started during the run, and every xdist worker's.

        Under xdist one line per store: the first worker's, then which workers share
        that server or how many started one of their own; with ``-v`` every worker's.
        """
        lines = [line for line, where in self.session.service_lines if where == "summary"]
        servers: dict[str, dict[str, tuple[str, list[str]]]] = {}  # store -> address -> (line, workers)
        for worker in sorted(self.worker_services, key=_natural):
            for line in self.worker_services[worker]:
                if verbose:
                    lines.append(f"{line} ({worker})")
                    continue
                # one server whatever database a worker has on it (redis://host:port/1 is host:port's)
                address = re.sub(r"/\d+$", "", line.split(", version ")[0])
                store = address.split(" via ")[0]
                first, workers = servers.setdefault(store, {}).setdefault(address, (line, []))
                workers.append(worker)
                if _ready_ms(line) > _ready_ms(first):  # the line of the worker that started it, not a joiner's
                    servers[store][address] = (line, workers)
        for by_address in servers.values():
            (line, workers), *others = by_address.values()
            if others:
                lines.append(f"{line} ({workers[0]}; {len(others)} more worker(s) started one of their own)")
            else:
                lines.append(f"{line} ({', '.join(workers)})")
        return lines

    def summary_lines(self, verbose: bool = False) -> list[str]:
        """The summary: the service lines not shown yet, then the restores of this process and every
        worker's, per store ([] when there were none)."""
        combined: dict[str, StoreStats] = {}
        for name, stats in self.stats.items():
            combined.setdefault(name, StoreStats()).merge(stats)
        for worker in sorted(self.workers, key=_natural):
            for name, stats in self.workers[worker].items():
                combined.setdefault(name, StoreStats()).merge(stats, worker)
        lines: list[str] = []
        for name, stats in sorted(combined.items()):
            if not stats.seconds:
                continue
            lines.append(stats.line(SUMMARY_STORE, store=name, provider=", ".join(sorted(stats.providers))))
            modes = stats.modes_text()
            if modes:
                lines.append(SUMMARY_MODES.format(modes=modes))
            for reason, (count, cause) in stats.full.items():
                lines.append(SUMMARY_FULL.format(count=count, reason=reason or NO_REASON, cause=cause))
            if verbose and len(self.workers) > 1:
                for worker in sorted(self.workers, key=_natural):
                    mine = self.workers[worker].get(name)
                    if mine is not None and mine.seconds:
                        lines.append(mine.line(SUMMARY_WORKER, worker=worker))
        if self.missing:
            lines.append(SUMMARY_MISSING.format(workers=", ".join(sorted(self.missing, key=_natural))))
        return self.service_summary(verbose) + lines if lines else lines


@dataclasses.dataclass
class StoreStats:
    """The restores of one store: durations, modes, the slowest, and full restores by reason.

    Kept as plain data, so that a worker can send it to the controller as JSON.
    """

    providers: set[str] = dataclasses.field(default_factory=set)
    seconds: list[float] = dataclasses.field(default_factory=list)
    modes: Counter[str] = dataclasses.field(default_factory=Counter)
    #: (seconds, cause) of the slowest restore.
    slowest: tuple[float, str] = (-1.0, "")
    #: reason ("" for none given) -> [count, cause of the first one].
    full: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def add(self, seconds: float, mode: str, reason: str | None, cause: str) -> None:
        """Count one restore."""
        self.seconds.append(seconds)
        self.modes[mode] += 1
        if seconds > self.slowest[0]:
            self.slowest = (seconds, cause)
        if mode == "full":
            entry = self.full.setdefault(reason or "", [0, cause])
            entry[0] += 1

    def merge(self, other: StoreStats, worker: str | None = None) -> None:
        """Add ``other``'s restores to these; the causes it names get ``[worker]`` when given."""
        tag = f" on {worker}" if worker else ""
        self.providers |= other.providers
        self.seconds += other.seconds
        self.modes.update(other.modes)
        if other.slowest[0] > self.slowest[0]:
            self.slowest = (other.slowest[0], other.slowest[1] + tag)
        for reason, (count, cause) in other.full.items():
            self.full.setdefault(reason, [0, cause + tag])[0] += count

    def modes_text(self) -> str:
        """``3 incremental, 20 with nothing to undo, 1 full`` ("" when the adapter reports no modes)."""
        known = [m for m in _MODE_WORDS if self.modes[m]]
        others = sorted(m for m in self.modes if m not in _MODE_WORDS and m != "restored")
        if not known and not others:
            return ""  # only adapters that return no RestoreReport: nothing to break down
        parts = [f"{self.modes[m]} {_MODE_WORDS[m]}" for m in known] + [f"{self.modes[m]} {m}" for m in others]
        if self.modes["restored"]:
            parts.append(f"{self.modes['restored']} without a report")
        return ", ".join(parts)

    def line(self, template: str, **fields: str) -> str:
        """``template`` filled with the count, median and slowest restore, and ``fields``."""
        count = len(self.seconds)
        return template.format(
            count=count,
            restores="restore" if count == 1 else "restores",
            median=_duration(_median(self.seconds)),
            slowest=_duration(self.slowest[0]),
            cause=self.slowest[1],
            **fields,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``workeroutput``."""
        return {
            "providers": sorted(self.providers),
            "seconds": self.seconds,
            "modes": dict(self.modes),
            "slowest": list(self.slowest),
            "full": self.full,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreStats:
        """Read what :meth:`to_json` wrote (in a worker)."""
        seconds, cause = data["slowest"]
        return cls(
            providers={str(p) for p in data["providers"]},
            seconds=[float(s) for s in data["seconds"]],
            modes=Counter({str(k): int(v) for k, v in data["modes"].items()}),
            slowest=(float(seconds), str(cause)),
            full={str(r): [int(n), str(c)] for r, (n, c) in data["full"].items()},
        )


# -- helpers -------------------------------------------------------------------


def _shown(report: pytest.TestReport, config: pytest.Config) -> bool:
    """Whether pytest will show ``report``'s sections: a failure, or what ``-r`` / ``--xfail-tb`` ask for."""
    if report.failed:
        return True
    option = config.option
    if getattr(option, "tbstyle", "auto") == "no" or getattr(option, "showcapture", "all") == "no":
        return False
    if report.when != "call":
        return False
    xfail = hasattr(report, "wasxfail")
    if report.skipped:
        return xfail and bool(getattr(option, "xfail_tb", False))
    return ("X" if xfail else "P") in _report_chars(str(getattr(option, "reportchars", "") or ""))


def _report_chars(chars: str) -> str:
    """The effective ``-r`` characters, read as pytest reads them (``a``, ``A`` and ``N`` expanded)."""
    effective = ""
    for char in chars:
        char = {"F": "f", "S": "s"}.get(char, char)
        if char == "a":
            effective = "sxXEf"
        elif char == "A":
            effective = "PpsxXEf"
        elif char == "N":
            effective = ""
        elif char not in effective:
            effective += char
    return effective


def _store_block(name: str, adapter: Rollbackable, token: Any) -> tuple[list[str], bool]:
    """The lines for one store, and whether it changed (or may have)."""
    fn = getattr(adapter, "changes", None)
    if fn is None:
        return [NO_CHANGES_METHOD.format(store=name)], False
    try:
        changes: Changes = fn(token)
    except Exception as exc:  # said in a section that exists anyway, as for a store with no changes()
        return [CHANGES_FAILED.format(store=name, error=_error(exc))], False
    counts = [(kind, sign, _sorted(getattr(changes, kind))) for kind, sign in _KINDS]
    if not any(names for _, _, names in counts):
        if not changes.complete:
            return [NOT_KNOWN.format(store=name)], True
        return [], False
    head = CHANGED.format(store=name, counts=", ".join(f"{len(names)} {kind}" for kind, _, names in counts if names))
    lines = [head + ("" if changes.complete else INCOMPLETE)]
    for kind, sign, names in counts:
        lines += [CHANGED_NAME.format(sign=sign, name=_name(n)) for n in names[:MAX_PER_KIND]]
        if len(names) > MAX_PER_KIND:
            lines.append(MORE_NAMES.format(count=len(names) - MAX_PER_KIND, kind=kind))
    return lines, True


def _sorted(names: Iterable[Any]) -> list[Any]:
    """``names`` in natural order (``key:2`` before ``key:10``), whatever their types."""
    return sorted(names, key=lambda n: _natural(_text(n)))


def _natural(text: str) -> tuple[Any, ...]:
    """A sort key that orders the digit runs of ``text`` as numbers."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def _text(name: Any) -> str:
    return name if isinstance(name, str) else repr(name)


def _name(name: Any) -> str:
    text = _text(name)
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 3] + "..."


def _error(exc: BaseException) -> str:
    """One line for an exception: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _cause(label: str | None, running: str | None) -> str:
    """What a restore undid: a test's node id, or the level's label and when it happened."""
    if label is not None and label.startswith("test "):
        return label[len("test ") :]
    text = label or "an unlabelled checkpoint"
    return CAUSE_DURING.format(label=text, nodeid=running) if running else CAUSE_AT_END.format(label=text)


def _median(values: list[float]) -> float:
    """The median (``statistics`` would cost its import, fractions and decimal included, ~10 ms a run)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _duration(seconds: float) -> str:
    """``8 µs``, ``0.31 ms``, ``12.4 ms``, ``1.20 s``: never ``0.00 ms``."""
    ms = seconds * 1000
    if ms < 0.1:
        return f"{max(seconds * 1e6, 1):.0f} µs"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{seconds:.2f} s"


def _ready_ms(line: str) -> float:
    """The start-up time a service line gives (0 when none)."""
    found = re.search(r", ready in (\d+) ms", line)
    return float(found.group(1)) if found else 0.0
