"""The MongoDB adapter's quiet probe on a socket of its own (``adapters/_mongo_probe.py``).

Against SecantusDB: an untouched test's rollback sends pymongo nothing and moves
the server's command counter by exactly its one ``serverStatus``; a probe
written ahead whose reply nobody read is not taken for a later one. Against
small servers of the test's own (127.0.0.1, free ports): each way the socket can
fail is raised as the pymongo error the adapter turns into one line. Which URLs
keep pymongo's probe.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import bson
import pytest
from pymongo import monitoring
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure

from pytest_rollback.adapters._mongo_probe import ProbeSocket, eligible
from pytest_rollback.adapters.mongo import MongoAdapter
from pytest_rollback.api import Service


class _Sent(monitoring.CommandListener):
    """The commands pymongo clients made after it was registered sent while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_LISTENER: list[_Sent] = []


def test_an_untouched_rollback_probes_on_its_own_socket_with_one_command(
    secantus: Service, secantus_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each quiet rollback writes one serverStatus on the probe socket and sends pymongo nothing: a probe is
    quiet only when the server counted exactly one command since the last (else the rollback would send a
    barrier, and list the collections, through pymongo)."""
    if not _LISTENER:
        _LISTENER.append(_Sent())
        monitoring.register(_LISTENER[0])  # (for clients made from now on: the adapter's)
    listener = _LISTENER[0]
    adapter = MongoAdapter(secantus.url)
    probes: list[int] = []
    send = ProbeSocket._send

    def counted(probe: ProbeSocket) -> int:
        probes.append(1)
        return send(probe)

    monkeypatch.setattr(ProbeSocket, "_send", counted)
    try:
        cp = adapter.checkpoint("test")
        assert adapter.rollback(cp).mode == "none"
        listener.names.clear()
        probes.clear()
        listener.on = True
        for _ in range(3):
            assert adapter.rollback(cp).mode == "none"
        with adapter.prefetch(cp):
            assert adapter.rollback(cp).mode == "none"
        listener.on = False
        assert listener.names == [], "the probe went through pymongo, or a probe was not quiet"
        assert len(probes) == 4
        secantus_client.app.people.insert_one({"_id": 1})
        listener.on = True
        with adapter.prefetch(cp):
            report = adapter.rollback(cp)
        listener.on = False
        assert report.mode == "incremental" and report.restored == 1
        assert "update" in listener.names, "a test that wrote: the barrier"
        assert secantus_client.app.people.count_documents({}) == 0
    finally:
        adapter.close()


def test_a_probe_whose_reply_was_not_read_is_not_taken_for_the_next(secantus: Service) -> None:
    probe = ProbeSocket((secantus.host, secantus.port), timeout=10)
    try:
        first = probe.send()
        second = probe.send()  # the first one's reply is on the socket, unread: a new socket
        assert probe.receive(second)["ok"] == 1
        assert probe.receive(first)["ok"] == 1  # sent again: its own reply, not a stale one
        assert probe.server_status()["opcounters"]["command"] > 0
    finally:
        probe.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], tuple[str, int]]]:
    """Start a one-connection server on 127.0.0.1 that runs ``serve`` on what it accepts."""
    started: list[tuple[socket.socket, threading.Thread]] = []

    def start(serve: Callable[[socket.socket], None]) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))

        def accept() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                serve(conn)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        started.append((listener, thread))
        return listener.getsockname()[:2]

    yield start
    for listener, thread in started:
        listener.close()
        thread.join(5)


def _request_id(conn: socket.socket) -> int:
    header = b""
    while len(header) < 16:
        header += conn.recv(16 - len(header))
    length, request_id, _, _ = struct.unpack("<iiii", header)
    left = length - 16
    while left:
        left -= len(conn.recv(left))
    return request_id


def _reply(request_id: int, doc: dict[str, Any]) -> bytes:
    body = b"\x00\x00\x00\x00\x00" + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(body), 7, request_id, 2013) + body


def test_a_refused_port_is_a_connection_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]
    listener.close()
    with pytest.raises(AutoReconnect, match="onnection refused"):
        ProbeSocket(address, timeout=5).server_status()


def test_a_server_that_never_answers_times_out(fake_server: Any) -> None:
    done = threading.Event()
    address = fake_server(lambda conn: done.wait(10))
    try:
        with pytest.raises(NetworkTimeout, match="timed out"):
            ProbeSocket(address, timeout=0.3).server_status()
    finally:
        done.set()


def test_a_server_that_closes_mid_reply_is_a_connection_error(fake_server: Any) -> None:
    address = fake_server(lambda conn: conn.sendall(_reply(_request_id(conn), {"ok": 1})[:20]))
    with pytest.raises(AutoReconnect, match="connection closed"):
        ProbeSocket(address, timeout=5).server_status()


def test_a_refused_command_is_an_operation_failure(fake_server: Any) -> None:
    address = fake_server(
        lambda conn: conn.sendall(_reply(_request_id(conn), {"ok": 0, "errmsg": "not allowed", "code": 13}))
    )
    with pytest.raises(OperationFailure, match="not allowed") as raised:
        ProbeSocket(address, timeout=5).server_status()
    assert raised.value.code == 13


def test_a_reply_to_another_request_is_refused(fake_server: Any) -> None:
    address = fake_server(lambda conn: conn.sendall(_reply(_request_id(conn) + 1, {"ok": 1})))
    with pytest.raises(AutoReconnect, match="unexpected reply"):
        ProbeSocket(address, timeout=5).server_status()


@pytest.mark.parametrize(
    ("url", "lean"),
    [
        ("mongodb://127.0.0.1:27017/?directConnection=true", True),
        ("mongodb://127.0.0.1:27017,127.0.0.1:27018/?replicaSet=rs0", True),  # one probe socket only if one server
        ("mongodb://user:secret@127.0.0.1:27017/", False),
        ("mongodb://127.0.0.1:27017/?tls=true&tlsAllowInvalidCertificates=true", False),
        ("mongodb://127.0.0.1:27017/?ssl=true", False),
        ("mongodb://127.0.0.1:27017/?authMechanism=MONGODB-X509&tls=true", False),
        ("mongodb://127.0.0.1:27017/?loadBalanced=true", False),
        ("mongodb://127.0.0.1:27017/?compressors=zlib", False),
        ("mongodb+srv://cluster.example.invalid/", False),
    ],
)
def test_urls_with_credentials_tls_or_a_balancer_keep_pymongos_probe(url: str, lean: bool) -> None:
    assert eligible(url) is lean
