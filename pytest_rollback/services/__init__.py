"""Ways to get a server: one module per provider (external, docker, local, embedded).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ..api import StoreUnavailable


class ImageUnavailable(StoreUnavailable):
    """The engine answers but the image is neither on it nor obtainable: ``auto`` says so and falls back."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` until it returns True; on time-out raise with the server's log tail.

    ``check`` raises :class:`StoreUnavailable` when waiting longer cannot help (the server exited).
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if check():
                return
        except StoreUnavailable:  # the check knows it will never be ready (the server exited)
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            tail = logs().strip().splitlines()[-5:]
            raise StoreUnavailable(
                f"{what} did not become ready within {timeout:.0f} s"
                + (f"; last log lines: {' | '.join(tail)}" if tail else "")
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
