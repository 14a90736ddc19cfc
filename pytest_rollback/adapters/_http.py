"""A small JSON-over-HTTP client for the adapters of HTTP stores (Elasticsearch).

The adapter speaks plain JSON rather than through the ``elasticsearch`` package:
that package's major version picks a compatibility header the server must
accept (a 9.x client refuses an 8.x server), and rollback must work with
whatever client the user's code has.

Plain ``http://`` requests go over keep-alive sockets of this module's own: most
tests touch no store, and their restore's probes are a few small requests whose
cost was mostly urllib3's and http.client's (pool bookkeeping, headers parsed by
the email package), about three times what the request itself costs.
``https://`` goes through urllib3, which verifies the server's certificate.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import select
import socket
import threading
import weakref
from base64 import b64encode
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .. import faults

#: idle connections kept for the next requests (the adapter's main thread and its prefetch thread)
IDLE = 2
#: sent when the caller set no user agent: a server's per-client counts need one for every client
AGENT = "pytest-rollback"
#: statuses whose reply has no body (as well as 1xx, and any reply to HEAD)
NO_BODY = (204, 304)


class HttpError(Exception):
    """The server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status, self.body = status, body
        reason = body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            reason = body["error"].get("reason") or body["error"].get("type")
        super().__init__(f"{method} {path} answered {status}: {str(reason)[:300]}")


class ConnectionFailed(Exception):
    """No answer: the server could not be reached, or gave no reply in time (``timed_out``)."""

    def __init__(self, reason: str, timed_out: bool) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


class Http:
    """Keep-alive JSON requests to one server (``http://host:port`` with optional credentials).

    ``timeout`` bounds connecting and each wait for the server's reply; a server
    that cannot be reached or does not reply in time raises :class:`ConnectionFailed`.
    Safe to call from several threads: each request has a connection of its own
    while it runs.
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 9200
        self.base = f"{parts.scheme or 'http'}://{parts.hostname}:{parts.port or 9200}{parts.path.rstrip('/')}"
        headers = {"accept": "application/json", "content-type": "application/json"}
        if parts.username:
            credentials = f"{parts.username}:{parts.password or ''}".encode("latin-1")
            headers["authorization"] = "Basic " + b64encode(credentials).decode()
        self.headers = headers
        self.timeout = timeout
        self._prefix = parts.path.rstrip("/")
        name = f"[{self.host}]" if ":" in self.host else self.host
        self._host_field = f"host: {name}:{self.port}\r\n"
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._idle)  # (a client nobody closed leaves no socket open)
        self._tls: Any = None
        if parts.scheme == "https":
            import urllib3

            self._tls = urllib3.PoolManager(
                num_pools=2, maxsize=2, timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False
            )

    def __call__(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Any:
        """Send one request; return the decoded JSON. Statuses in ``ok`` return ``None`` instead of raising.

        ``body`` is sent as JSON, or as it is when it is ``bytes`` (newline-delimited JSON, for ``_bulk``).
        """
        return self.send(method, path, body, ok, **params).result()

    def send(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Pending:
        """Write one request now, and go on: :meth:`Pending.result` reads its reply (as ``__call__`` returns
        it), or :meth:`Pending.drop` closes its connection, so that nobody reads it as another's. Over
        ``https://`` the request is sent and its reply read here.
        """
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items() if v is not None}
        tail = path + ("?" + urlencode(query) if query else "")
        headers = self.headers
        if isinstance(body, bytes):  # newline-delimited JSON (a bulk request), sent as it is
            data: bytes | None = body
            headers = {**headers, "content-type": "application/x-ndjson"}
        else:
            data = None if body is None else json.dumps(body).encode()
        if self._tls is not None:
            return Pending(self, method, path, ok, None, self._via_urllib3(method, self.base + tail, data, headers))
        return Pending(self, method, path, ok, self._write(method, tail, data, headers), None)

    def _write(self, method: str, tail: str, data: bytes | None, headers: dict[str, str]) -> _Connection:
        """The request written on an idle connection, or a new one, whose reply is to be read next."""
        target = quote(self._prefix + tail, safe="/?&=%:@!$'()*+,;-._~")
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if "user-agent" not in headers:
            fields += f"user-agent: {AGENT}\r\n"
        if data is not None or method in ("POST", "PUT", "PATCH"):
            fields += f"content-length: {len(data or b'')}\r\n"
        request = f"{method} {target} HTTP/1.1\r\n{self._host_field}{fields}\r\n".encode("latin-1")
        if data:
            request += data
        conn = self._connection()
        try:
            conn.sock.sendall(request)
        except BaseException as exc:
            conn.close()
            raise _failure(exc) from None
        return conn

    def _read(self, conn: _Connection, head_only: bool) -> tuple[int, bytes]:
        """The reply on ``conn``; the connection is kept only after a whole reply."""
        kept = False
        try:
            status, raw, keep = conn.reply(head_only)
            if keep:
                kept = self._put_back(conn)
            return status, raw
        except BaseException as exc:
            raise _failure(exc) from None
        finally:
            if not kept:
                conn.close()

    def _connection(self) -> _Connection:
        """An idle connection the server has not closed (nor sent anything on since), else a new one.

        A request is never sent again on another connection: one whose reply did not come may have
        been carried out (a write), and from here a server that closed the connection just as the
        request arrived looks like one that took it and died. The check below catches the usual
        case, a server that closed an idle connection some time before.
        """
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if not conn.stale():
                return conn
            conn.close()
        try:
            return _Connection(self.host, self.port, self.timeout)
        except OSError as exc:
            raise _failure(exc) from None

    def _put_back(self, conn: _Connection) -> bool:
        with self._lock:
            if len(self._idle) < IDLE:
                self._idle.append(conn)
                return True
        return False

    def _via_urllib3(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        import urllib3

        try:
            resp = self._tls.request(method, url, body=data, headers=headers)
        except urllib3.exceptions.NewConnectionError as exc:  # (a ConnectTimeoutError too, oddly)
            raise ConnectionFailed(_cause(exc), timed_out=False) from None
        except urllib3.exceptions.TimeoutError:
            raise ConnectionFailed("no reply", timed_out=True) from None
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionFailed(_cause(exc), timed_out=False) from None
        return resp.status, resp.data

    def close(self) -> None:
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        _close_all(idle)
        if self._tls is not None:
            self._tls.clear()


class Pending:
    """A request written (:meth:`Http.send`) whose reply is read by :meth:`result`, once."""

    __slots__ = ("_http", "_method", "_path", "_ok", "_conn", "_reply")

    def __init__(
        self, http: Http, method: str, path: str, ok: tuple[int, ...], conn: _Connection | None,
        reply: tuple[int, bytes] | None,
    ) -> None:
        self._http, self._method, self._path, self._ok = http, method, path, ok
        self._conn, self._reply = conn, reply

    def result(self) -> Any:
        """The decoded JSON of the reply; ``None`` for a status in ``ok``; :class:`HttpError` for another
        status of 300 or more; :class:`ConnectionFailed` when no whole reply came."""
        if self._reply is None:
            conn, self._conn = self._conn, None
            if conn is None:
                raise ConnectionFailed("the request's connection was dropped before its reply", timed_out=False)
            self._reply = self._http._read(conn, self._method == "HEAD")
        status, raw = self._reply
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
        if status >= 300:
            if status in self._ok:
                return None
            raise HttpError(self._method, self._path, status, payload)
        return payload

    def drop(self) -> None:
        """Close the connection of a reply nobody will read (nothing to do once it was read)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _failure(exc: BaseException) -> BaseException:
    """A socket's error as the client's: ConnectionFailed (no reply in time, or the connection failed)."""
    if isinstance(exc, TimeoutError):
        return ConnectionFailed("no reply", timed_out=True)
    if isinstance(exc, OSError):
        return ConnectionFailed(faults.reason(exc), timed_out=False)
    if isinstance(exc, ValueError):  # a length that is not a number
        return ConnectionFailed("malformed reply", timed_out=False)
    return exc


