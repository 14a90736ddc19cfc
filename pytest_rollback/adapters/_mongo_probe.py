"""The MongoDB adapter's quiet probe on a socket of its own: one ``serverStatus`` in an ``OP_MSG``.

Every restore of a test that wrote nothing costs the ``serverStatus`` whose
write counters show that nothing moved. Sent through pymongo, that one command
costs about 0.3 ms of this process's CPU (sessions, cluster-time gossip, server
selection, monitoring) for a reply of under a kilobyte; written on a kept-open
socket it costs a third of that, and it can be written ahead (the engine's
``prefetch``) and its reply read when the rollback needs it, without a thread,
as the Redis adapter does.

Only for a deployment of one server reached without credentials or TLS (the
plugin's own servers, and most test setups): the probe must read the counters of
the server that takes the writes, and a handshake with authentication or TLS is
pymongo's to do. Anything else keeps pymongo's ``serverStatus``.

Errors are raised as pymongo's (``AutoReconnect``, ``NetworkTimeout``,
``OperationFailure``), so the adapter treats a dead or frozen server the same
way whichever path the probe took.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from typing import Any

import bson
from pymongo import uri_parser
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure, PyMongoError

#: opcode of OP_MSG, and the header before its flags: length, request id, response to, opcode
_OP_MSG = 2013
_HEADER = struct.Struct("<iiii")
#: flag bit of a reply that ends with a CRC-32C checksum
_CHECKSUM_PRESENT = 1
#: the largest reply taken (a serverStatus reply is under a few kilobytes; MongoDB's limit is 48 MB)
_MAX_REPLY = 48 * 1000 * 1000


def eligible(url: str) -> bool:
    """True when ``url`` reaches its server with neither credentials nor TLS, not through DNS seed lists,
    a load balancer or compression: a plain socket then talks to it as pymongo would."""
    if url.startswith("mongodb+srv://"):
        return False
    try:
        parsed = uri_parser.parse_uri(url)
    except (PyMongoError, ValueError):
        return False
    if parsed.get("username"):
        return False
    flags = {str(key).lower(): value for key, value in (parsed.get("options") or {}).items()}
    return not (
        flags.get("tls") or flags.get("ssl") or flags.get("authmechanism") or flags.get("loadbalanced")
        or flags.get("compressors")
    )


class ProbeSocket:
    """``serverStatus`` sent on one socket to ``address``; :meth:`send` and :meth:`receive` may be called
    apart (the request written ahead, its reply read later). A request whose reply nobody read is not
    taken for a later one: the socket is dropped, and a new one opened for the next request."""

    def __init__(self, address: tuple[str, int], timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._pending: int | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._request = bson.encode({"serverStatus": 1, "$db": "admin"})

    def server_status(self) -> dict[str, Any]:
        """Send the command and wait for its reply."""
        return self.receive(self.send())

    def send(self) -> int:
        """Write the command; its request id, for :meth:`receive`."""
        with self._lock:
            return self._send()

    def receive(self, request_id: int) -> dict[str, Any]:
        """The reply to the request ``request_id`` (sent anew when its reply was dropped)."""
        with self._lock:
            if self._pending != request_id or self._sock is None:
                request_id = self._send()
            sock = self._sock
            assert sock is not None
            try:
                length, _, response_to, opcode = _HEADER.unpack(self._read(sock, _HEADER.size))
                if opcode != _OP_MSG or response_to != request_id or not 21 <= length <= _MAX_REPLY:
                    raise AutoReconnect(f"{self._where()}: an unexpected reply to serverStatus")
                rest = self._read(sock, length - _HEADER.size)
            except OSError as exc:
                self._drop()
                raise self._error(exc) from None
            except AutoReconnect:
                self._drop()
                raise
            self._pending = None
        (flags,) = struct.unpack_from("<I", rest)
        end = len(rest) - (4 if flags & _CHECKSUM_PRESENT else 0)
        if rest[4] != 0:
            raise AutoReconnect(f"{self._where()}: an unexpected reply to serverStatus")
        reply = bson.decode(rest[5:end])
        if reply.get("ok") != 1:
            raise OperationFailure(str(reply.get("errmsg", "serverStatus failed")), reply.get("code"), reply)
        return reply

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _send(self) -> int:
        if self._pending is not None:  # a reply nobody read would be taken for this one's
            self._drop()
        sock = self._connect()
        request_id = next(self._ids)
        body = b"\x00\x00\x00\x00\x00" + self._request  # no flags; one section of kind 0
        try:
            sock.sendall(_HEADER.pack(_HEADER.size + len(body), request_id, 0, _OP_MSG) + body)
        except OSError as exc:
            self._drop()
            raise self._error(exc) from None
        self._pending = request_id
        return request_id

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout)
            except OSError as exc:
                raise self._error(exc) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _read(self, sock: socket.socket, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = sock.recv(min(left, 1 << 16))
            if not chunk:
                raise AutoReconnect(f"{self._where()}: connection closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _drop(self) -> None:
        self._pending = None
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _error(self, exc: OSError) -> AutoReconnect:
        if isinstance(exc, TimeoutError):
            return NetworkTimeout(f"{self._where()}: timed out")
        return AutoReconnect(f"{self._where()}: {exc.strerror or exc}")
