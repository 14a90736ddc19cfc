"""Holding servers the plugin did not start, and putting them back after a run that could not.

For every such server a run:

1. takes its lease (:class:`~pytest_rollback.services.lease.Lease`): a second
   live run is refused with one line naming the first;
2. finds any journal a dead run left there and puts the server back from it
   first, saying so in one line (what, from which run, started when);
3. opens its own journal before its adapter touches the server, and completes
   it right after the adapter's first checkpoint (``save_journal``), before any
   test can write;
4. at its end, once the engine has put the server back, undoes what the
   adapter set up (Redis's notification flags) and removes the plugin's
   leftovers, drops the journal and releases the lease. If the end-of-run
   restore failed, the journal puts the server back instead; if that fails too,
   the journal stays for the next run or ``--rollback-recover``.

A store that can be put back after a crash has a ``recover`` function on its
:class:`~pytest_rollback.Store` and an adapter with ``save_journal(path)``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api import Rollbackable, Service, StoreUnavailable
from .lease import Lease, pending_journals
from .state import RunId, read_json

#: ``recover(journal_dir, url, restore_data, timeout) -> what was done``
RecoverFn = Callable[[Path, str, bool, float], str]

RECOVERED = (
    "pytest-rollback: {store} at {where}: put back as it was before an interrupted run ({run}): {what}"
)
CLEANED = "pytest-rollback: {store} at {where}: undid what an interrupted run ({run}) set up before its tests: {what}"
NOT_RECOVERABLE = (
    "pytest-rollback: {store} at {where}: an interrupted run ({run}) did not put it back, and this store "
    "cannot be put back after a crash (its adapter keeps no journal); check its data"
)
RECOVERY_FAILED = (
    "pytest-rollback: {store} at {where}: could not put back what an interrupted run ({run}) left ({error}); "
    "the journal stays in {journal}: make the server answer, then run pytest --rollback-recover"
)
END_FAILED = (
    "pytest-rollback: {store} at {where}: the end-of-run restore failed ({error}); put back from the journal "
    "instead: {what}"
)
KEPT = (
    "pytest-rollback: {store} at {where}: its data from before this run could not be put back ({then}); it is "
    "kept in {journal}: once the server answers, the next run puts it back, or run pytest --rollback-recover"
)
CLEANUP_FAILED = (
    "pytest-rollback: {store} at {where}: the data is back, but what the plugin set up could not be undone "
    "({error}); the journal is kept in {journal}: make the server answer, then run pytest --rollback-recover"
)
OTHERS_PENDING = (
    "pytest-rollback: {count} server(s) left by interrupted runs are not used by this run and still wait to "
    "be put back ({which}); run pytest --rollback-recover"
)


@dataclasses.dataclass
class Keeper:
    """One server this run holds."""

    store: str
    url: str
    lease: Lease
    recover: RecoverFn | None
    #: the xdist controller's own adapter over the whole server, and its first checkpoint
    adapter: Rollbackable | None = None
    root: Any = None


def _error(exc: BaseException) -> str:
    """An error's first line, without the plugin's own prefix (it is quoted inside a line that has it)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text.removeprefix("pytest-rollback: ")[:300]


