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


class Http:
    """Keep-alive JSON requests to one server (``http://host:port`` with optional credentials)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme or 'http'}://{parts.hostname}:{parts.port or 9200}{parts.path.rstrip('/')}"
        headers = {"accept": "application/json", "content-type": "application/json"}
        if parts.username:
            headers.update(urllib3.make_headers(basic_auth=f"{parts.username}:{parts.password or ''}"))
        self.headers = headers
        self.pool = urllib3.PoolManager(
            num_pools=2, maxsize=2, timeout=urllib3.Timeout(connect=5.0, read=timeout), retries=False
        )

    def __call__(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Any:
        """Send one request; return the decoded JSON. Statuses in ``ok`` return ``None`` instead of raising."""
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items() if v is not None}
        url = self.base + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        resp = self.pool.request(method, url, body=data, headers=self.headers)
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
