"""A small RESP3 connection: the Redis adapter's only link to the server.

The adapter needs things redis-py hides: one connection that is subscribed to
keyspace notifications *and* runs commands (RESP3 allows both), push messages
read in order with the replies (so a reply is a barrier for every event that the
server published before it), and a connection that never reconnects on its own,
so that a dropped subscription is always noticed.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence

Arg = bytes | str | int | float


_PMESSAGE = b">4\r\n$8\r\npmessage\r\n"


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from the server."""


class ConnectionLost(Exception):
    """The connection broke: closed by the server, killed, or timed out (``timed_out``: no reply in time)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Push(list):  # type: ignore[type-arg]
    """An out-of-band RESP3 push message (``>``), e.g. a pub/sub message."""


def encode(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        else:
            b = repr(a).encode() if isinstance(a, float) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Resp3Connection:
    """One TCP connection speaking RESP3. Not thread-safe; never reconnects by itself.

    ``timeout`` bounds each wait for the server (connecting, sending, every read of
    a reply), not a whole command: a long pipeline whose replies keep coming is not
    cut short. A wait that runs out closes the connection (a late reply would
    answer the wrong command) with :class:`ConnectionLost` whose ``timed_out`` is set.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        on_push: Callable[[Push], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.on_push = on_push
        self._buf = bytearray()
        self._pos = 0
        # an ASCII name as bytes: a str makes getaddrinfo load the idna codec (~5 ms of every run's start)
        where = host.encode() if host.isascii() else host
        self._sock: socket.socket | None = socket.create_connection((where, port), timeout=timeout)  # type: ignore[arg-type]
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello: list[Arg] = ["HELLO", 3]
        if password is not None:
            hello += ["AUTH", username or "default", password]
        try:
            self.server_info = self.call(*hello)
        except ReplyError:  # refused (credentials, no RESP3): nothing more is sent on it
            self.close()
            raise

    # -- sending -------------------------------------------------------------
    def send(self, commands: Iterable[Sequence[Arg]]) -> None:
        data = b"".join(encode(c) for c in commands)
        if self._sock is None:
            raise ConnectionLost("connection is closed")
        try:
            view = memoryview(data)
            while view:  # not sendall: its time-out bounds the whole send, this one each wait for room
                view = view[self._sock.send(view) :]
        except TimeoutError:
            self.close()
            raise self._timed_out() from None
        except OSError as exc:
            self.close()
            raise ConnectionLost(str(exc)) from exc

    def call(self, *args: Arg) -> object:
        """Send one command and return its reply; raise :class:`ReplyError` on an error."""
        self.send([args])
        reply = self.read_reply()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[object]:
        """Send all commands at once and return their replies (errors returned, not raised)."""
        if not commands:
            return []
        self.send(commands)
        return [self.read_reply() for _ in commands]

    # -- receiving -----------------------------------------------------------
    def read_reply(self) -> object:
        """Next reply; push messages met on the way go to ``on_push``."""
        while True:
            if self._buf.startswith(_PMESSAGE, self._pos):
                fast = self._read_pmessage()
                if fast is not None:
                    if self.on_push is not None:
                        self.on_push(fast)
                    continue
            value = self._read_value()
            if isinstance(value, Push):
                if self.on_push is not None:
                    self.on_push(value)
                continue
            return value

    def _read_pmessage(self) -> Push | None:
        """A keyspace event already whole in the buffer, parsed without the general parser.

        Events are most of what the adapter reads (one per key written), so this
        fast path matters; None when the message is not whole yet.
        """
        buf = self._buf
        pos = self._pos + len(_PMESSAGE)
        parts: list[bytes] = [b"pmessage"]
        for _ in range(3):
            if buf[pos : pos + 1] != b"$":
                return None
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            start = eol + 2
            end = start + int(buf[pos + 1 : eol])
            if end + 2 > len(buf):
                return None
            parts.append(bytes(buf[start:end]))
            pos = end + 2
        self._pos = pos
        return Push(parts)

    def _fill(self) -> None:
        if self._sock is None:
            raise ConnectionLost("connection is closed")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        try:
            chunk = self._sock.recv(1 << 18)
        except TimeoutError:
            self.close()
            raise self._timed_out() from None
        except OSError as exc:
            self.close()
            raise ConnectionLost(str(exc)) from exc
        if not chunk:
            self.close()
            raise ConnectionLost("server closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._pos = end + 2
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n + 2:
            self._fill()
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n + 2
        return data

    def _read_value(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind in (b"$", b"=", b"!"):
            n = int(rest)
            if n < 0:
                return None
            data = self._exact(n)
            if kind == b"=":
                return data[4:]  # verbatim string: drop the "txt:" format prefix
            if kind == b"!":
                return ReplyError(data.decode(errors="replace"))
            return data
        if kind in (b"*", b">", b"~"):
            n = int(rest)
            if n < 0:
                return None
            items = [self._read_value() for _ in range(n)]
            return Push(items) if kind == b">" else items
        if kind == b"%":
            n = int(rest)
            flat: dict[object, object] = {}
            for _ in range(n):
                key = self._read_value()
                flat[key if not isinstance(key, list) else tuple(key)] = self._read_value()
            return flat
        if kind == b"|":  # attributes precede the real reply: skip them
            for _ in range(2 * int(rest)):
                self._read_value()
            return self._read_value()
        if kind == b"_":
            return None
        if kind == b"-":
            return ReplyError(rest.decode(errors="replace"))
        if kind == b"#":
            return rest == b"t"
        if kind == b",":
            return float(rest)
        if kind == b"(":
            return int(rest)
        self.close()
        raise ConnectionLost(f"unexpected RESP3 type byte {kind!r}")

    def _timed_out(self) -> ConnectionLost:
        return ConnectionLost(f"no reply in {self.timeout:g} s", timed_out=True)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def closed(self) -> bool:
        return self._sock is None


def info(conn: Resp3Connection, section: str) -> dict[str, str]:
    """The fields of one ``INFO`` section (``redis_version``, ``process_id``, ...), as text."""
    reply = conn.call("INFO", section)
    text = reply.decode(errors="replace") if isinstance(reply, (bytes, bytearray)) else str(reply)
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {name: value.strip() for name, value in fields}
