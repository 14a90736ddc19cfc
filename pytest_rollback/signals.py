"""Signals: SIGTERM ends a run as Ctrl-C does, and nothing cuts a restore in half.

* While the session runs, SIGTERM (what CI runners send on a time-out or a
  cancelled job) raises ``KeyboardInterrupt`` like Ctrl-C, so pytest ends the
  session normally: the stores are put back, then pytest exits. A handler some
  other code installed is left alone.
* Every checkpoint and restore runs *held*: a Ctrl-C or SIGTERM that arrives
  meanwhile is kept until the operation is over, then acted on, so an adapter
  is never left half-way through a pipeline or a bulk write. A restore of
  several stores is held as a whole (their probes are sent together).
* The end-of-run restore is held as a whole, and says so on the first signal;
  a second Ctrl-C does not cut it short. Only SIGKILL can, and then the journal
  puts the server back on the next run.

Signal handlers can only be set from the main thread; elsewhere nothing is held.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

try:  # the C function: signal.signal wraps it to turn handlers into enums, which costs ~20 us a call
    from _signal import signal as _set_handler
except ImportError:  # pragma: no cover - an interpreter without the C module
    from signal import signal as _set_handler
from typing import Any

HELD_NOTE = (
    "pytest-rollback: putting back the servers' data before exiting; Ctrl-C is held until that is done "
    "(a kill leaves it to the next run, which puts them back from the journal)"
)


#: the signals a hold keeps for later (their numbers: the C function takes no enums)
_HELD = (int(signal.SIGINT), int(signal.SIGTERM))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class Signals:
    """The session's signal handling (one per pytest process)."""

    def __init__(self) -> None:
        self._term_installed = False
        self._depth = 0
        #: signals received while held, in order
        self.received: list[int] = []
        self._note: str | None = None

    def install(self) -> None:
        """Make SIGTERM end the session like Ctrl-C (unless someone else already handles it)."""
        if not _main_thread() or self._term_installed:
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _interrupt)
            self._term_installed = True

    def uninstall(self) -> None:
        if self._term_installed and _main_thread():
            if signal.getsignal(signal.SIGTERM) is _interrupt:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._term_installed = False

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._note is not None and len(self.received) == 1:
            with contextlib.suppress(Exception):
                sys.stderr.write("\n" + self._note + "\n")
                sys.stderr.flush()

    @contextlib.contextmanager
    def held(self, note: str | None = None, interrupt_after: bool = True) -> Iterator[None]:
        """Hold Ctrl-C and SIGTERM while the block runs.

        With ``interrupt_after``, a signal that came raises ``KeyboardInterrupt``
        once the block is over; without it, it is dropped (the run is ending
        anyway). Nested holds leave it to the outermost. ``note`` is written to
        stderr when the first signal arrives.
        """
        if not _main_thread() or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.received = []
        self._note = note
        saved: dict[int, Any] = {}
        try:
            for sig in _HELD:
                saved[sig] = _set_handler(sig, self._defer)
        except (ValueError, OSError):  # not settable here: hold nothing
            for sig, handler in saved.items():
                _set_handler(sig, handler)
            yield
            return
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            for sig, handler in saved.items():
                _set_handler(sig, handler)
            self._note = None
        if self.received and interrupt_after:
            raise KeyboardInterrupt(f"signal {signal.Signals(self.received[0]).name}, held until a restore ended")
