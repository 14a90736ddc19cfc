"""The plugin's own HTTP client (``adapters/_http.py``): JSON round trips with noida-db, and replies a
real server seldom gives (chunked, read to the close, cut short, never sent) from scripted loopback servers."""

from __future__ import annotations

import base64
import gc
import json
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_rollback.adapters._http import ConnectionFailed, Http, HttpError
from pytest_rollback.api import Service

# -- against noida-db ----------------------------------------------------------------------------


@pytest.fixture
def http(cleared_noida: Service) -> Iterator[Http]:
    client = Http(cleared_noida.url, timeout=30)
    yield client
    client.close()


def test_json_round_trips(http: Http) -> None:
    http("PUT", "/shop", {"mappings": {"properties": {"n": {"type": "long"}}}})
    http("PUT", "/shop/_doc/1", {"n": 1, "name": "é"}, refresh=True)
    assert http("GET", "/shop/_doc/1")["_source"] == {"n": 1, "name": "é"}
    query = {"query": {"term": {"n": 1}}}
    found = http("POST", "/shop/_search", query, filter_path="hits.total", track_total_hits=True)
    assert found == {"hits": {"total": {"value": 1, "relation": "eq"}}}
    assert http("GET", "/shop/_doc/2", ok=(404,)) is None


def test_an_error_status_raises_with_the_servers_reason(http: Http) -> None:
    with pytest.raises(HttpError) as err:
        http("GET", "/missing/_doc/1")
    assert err.value.status == 404
    assert "no such index [missing]" in str(err.value) and str(err.value).startswith("GET /missing/_doc/1 answered 404")


def test_bytes_are_sent_as_newline_delimited_json(http: Http) -> None:
    lines = [{"index": {"_index": "bulk", "_id": str(i)}} if j == 0 else {"n": i} for i in range(3) for j in (0, 1)]
    reply = http("POST", "/_bulk", b"".join(json.dumps(line).encode() + b"\n" for line in lines), refresh=True)
    assert reply["errors"] is False and len(reply["items"]) == 3
    assert http("GET", "/bulk/_count")["count"] == 3


def test_the_user_agent_set_after_construction_is_sent_with_every_request(http: Http) -> None:
    http("GET", "/")  # (the connection is made before the agent is set, and kept)
    http.headers["user-agent"] = "pytest-rollback/http-client-test"
    for _ in range(3):
        http("GET", "/")
    clients = [
        c for node in http("GET", "/_nodes/stats/http")["nodes"].values() for c in node["http"]["clients"]
        if c["agent"] == "pytest-rollback/http-client-test"
    ]
    assert len(clients) == 1, clients  # one kept-alive connection, which sent all five requests
    assert clients[0]["request_count"] == 5 and clients[0]["last_uri"] == "/_nodes/stats/http"


def test_two_threads_share_one_client(http: Http) -> None:
    http("PUT", "/shared", {})
    failures: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(50):
                http("PUT", f"/shared/_doc/{thread}-{i}", {"thread": thread, "i": i})
                assert http("GET", f"/shared/_doc/{thread}-{i}")["_source"] == {"thread": thread, "i": i}
                assert http("GET", "/")["version"]["number"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    http("POST", "/shared/_refresh")
    assert http("GET", "/shared/_count")["count"] == 100


# -- against scripted loopback servers ----------------------------------------------------------------

#: what a scripted server does after sending a reply
KEEP, CLOSE, HANG = "keep", "close", "hang"


class Scripted:
    """A server on a free loopback port answering the requests it reads, on whatever connection, with
    the next of ``replies`` (bytes sent, then KEEP the connection, CLOSE it or HANG without a word)."""

    def __init__(self, replies: list[tuple[bytes, str]]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, bytes]] = []
        self.accepted = 0
        self.closed = threading.Event()  # set when a reply's CLOSE is done
        self.hung_up = threading.Event()  # set when the client closed a connection
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        self.hung_up.set()
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
                size = int(fields.get("content-length", 0))
                while len(buf) < size:
                    buf += conn.recv(65536)
                self.requests.append((head.decode(), buf[:size]))
                buf = buf[size:]
                reply, then = self.replies.pop(0)
                conn.sendall(reply)
                if then == HANG:
                    self.stopped.wait(30)
                if then != KEEP:
                    conn.shutdown(socket.SHUT_RDWR)
                    self.closed.set()
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def serve(*replies: tuple[bytes, str]) -> Scripted:
        servers.append(Scripted(list(replies)))
        return servers[-1]

    yield serve
    for server in servers:
        server.stop()


