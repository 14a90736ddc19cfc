"""Redis's part of the crash journal: the server as it was before the run, on disk.

Written once, right after the run's first checkpoint of a server it did not
start (``RedisAdapter.save_journal``), before any test can write:

* ``redis-keys.bin``: every key of the databases the run rolls back, with its
  ``DUMP`` payload and absolute expiry (the adapter's snapshot, already in
  memory, so writing it costs the disk and no round trip);
* ``redis-config.json``: ``CONFIG GET *`` (with the server's own
  ``notify-keyspace-events``) and which databases are the run's;
* ``redis-objects.json``: the server's functions (``FUNCTION DUMP``) and ACL
  users (``ACL LIST``), which are no keys but are the user's too;
* ``redis-notify-keyspace-events``: the server's own notification flags, written
  by the adapter before it widens them (so even a run killed while connecting
  leaves them to be put back).

:func:`recover` puts all of that back: what keeps writes from succeeding first
(a paused server, a busy script), then the ACL users and functions, then the
configuration, then the keys
(comparing, and rewriting only the keys that differ), then the flags.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

KEYS_FILE = "redis-keys.bin"
CONFIG_FILE = "redis-config.json"
FLAGS_FILE = "redis-notify-keyspace-events"
OBJECTS_FILE = "redis-objects.json"
_MAGIC = b"pytest-rollback redis journal 1\n"
_HEAD = struct.Struct(">HII")  # db, key length, payload length
_EXPIRY = struct.Struct(">q")
#: parameters the plugin never puts back from the journal's configuration
_NOT_PUT_BACK = frozenset({"notify-keyspace-events"})

Key = tuple[int, bytes]
Entry = tuple[bytes, int]


def write_keys(path: Path, snapshot: Mapping[Key, Entry]) -> None:
    """Write ``snapshot`` (key -> DUMP payload, absolute expiry in ms or -1) to ``path``, durably."""
    parts = [_MAGIC, struct.pack(">Q", len(snapshot))]
    for (db, name), (payload, expiry) in snapshot.items():
        parts += (_HEAD.pack(db, len(name), len(payload)), name, payload, _EXPIRY.pack(expiry))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(parts))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_keys(path: Path) -> dict[Key, Entry]:
    """The snapshot :func:`write_keys` wrote; ValueError if the file is not one."""
    data = memoryview(path.read_bytes())
    if bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise ValueError(f"{path.name} is not a pytest-rollback Redis journal")
    at = len(_MAGIC)
    (count,) = struct.unpack_from(">Q", data, at)
    at += 8
    out: dict[Key, Entry] = {}
    for _ in range(count):
        db, klen, plen = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        name = bytes(data[at : at + klen])
        at += klen
        payload = bytes(data[at : at + plen])
        at += plen
        (expiry,) = _EXPIRY.unpack_from(data, at)
        at += _EXPIRY.size
        out[(db, name)] = (payload, expiry)
    if at != len(data):
        raise ValueError(f"{path.name} has {len(data) - at} bytes after its last key")
    return out


def read_config(client: Any) -> dict[str, str]:
    """``CONFIG GET *`` as text (an empty dict where the server has no CONFIG)."""
    try:
        raw = client.config_get("*")
    except Exception:
        return {}
    return {_text(k): _text(v) for k, v in raw.items()}


def write_config(path: Path, config: Mapping[str, str], dbs: Iterable[int] | None) -> None:
    from ..services.state import write_json

    write_json(path / CONFIG_FILE, {"config": dict(config), "dbs": sorted(dbs) if dbs is not None else None})


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def unblock(client: Any) -> list[str]:
    """Make the server take writes again: end a paused state and a script that is still running."""
    done: list[str] = []
    with contextlib.suppress(Exception):
        client.execute_command("CLIENT", "UNPAUSE")
    for kill in (("SCRIPT", "KILL"), ("FUNCTION", "KILL")):
        try:
            client.execute_command(*kill)
            done.append(" ".join(kill))
        except Exception:  # NOTBUSY, or no such command: nothing was running
            pass
    return done


def put_back_config(client: Any, saved: Mapping[str, str]) -> list[str]:
    """Set back every parameter that differs from ``saved`` (memory limits first); return their names."""
    current = read_config(client)
    changed = [k for k, v in saved.items() if k not in _NOT_PUT_BACK and k in current and current[k] != v]
    changed.sort(key=lambda k: (not k.startswith("maxmemory"), k))
    done = []
    for name in changed:
        try:
            client.config_set(name, saved[name])
            done.append(name)
        except Exception:  # read-only at run time (it cannot have been changed either)
            continue
    return done


def write_objects(path: Path, functions: bytes | None, users: Mapping[bytes, list[bytes]] | None) -> None:
    """Keep the server's functions and ACL users (None: the server has none to give, or refused)."""
    from ..services.state import write_json

    def text(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    write_json(path / OBJECTS_FILE, {
        "functions": text(functions) if functions is not None else None,
        "users": {text(n): [text(r) for r in rules] for n, rules in users.items()} if users is not None else None,
    })


def put_back_objects(client: Any, path: Path) -> list[str]:
    """The ACL users, then the functions, of ``path``'s journal again where they differ; what was done."""
    from .redis import user_commands, users_of

    try:
        data = json.loads((path / OBJECTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    done: list[str] = []
    users = data.get("users")
    if users is not None:
        target = {base64.b64decode(n): [base64.b64decode(r) for r in rules] for n, rules in users.items()}
        now = users_of(client.execute_command("ACL", "LIST"))
        cmds = user_commands(now, target, selectors=client.version >= (7, 0))
        failed: list[str] = []
        for cmd in cmds:
            try:
                client.execute_command(*cmd)
            except Exception as exc:  # the journal stays, and says which user
                failed.append(f"{_text(cmd[2])} ({exc})")
        if failed:
            raise RuntimeError(f"ACL users could not be put back: {', '.join(failed)}")
        if cmds:
            done.append("ACL users " + ", ".join(sorted({_text(c[2]) for c in cmds})))
    functions = data.get("functions")
    if functions is not None:
        saved = base64.b64decode(functions)
        if client.execute_command("FUNCTION", "DUMP") != saved:
            client.execute_command("FUNCTION", "RESTORE", saved, "FLUSH")
            done.append("functions")
    return done


class _Client:
    """The few calls the journal makes, on one RESP3 connection (redis-py is not imported for them)."""

    def __init__(self, url: str, timeout: float) -> None:
        from ._resp3 import Resp3Connection
        from .redis import parse_url

        p = parse_url(url)
        self._conn = Resp3Connection(
            p["host"], p["port"], username=p["username"], password=p["password"], timeout=timeout
        )
        info = self._conn.server_info
        version = info.get(b"version", b"0") if isinstance(info, dict) else b"0"
        #: the server's version, (major, minor)
        self.version = tuple(int(x) for x in bytes(version).split(b".")[:2] if x.isdigit())

    def execute_command(self, *args: Any) -> object:
        return self._conn.call(*args)

    def config_get(self, pattern: str) -> dict[Any, Any]:
        reply = self._conn.call("CONFIG", "GET", pattern)
        if isinstance(reply, list):
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return dict(reply) if isinstance(reply, dict) else {}

    def config_set(self, name: str, value: str) -> None:
        self._conn.call("CONFIG", "SET", name, value)

    def close(self) -> None:
        self._conn.close()


def recover(path: Path, url: str, restore_data: bool = True, timeout: float = 30.0) -> str:
    """Put the server at ``url`` back as the journal in ``path`` describes; return what was done, in words.

    With ``restore_data`` false (the run restored the data itself, or never
    started writing) only the server's settings are put back.
    """
    from .redis import RedisAdapter, _Delta, _Level

    client = _Client(url, timeout)
    try:
        done = unblock(client)
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((path / CONFIG_FILE).read_text())
        # users first (a test may have taken rights from the plugin's user), as the adapter does
        objects_done = put_back_objects(client, path) if restore_data else []
        # the configuration is the data's: put back with it (a run with --no-rollback changes neither)
        config_done = put_back_config(client, meta.get("config") or {}) if restore_data else []
        words: list[str] = []
        if done:
            words.append(", ".join(done))
        words += objects_done
        keys_file = path / KEYS_FILE
        if restore_data and keys_file.exists():
            snapshot = read_keys(keys_file)
            adapter = RedisAdapter(url, dbs=meta.get("dbs"), strategy="snapshot", timeout=timeout)
            try:
                delta = _Delta()
                delta.full_prev = snapshot
                level = _Level("the journal", delta)
                adapter._levels.append(level)
                report = adapter.rollback(level)
            finally:
                adapter.close()
            dbs = sorted({db for db, _ in snapshot})
            words.append(
                f"{len(snapshot)} keys in {_dbs(dbs)} ({report.restored} rewritten or removed)"
                if snapshot
                else f"an empty server ({report.restored} keys removed)"
            )
        if config_done:
            words.append("config " + ", ".join(config_done))
        flags = _saved_flags(path, meta)
        if flags is not None:
            client.config_set("notify-keyspace-events", flags)
            words.append(f"notify-keyspace-events {flags!r}")
        return "; ".join(words) or "nothing to put back"
    finally:
        client.close()


def _saved_flags(path: Path, meta: Mapping[str, Any]) -> str | None:
    try:
        return (path / FLAGS_FILE).read_text()
    except FileNotFoundError:
        config = meta.get("config") or {}
        value = config.get("notify-keyspace-events")
        return str(value) if value is not None else None


def _dbs(dbs: list[int]) -> str:
    if len(dbs) == 1:
        return f"db {dbs[0]}"
    return "dbs " + ", ".join(str(d) for d in dbs)
