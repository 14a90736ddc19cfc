"""One line for each way a store's server can fail the plugin.

A server that went away, one that stopped answering, credentials it refuses, a
client package that is not installed: each is one line naming the store, its
address (secrets masked) and what to do. Adapters and providers build them
here, so that every store words them alike (adapters raise them as they
come, providers as the message of a :class:`~pytest_rollback.api.StoreUnavailable`).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Concatenate, NoReturn, ParamSpec, Protocol, TypeVar

import pytest

from .api import StoreBroken, StoreFault, StoreUnavailable
from .masking import mask

#: The server refused or closed the plugin's connection, and refuses a new one.
GONE = "pytest-rollback: {store} at {where} went away during the run ({reason}); start it again and rerun the tests"
#: No reply within ``--rollback-timeout``.
NOT_ANSWERING = (
    "pytest-rollback: {store} at {where} stopped answering (no reply in {timeout} s); is it paused or overloaded? "
    "(--rollback-timeout sets how long to wait)"
)
#: The server refused the credentials of the URL (or wants some and the URL has none).
AUTH_FAILED = "pytest-rollback: {store} at {where}: authentication failed ({reason}); fix the credentials in {option}"
#: The store's client package cannot be imported.
MISSING_CLIENT = (
    "pytest-rollback: {store} needs the {package} package, which cannot be imported ({reason}); "
    "install it: pip install 'pytest-rollback[{extra}]'"
)

#: The longest wait to learn whether a server that went away still refuses connections.
PROBE_LIMIT = 1.0


class MissingClient(StoreUnavailable):
    """The store's client package cannot be imported: no provider is tried, nothing is started."""


def gone(store: str, where: str, reason: str) -> StoreFault:
    """The fault of a server that refuses connections (or closes them) during the run."""
    return StoreFault(mask(GONE.format(store=store, where=where, reason=reason)), store, gone=True)


def not_answering(store: str, where: str, timeout: float) -> StoreFault:
    """The fault of a server that gave no reply within ``timeout`` seconds."""
    return StoreFault(mask(NOT_ANSWERING.format(store=store, where=where, timeout=seconds(timeout))), store)


def auth_failed(store: str, where: str, reason: str) -> StoreFault:
    """The fault of a server that refuses the URL's credentials (or wants some)."""
    line = AUTH_FAILED.format(store=store, where=where, reason=reason, option=url_option(store))
    return StoreFault(mask(line), store)


def url_option(store: str) -> str:
    """The command-line option that gives ``store``'s URL."""
    return f"--rollback-{store}-url"


def seconds(timeout: float) -> str:
    """``2``, ``0.5``, ``30``: a time-out as the user wrote it."""
    return f"{timeout:g}"


def reason(exc: BaseException) -> str:
    """A short reason for a connection error: ``connection refused``, or the first line of its message."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__  # (a connection's own error wraps the OSError)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    lines = str(exc).strip().splitlines()
    return mask(lines[0]) if lines else type(exc).__name__


def require(store: str, package: str, extra: str) -> None:
    """Check that ``package`` can be imported, or raise :class:`MissingClient` with the command that installs it.

    The package is found, not imported (redis-py alone takes about 0.1 s to
    import): it is imported by the fixture that makes its client, if a test asks
    for one. Only a package that cannot be found is imported, for the reason.
    """
    if sys.modules.get(package) is not None:
        return
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(package) is not None:
            return
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise MissingClient(
            MISSING_CLIENT.format(store=store, package=package, reason=reason(exc), extra=extra)
        ) from None


class Faulting(Protocol):
    """What :func:`one_line` needs of an adapter."""

    name: str
    #: seconds to wait for each reply of the server (``--rollback-timeout``)
    timeout: float
    #: the line of the fault of a server that went away (None: none, or it answered since)
    _gone: str | None

    def _fault_of(self, exc: Exception) -> StoreFault | None:
        """``exc`` as the one-line fault of the server, after dropping the connection; None: not such a fault."""

    def _addresses(self) -> Sequence[tuple[str, int]]:
        """The server's addresses (host, port), known without asking anyone."""


_A = TypeVar("_A", bound=Faulting)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_line(method: Callable[Concatenate[_A, _P], _R]) -> Callable[Concatenate[_A, _P], _R]:
    """An adapter method whose connection errors come out as one :class:`StoreFault`.

    Once the server went away (it refused a connection), later calls fail at once with
    the same line for as long as its address refuses connections, instead of waiting
    for the client's time-outs at every level the session tears down; once it
    accepts them again, the call goes ahead (and the adapter restores fully).
    """

    @functools.wraps(method)
    def wrapper(self: _A, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._gone is not None and refused(self._addresses(), self.timeout):
            raise StoreFault(self._gone, self.name, gone=True)
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:
            fault = exc if isinstance(exc, StoreFault) else self._fault_of(exc)
            if fault is None:
                raise
            self._gone = str(fault) if fault.gone else None
            if fault is exc:
                raise
            raise fault from None
        self._gone = None
        return result

    return wrapper


def refused(addresses: Sequence[tuple[str, int]], timeout: float) -> bool:
    """True when every address refuses a TCP connection right now (the server is still not running)."""
    for host, port in addresses:
        try:
            socket.create_connection((host, port), timeout=min(timeout, PROBE_LIMIT)).close()
        except ConnectionRefusedError:
            continue
        except OSError:  # no answer either way: let the real call find out
            return False
        return False
    return bool(addresses)


def fail(line: str) -> NoReturn:
    """Fail the running set-up, test or teardown with ``line`` alone: no traceback, no chained errors."""
    raise pytest.fail.Exception(line, pytrace=False) from None


class Shown:
    """The stores whose fault a session has reported, so that the teardowns of its scopes do not repeat it.

    A server that is gone fails every restore after it: the test that found it
    errors with the line, and so does every later test that needs the store; the
    module and session levels torn down after them (several at once, which pytest
    would show as an exception group) and the session's end say nothing more.
    """

    def __init__(self) -> None:
        self.stores: set[str] = set()

    def __contains__(self, exc: BaseException) -> bool:
        """True for a fault of a store that has had one reported."""
        return isinstance(exc, StoreFault) and exc.store in self.stores

    @contextlib.contextmanager
    def one_line(self, repeat: bool = True) -> Iterator[None]:
        """Report a :class:`StoreFault` raised in the block as its line; ``repeat=False``: unless its store had one."""
        try:
            yield
        except StoreFault as exc:
            if repeat or exc not in self:
                self.stores.add(exc.store)
                fail(str(exc))
        except StoreBroken as exc:  # a restore that failed, the fault included: said once, by this test
            self.stores.update(exc.stores)
            fail(str(exc))