def reply(body: bytes = b'{"ok": true}', status: str = "200 OK", *fields: str) -> bytes:
    head = [f"HTTP/1.1 {status}", "content-type: application/json", *fields]
    if not any(f.lower().startswith(("content-length", "transfer-encoding")) for f in fields):
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_requests_carry_the_query_credentials_and_content_type(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(), KEEP), (reply(), KEEP))
    http = Http(f"http://elastic:s3cret@127.0.0.1:{server.port}/prefix/", timeout=5)
    assert (http.host, http.port, http.base) == ("127.0.0.1", server.port, f"http://127.0.0.1:{server.port}/prefix")
    assert http("GET", "/a/_search", refresh=True, routing=None, q="x y") == {"ok": True}
    assert http("POST", "/_bulk", b'{"index": {}}\n{}\n') == {"ok": True}
    (first, none), (second, bulk) = server.requests
    assert first.startswith("GET /prefix/a/_search?refresh=true&q=x+y HTTP/1.1\r\n") and none == b""
    auth = "Basic " + base64.b64encode(b"elastic:s3cret").decode()
    assert f"authorization: {auth}" in first.split("\r\n") and "content-length" not in first
    assert "content-type: application/x-ndjson" in second.split("\r\n") and bulk == b'{"index": {}}\n{}\n'
    assert server.accepted == 1  # one kept-alive connection
    http.close()


def test_chunked_reply_with_an_interim_one_before(serve: Callable[..., Scripted]) -> None:
    body = b"4;ext=1\r\n{\"a\"\r\n6\r\n: [1, \r\n3\r\n2]}\r\n0\r\nx-trailer: 1\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    server = serve((interim + reply(body, "200 OK", "transfer-encoding: chunked"), KEEP), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == {"a": [1, 2]}
    assert http("GET", "/") == {"ok": True} and server.accepted == 1


def test_connection_close_reply_is_not_kept(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(b"[1]", "200 OK", "Connection: close", "content-length: 3"), KEEP), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == [1]
    assert http("GET", "/") == {"ok": True} and server.accepted == 2