class _Closed(OSError):
    """The server closed the connection before the whole reply came."""


class _Connection:
    """One keep-alive socket and the bytes read past the last reply (none, with a well-behaved server)."""

    __slots__ = ("sock", "buf", "_poll")

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(self.sock, select.POLLIN)

    def stale(self) -> bool:
        """True when the idle socket is readable: closed by the server, or holding bytes nobody asked for."""
        if self._poll is None:
            return bool(select.select([self.sock], [], [], 0)[0])
        return bool(self._poll.poll(0))

    def close(self) -> None:
        self.sock.close()

    def reply(self, head_only: bool) -> tuple[int, bytes, bool]:
        """The status, body and whether the connection can carry another request."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            while end < 0:
                self._more(first=not self.buf)
                end = self.buf.find(b"\r\n\r\n")
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            self.buf = self.buf[end + 4:]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not (version.startswith("HTTP/") and code.isdigit()):
                raise _Closed(f"not an HTTP reply: {lines[0][:60]!r}")
            status = int(code)
            if not 100 <= status < 200 or status == 101:
                break  # (an interim 1xx reply is followed by the real one)
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        tokens = fields.get("connection", "").lower()
        keep = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        if head_only or status in NO_BODY or status < 200:
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in fields:
            body = self._exactly(int(fields["content-length"]))
        else:  # the body ends where the server closes the connection
            while self._more(first=False, eof_ok=True):
                pass
            body, self.buf, keep = self.buf, b"", False
        return status, body, keep and not self.buf

    def _more(self, first: bool, eof_ok: bool = False) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.buf += data
            return True
        if eof_ok:
            return False
        raise _Closed("remote end closed connection" + ("" if first else " mid-reply"))

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more(first=False)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n")
        while end < 0:
            self._more(first=False)
            end = self.buf.find(b"\r\n")
        line, self.buf = self.buf[:end], self.buf[end + 2:]
        return line

    def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self._line().split(b";", 1)[0].strip() or b"x", 16)
            if not size:
                break
            parts.append(self._exactly(size))
            if self._line():
                raise _Closed("bad chunk: no line end after its data")
        while self._line():  # trailer fields, up to an empty line
            pass
        return b"".join(parts)


def _close_all(connections: list[_Connection]) -> None:
    for conn in connections:
        conn.close()


def _cause(exc: Exception) -> str:
    """``connection refused``: the innermost reason of a urllib3 error, without its pool and address."""
    text = str(exc)
    for known in ("Connection refused", "Connection reset by peer", "Remote end closed connection"):
        if known in text:
            return known.lower()
    return text.rsplit(": ", 1)[-1].strip("()'\" ")[:200] or type(exc).__name__