class Holds:
    """The servers a run holds (registered with the session; one per store at most)."""

    def __init__(self, state_dir: str, timeout: float, run: RunId | None = None) -> None:
        self.state_dir = state_dir
        self.timeout = timeout
        self.run = run or RunId.current()
        self.keepers: dict[str, Keeper] = {}
        #: lines to show the user (recoveries made on the way)
        self.lines: list[str] = []

    def hold(self, store: str, service: Service, recover: RecoverFn | None) -> Path:
        """Take the server of ``service``, put it back from a dead run's journal if there is one, open ours.

        Raises StoreUnavailable (one line) when another live run holds it, or when
        what a dead run left cannot be put back (this run must not take a damaged
        server as its starting state).
        """
        lease = Lease(self.state_dir, store, service.host, service.port)
        lease.acquire(self.run)
        try:
            self._recover_pending(store, lease, service.url, recover)
            journal = lease.open_journal(self.run, service.url)
        except BaseException:
            lease.release()
            raise
        self.keepers[store] = Keeper(store, service.url, lease, recover)
        return journal

    def _recover_pending(self, store: str, lease: Lease, url: str, recover: RecoverFn | None) -> None:
        record = lease.pending()
        if record is None:
            return
        line = recover_one(store, lease, record, url, recover, self.timeout)
        self.lines.append(line)

    def journal(self, store: str, adapter: Rollbackable) -> None:
        """Write the adapter's journal (right after its first checkpoint) and mark it complete."""
        keeper = self.keepers[store]
        save = getattr(adapter, "save_journal", None)
        if save is not None:
            save(keeper.lease.journal)
            keeper.lease.complete_journal()

    def finish(self, store: str, error: BaseException | None) -> list[str]:
        """The run is over for ``store``: undo set-up, drop the journal and release.

        ``error`` is why the end-of-run restore failed, if it did: the journal then
        puts the server back instead, and stays if that fails too.
        """
        keeper = self.keepers.pop(store, None)
        if keeper is None:
            return []
        where, journal = keeper.lease.where, keeper.lease.journal
        try:
            complete = bool((keeper.lease.pending() or {}).get("complete"))
            if error is not None and (keeper.recover is None or not complete):
                why = "this store keeps no journal" if keeper.recover is None else "the journal holds no data"
                return [KEPT.format(store=store, where=where, then=f"{_error(error)}; {why}", journal=journal)]
            if keeper.recover is not None:
                try:
                    what = keeper.recover(journal, keeper.url, error is not None, self.timeout)
                except Exception as exc:
                    if error is None:
                        return [CLEANUP_FAILED.format(store=store, where=where, error=_error(exc), journal=journal)]
                    return [KEPT.format(store=store, where=where, then=_error(exc), journal=journal)]
            keeper.lease.close_journal()
            if error is not None:
                return [END_FAILED.format(store=store, where=where, error=_error(error), what=what)]
            return []
        finally:
            keeper.lease.release()

    def release_all(self) -> None:
        """Let every server go without touching it (journals stay for the next run)."""
        for keeper in self.keepers.values():
            keeper.lease.release()
        self.keepers.clear()

    def others_pending(self, held: set[str]) -> str | None:
        """One line about journals of servers this run does not hold (None when there are none)."""
        others = []
        for path in pending_journals(self.state_dir):
            record = read_json(path / "journal" / "run.json") or {}
            key = f"{record.get('store', '?')} at {record.get('where', '?')}"
            if path.name not in held:
                others.append(key)
        if not others:
            return None
        return OTHERS_PENDING.format(count=len(others), which=", ".join(others))


def recover_one(
    store: str, lease: Lease, record: dict[str, Any], url: str | None, recover: RecoverFn | None, timeout: float
) -> str:
    """Put one server back from the journal a dead run left under ``lease`` (which this run holds).

    Returns the line to show; raises StoreUnavailable with the line when it fails.
    """
    run = RunId.from_json(record["run"]) if "run" in record else None
    who = run.describe() if run else "an unknown run"
    where = lease.where
    target = url or str(record.get("url") or "")
    if recover is None:
        lease.close_journal()
        return NOT_RECOVERABLE.format(store=store, where=where, run=who)
    complete = bool(record.get("complete"))
    try:
        what = recover(lease.journal, target, complete, timeout)
    except Exception as exc:
        raise StoreUnavailable(
            RECOVERY_FAILED.format(store=store, where=where, run=who, error=_error(exc),
                                   journal=lease.journal)
        ) from None
    lease.close_journal()
    template = RECOVERED if complete else CLEANED
    return template.format(store=store, where=where, run=who, what=what)


def recover_all(
    state_dir: str, recovers: dict[str, RecoverFn | None], urls: dict[str, str | None], timeout: float
) -> tuple[list[str], bool]:
    """``--rollback-recover``: put back every server a dead run left in ``state_dir``.

    ``urls`` are this configuration's URLs per store (used instead of the
    journal's own when they name the same server). Returns the lines to print
    and whether everything was put back.
    """
    from .lease import server_key

    lines: list[str] = []
    ok = True
    run = RunId.current()
    for path in pending_journals(state_dir):
        record = read_json(path / "journal" / "run.json") or {}
        store = str(record.get("store", ""))
        host, _, port = str(record.get("where", "")).rpartition(":")
        if not store or not port.isdigit():
            lines.append(f"pytest-rollback: {path}: not a journal this version can read; left as it is")
            ok = False
            continue
        lease = Lease(state_dir, store, host, int(port))
        try:
            lease.acquire(run)
        except StoreUnavailable as exc:
            lines.append(str(exc).replace("wait for it to end, or give this run another server",
                                          "it is still running; run --rollback-recover after it ends"))
            ok = False
            continue
        try:
            url = urls.get(store)
            if url is not None:
                from urllib.parse import urlsplit

                parts = urlsplit(url)
                if server_key(store, parts.hostname or "", parts.port or 0) != path.name:
                    url = None
            lines.append(recover_one(store, lease, record, url, recovers.get(store), timeout))
        except StoreUnavailable as exc:
            lines.append(str(exc))
            ok = False
        finally:
            lease.release()
    return lines, ok


def describe_pending(state_dir: str) -> list[str]:
    """One line per journal waiting in ``state_dir`` (for the report of ``--rollback-recover``)."""
    out = []
    for path in pending_journals(state_dir):
        record = read_json(path / "journal" / "run.json") or {}
        run = RunId.from_json(record["run"]) if "run" in record else None
        out.append(
            f"{record.get('store', '?')} at {record.get('where', '?')}, left by "
            f"{run.describe() if run else 'an unknown run'}"
        )
    return out