def test_body_read_to_the_close_and_text_that_is_not_json(serve: Callable[..., Scripted]) -> None:
    server = serve((b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it", CLOSE), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == "all of it"
    assert http("GET", "/") == {"ok": True} and server.accepted == 2


def test_head_and_204_have_no_body(serve: Callable[..., Scripted]) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    server = serve((head, KEEP), (no_content, KEEP), (reply(b"", "404 Not Found"), KEEP), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("HEAD", "/index") is None
    assert http("DELETE", "/index") is None
    assert http("HEAD", "/other", ok=(404,)) is None
    assert http("GET", "/") == {"ok": True} and server.accepted == 1  # no byte of a body was waited for


def test_a_connection_the_server_closed_while_idle_is_replaced(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(), CLOSE), (reply(b"[2]"), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == {"ok": True}
    assert server.closed.wait(5)
    assert http("PUT", "/x", {"n": 2}) == [2]
    assert server.accepted == 2 and len(server.requests) == 2


def test_a_server_that_never_answers_times_out(serve: Callable[..., Scripted]) -> None:
    server = serve((b"", HANG), (reply(), KEEP))
    http = Http(server.url, timeout=0.3)
    with pytest.raises(ConnectionFailed) as failed:
        http("GET", "/")
    assert failed.value.timed_out and str(failed.value) == "no reply"
    assert http("GET", "/") == {"ok": True} and server.accepted == 2  # the silent connection was dropped


@pytest.mark.parametrize("scheme", ["http", "https"])  # (https:// goes through urllib3)
def test_a_refused_port(scheme: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(ConnectionFailed) as failed:
        Http(f"{scheme}://127.0.0.1:{port}", timeout=5)("GET", "/")
    assert not failed.value.timed_out and str(failed.value) == "connection refused"


def test_a_reply_cut_short_fails_and_its_connection_is_dropped(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(b'{"hits"', "200 OK", "content-length: 40"), CLOSE), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    with pytest.raises(ConnectionFailed) as failed:
        http("GET", "/")
    assert not failed.value.timed_out and str(failed.value) == "remote end closed connection mid-reply"
    assert http("GET", "/") == {"ok": True} and server.accepted == 2


def test_a_request_whose_connection_closes_unanswered_is_not_sent_again(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(), KEEP), (b"", CLOSE), (reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == {"ok": True}
    with pytest.raises(ConnectionFailed) as failed:
        http("POST", "/index/_doc", {"n": 1})  # a write the server may have carried out
    assert not failed.value.timed_out and str(failed.value) == "remote end closed connection"
    assert len(server.requests) == 2 and server.accepted == 1


def test_a_garbled_reply_is_a_failed_connection(serve: Callable[..., Scripted]) -> None:
    server = serve((b"SSH-2.0-OpenSSH\r\n\r\n", KEEP), (reply(b"x", "200 OK", "content-length: many"), KEEP))
    http = Http(server.url, timeout=5)
    for _ in range(2):
        with pytest.raises(ConnectionFailed) as failed:
            http("GET", "/")
        assert not failed.value.timed_out
    assert server.accepted == 2


def test_error_status_with_a_json_error(serve: Callable[..., Scripted]) -> None:
    error = json.dumps({"error": {"type": "x", "reason": "it broke"}, "status": 500}).encode()
    server = serve((reply(error, "500 Internal Server Error"), KEEP))
    with pytest.raises(HttpError) as err:
        Http(server.url, timeout=5)("GET", "/")
    assert err.value.status == 500 and str(err.value) == "GET / answered 500: it broke"


def test_no_more_idle_connections_are_kept_than_two(serve: Callable[..., Scripted]) -> None:
    server = serve(*[(reply(), KEEP)] * 8)
    http = Http(server.url, timeout=5)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def one() -> None:
        barrier.wait()
        results.append(http("GET", "/"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"ok": True}] * 4
    opened = server.accepted
    for _ in range(4):
        assert http("GET", "/") == {"ok": True}
    assert server.accepted == opened  # sequential requests reuse a kept connection
    assert len(http._idle) <= 2
    http.close()
    assert not http._idle


def test_a_client_nobody_closed_closes_its_idle_connections(serve: Callable[..., Scripted]) -> None:
    server = serve((reply(), KEEP))
    http = Http(server.url, timeout=5)
    assert http("GET", "/") == {"ok": True}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del http
        gc.collect()
    assert server.hung_up.wait(5)
    # closed, not left to the collector (the collection may find other tests' leftovers: only this server's)
    mine = f"'127.0.0.1', {server.port})"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and mine in str(w.message)]


def test_a_request_written_ahead_is_read_later_or_dropped_with_its_connection(http: Http) -> None:
    """``send`` writes the request and goes on: its reply is read by ``result`` (the Elasticsearch adapter's
    probe sent ahead); a reply nobody read goes with its connection, and the next request is not given it."""
    http("PUT", "/ahead/_doc/1", {"n": 1}, refresh="true")
    later = http.send("GET", "/ahead/_doc/1")
    other = http("GET", "/ahead/_count")  # meanwhile, on another connection
    assert other["count"] == 1
    assert later.result()["_source"] == {"n": 1}
    later.drop()  # (read already: nothing to do)
    unread = http.send("GET", "/_nodes/stats/http")
    unread.drop()
    with pytest.raises(ConnectionFailed, match="dropped before its reply"):
        unread.result()
    assert http("GET", "/ahead/_doc/1")["_source"] == {"n": 1}, "a dropped reply was taken for a later one"
    assert http.send("GET", "/missing-index/_doc/1", ok=(404,)).result() is None
    with pytest.raises(HttpError, match="404"):
        http.send("GET", "/missing-index/_doc/1").result()
