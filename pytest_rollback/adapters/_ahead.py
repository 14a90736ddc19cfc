"""A request sent ahead: one long-lived thread per adapter runs it while the caller goes on.

The engine asks every store's adapter to send the first request of its rollback
(its probe) before it rolls the first one back, so that the probes of several
servers are in flight at once. An adapter whose client blocks (pymongo, where the
MongoDB adapter cannot use its own probe socket) hands that request to its
:class:`Ahead` thread and takes the reply from the returned future when its
rollback needs it.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

_T = TypeVar("_T")


class Ahead:
    """A daemon thread that runs one request at a time, started when first needed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, request: Callable[[], _T]) -> Future[_T]:
        """Run ``request`` on the thread; its reply (or its error) comes out of the future."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=f"pytest-rollback {self.name} probe", daemon=True)
            self._thread.start()
        future: Future[_T] = Future()
        self._queue.put((request, future))
        return future

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(request())
            except BaseException as exc:  # handed to the caller, raised where it waits for the reply
                future.set_exception(exc)

    def close(self) -> None:
        """End the thread once the requests already handed to it are done (no wait)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None
