"""A small JSON-over-HTTP client for the adapters of HTTP stores (Elasticsearch).

The adapter speaks plain JSON rather than through the ``elasticsearch`` package:
that package's major version picks a compatibility header the server must
accept (a 9.x client refuses an 8.x server), and rollback must work with
whatever client the user's code has.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3


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
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 9200
        self.base = f"{parts.scheme or 'http'}://{parts.hostname}:{parts.port or 9200}{parts.path.rstrip('/')}"
        headers = {"accept": "application/json", "content-type": "application/json"}
        if parts.username:
            headers.update(urllib3.make_headers(basic_auth=f"{parts.username}:{parts.password or ''}"))
        self.headers = headers
        self.pool = urllib3.PoolManager(
            num_pools=2, maxsize=2, timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False
        )

    def __call__(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Any:
        """Send one request; return the decoded JSON. Statuses in ``ok`` return ``None`` instead of raising.

        ``body`` is sent as JSON, or as it is when it is ``bytes`` (newline-delimited JSON, for ``_bulk``).
        """
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items() if v is not None}
        url = self.base + path + ("?" + urlencode(query) if query else "")
        headers = self.headers
        if isinstance(body, bytes):  # newline-delimited JSON (a bulk request), sent as it is
            data: bytes | None = body
            headers = {**headers, "content-type": "application/x-ndjson"}
        else:
            data = None if body is None else json.dumps(body).encode()
        try:
            resp = self.pool.request(method, url, body=data, headers=headers)
        except urllib3.exceptions.NewConnectionError as exc:  # (a ConnectTimeoutError too, oddly)
            raise ConnectionFailed(_cause(exc), timed_out=False) from None
        except urllib3.exceptions.TimeoutError:
            raise ConnectionFailed("no reply", timed_out=True) from None
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionFailed(_cause(exc), timed_out=False) from None
        payload: Any = None
        if resp.data:
            try:
                payload = json.loads(resp.data)
            except ValueError:
                payload = resp.data.decode(errors="replace")
        if resp.status >= 300:
            if resp.status in ok:
                return None
            raise HttpError(method, path, resp.status, payload)
        return payload

    def close(self) -> None:
        self.pool.clear()


def _cause(exc: Exception) -> str:
    """``connection refused``: the innermost reason of a urllib3 error, without its pool and address."""
    text = str(exc)
    for known in ("Connection refused", "Connection reset by peer", "Remote end closed connection"):
        if known in text:
            return known.lower()
    return text.rsplit(": ", 1)[-1].strip("()'\" ")[:200] or type(exc).__name__
