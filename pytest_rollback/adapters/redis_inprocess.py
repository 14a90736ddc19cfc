"""Embedded Redis (fakeredis in this process): a write journal on fakeredis's own databases.

The ``embedded`` provider serves fakeredis from a thread of the test process, so the
adapter can see every access to a key where it happens instead of asking over the
wire. Each of the server's databases is given a subclass of fakeredis's ``Database``
(``__class__`` swapped in place: the connections keep their objects) through which
every command reaches its keys:

* The first time a key is reached after a checkpoint -- read, written, expired, moved,
  renamed, by a plain command, in ``MULTI`` or from Lua -- a private copy of it (value
  and expiry; ``None`` if it is absent) is kept as its before-image. fakeredis updates
  values in place, so a read and a write cannot be told apart at that point: reads
  count as touches. Later accesses cost one dictionary lookup.
* ``FLUSHDB`` / ``FLUSHALL`` hand the whole key table of each database to the journal
  and give the database an empty one: O(1) besides fakeredis's own work.
* ``SWAPDB`` keeps a private copy of both databases as they were at the checkpoint
  (O(N), the one command that costs that).
* Keys that expire are dropped by fakeredis without a write: their before-image, when
  put back, has the same absolute expiry, so they read as expired again.

So a checkpoint costs nothing but reading the server's functions and ACL users (two
local round trips), and a rollback costs the keys touched since the checkpoint. The
journal lives in this process; nothing is written to the server.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import copy
import heapq
import pickle
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .. import faults
from ..api import Changes, RestoreReport, RollbackError
from .redis import RedisAdapter

#: a database's key table and expiry heap (fakeredis's ``_dict`` and ``_expiry_heap``)
Table = tuple[dict[bytes, Any], list[Any]]


class _Level:
    """A checkpoint and the journal of what changed between it and the next one (or now)."""

    __slots__ = ("label", "alive", "before", "cleared", "functions", "users", "failed")

    def __init__(self, label: str | None, functions: bytes | None, users: dict[bytes, list[bytes]] | None) -> None:
        self.label = label
        self.alive = True
        #: per database: each key's image at the checkpoint, for keys reached since (None: absent)
        self.before: dict[int, dict[bytes, Any]] = {}
        #: per database flushed (or swapped) since: its whole table at that moment; nothing more is recorded there
        self.cleared: dict[int, Table] = {}
        self.functions = functions
        self.users = users
        #: why a before-image could not be taken (the rollback then refuses to guess)
        self.failed: str | None = None

    def __repr__(self) -> str:
        return f"<redis checkpoint {self.label!r}{'' if self.alive else ' (released)'}>"

    def size(self) -> int:
        return sum(len(seen) for seen in self.before.values())


class _Journal:
    """Shared by the server's databases: where they record before-images (the newest level)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.top: _Level | None = None
        #: the adapter whose checkpoints these are: one per server
        self.owner: object | None = None

    def image(self, item: Any) -> Any:
        """A private copy of a stored item (its value deep-copied, bytes shared: they are immutable)."""
        new = object.__new__(type(item))
        value = item.value
        if not isinstance(value, bytes):
            # values may refer to their database (as in fakeredis's COPY): never copy a database
            value = copy.deepcopy(value, {id(db): db for db in self.server.dbs.values()})
        new.value = value
        new.expireat = item.expireat
        return new

    def note(self, db: Any, key: bytes) -> None:
        level = self.top
        if level is None:
            return
        index = db._rollback_index
        if index in level.cleared:
            return
        seen = level.before.get(index)
        if seen is None:
            seen = level.before[index] = {}
        if key not in seen:
            item = db._dict.get(key)
            try:
                seen[key] = None if item is None else self.image(item)
            except Exception as exc:  # never break the command that is running: the rollback will say it
                level.failed = level.failed or f"key {key!r} of database {index} could not be copied ({exc!r})"

    def private_table(self, db: Any, level: _Level) -> Table:
        """A copy of ``db`` as it was at ``level``'s checkpoint (for SWAPDB, which moves tables between databases)."""
        index = db._rollback_index
        table = {key: self.image(item) for key, item in db._dict.items()}
        for key, item in level.before.pop(index, {}).items():
            if item is None:
                table.pop(key, None)
            else:
                table[key] = item
        heap = [(item.expireat, key) for key, item in table.items() if item.expireat is not None]
        heapq.heapify(heap)
        return table, heap


def _journaled_class(database_cls: Any) -> Any:
    """fakeredis's ``Database`` with every way to a key going through the journal first."""

    class JournaledDatabase(database_cls):  # type: ignore[misc]
        _rollback_journal: _Journal | None = None
        _rollback_index: int = -1
        _dict: dict[bytes, Any]
        _expiry_heap: list[Any]

        def __getitem__(self, key: bytes) -> Any:
            if self._rollback_journal is not None:
                self._rollback_journal.note(self, key)
            return super().__getitem__(key)

        def __setitem__(self, key: bytes, value: Any) -> None:
            if self._rollback_journal is not None:
                self._rollback_journal.note(self, key)
            super().__setitem__(key, value)

        def __delitem__(self, key: bytes) -> None:
            if self._rollback_journal is not None:
                self._rollback_journal.note(self, key)
            super().__delitem__(key)

        def __contains__(self, key: object) -> bool:
            # a membership test hands out no item: no before-image needed (Mapping's would read the item)
            try:
                database_cls.__getitem__(self, key)
            except KeyError:
                return False
            return True

        def clear(self) -> None:
            journal = self._rollback_journal
            level = journal.top if journal is not None else None
            if level is None or self._rollback_index in level.cleared:
                super().clear()
                return
            for key in self:
                self.notify_watch(key)
            level.cleared[self._rollback_index] = (self._dict, self._expiry_heap)
            self._dict = {}
            self._expiry_heap = []

        def swap(self, other: Any) -> None:
            journal = self._rollback_journal
            level = journal.top if journal is not None else None
            if level is not None:
                for db in (self, other):
                    if db._rollback_index not in level.cleared:
                        level.cleared[db._rollback_index] = journal.private_table(db, level)  # type: ignore[union-attr]
            super().swap(other)

    return JournaledDatabase


def install(server: Any) -> _Journal:
    """Put the journal on ``server`` (a ``fakeredis.FakeServer``): its databases, and those made later."""
    journal = getattr(server, "_rollback_journal", None)
    if journal is not None:
        return journal  # type: ignore[no-any-return]
    from fakeredis._core._database import Database

    cls = _journaled_class(Database)
    journal = _Journal(server)

    class Databases(defaultdict):  # type: ignore[type-arg]
        def __missing__(self, index: int) -> Any:
            db: Any = Database(server.lock)
            db.__class__ = cls
            db._rollback_index = index
            db._rollback_journal = journal
            self[index] = db
            return db

    dbs = Databases()
    for index, db in server.dbs.items():
        db.__class__ = cls
        db._rollback_index = index
        db._rollback_journal = journal
        dbs[index] = db
    server.dbs = dbs
    server._rollback_journal = journal
    return journal


def _merge(older: _Level, newer: _Level) -> None:
    """Fold ``newer``'s journal into ``older``'s: ``older`` then leads from now back to its checkpoint."""
    flushed_before = set(older.cleared)
    for index, table in newer.cleared.items():
        if index not in flushed_before:
            older.cleared[index] = table  # older's images still apply on top of that table
    older.failed = older.failed or newer.failed
    for index, seen in newer.before.items():
        if index in flushed_before:
            continue  # older's table and images say it all
        mine = older.before.setdefault(index, {})
        for key, item in seen.items():
            mine.setdefault(key, item)  # older wins: it is the image at its checkpoint


class InProcessRedisAdapter(RedisAdapter):
    """Checkpoint and roll back fakeredis served from this process (the ``embedded`` provider).

    :param url: the server's URL (``observe()`` and the functions/ACL users are read through it).
    :param server: the ``fakeredis.FakeServer`` behind it.

    Everything else is :class:`~pytest_rollback.adapters.redis.RedisAdapter`'s.
    """

    def __init__(self, url: str, server: Any, *, dbs: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        super().__init__(url, dbs=dbs, strategy="snapshot", timeout=timeout)
        self.strategy = "journal"
        self._server = server
        self._journal = install(server)
        if self._journal.owner is not None:
            super().close()
            raise RollbackError(f"redis at {self._where()}: another adapter already keeps the journal of this server")
        self._journal.owner = self
        self._jlevels: list[_Level] = []

    def _dbs(self) -> Any:
        return self._server.dbs

    @faults.one_line
    def checkpoint(self, label: str | None = None) -> _Level:  # type: ignore[override]
        """Mark the current state: O(1) (two local round trips for the functions and ACL users)."""
        functions, users = self._snapshot_objects()
        level = _Level(label, functions, users)
        with self._server.lock:
            self._jlevels.append(level)
            self._journal.top = level
        return level

    @faults.one_line
    def rollback(self, token: _Level) -> RestoreReport:  # type: ignore[override]
        """Put back the keys reached since ``token`` (and flushed tables): O(what the test touched)."""
        start = time.perf_counter()
        if not token.alive or token not in self._jlevels:
            raise RollbackError(f"redis: checkpoint {token.label!r} was released or rolled past")
        idx = self._jlevels.index(token)
        failed = [level.failed for level in self._jlevels[idx:] if level.failed]
        if failed:
            raise RollbackError(f"redis at {self._where()}: cannot roll back exactly: {failed[0]}")
        self._snapshot_put_back_objects(token)  # type: ignore[arg-type]
        restored = 0
        flushed = False
        with self._server.lock:
            dbs = self._dbs()
            for level in reversed(self._jlevels[idx:]):
                for index, (table, heap) in level.cleared.items():
                    db = dbs[index]
                    db._dict, db._expiry_heap = table, heap
                    restored += len(table)  # put back whole, in O(1)
                    flushed = True
                for index, seen in level.before.items():
                    db = dbs[index]
                    for key, item in seen.items():
                        if item is None:
                            db._dict.pop(key, None)
                        else:
                            db._dict[key] = item
                            db.schedule_expiry(key, item.expireat)
                    restored += len(seen)
            for level in self._jlevels[idx + 1 :]:
                level.alive = False
            del self._jlevels[idx + 1 :]
            token.before, token.cleared, token.failed = {}, {}, None
            self._journal.top = token
        if flushed:  # every key of those databases is back: a full restore, in O(1) for a flush
            mode, reason = "full", "FLUSHDB, FLUSHALL or SWAPDB ran (the table it replaced is put back whole)"
        else:
            mode, reason = ("incremental" if restored else "none"), None
        report = RestoreReport("redis", token.label, time.perf_counter() - start, mode, restored, reason)
        self.last_report = report
        return report

    def release(self, token: _Level) -> None:  # type: ignore[override]
        """Forget ``token``; its journal joins the next older checkpoint's."""
        if not token.alive or token not in self._jlevels:
            return
        with self._server.lock:
            idx = self._jlevels.index(token)
            if idx == len(self._jlevels) - 1 and idx > 0:
                older = self._jlevels[idx - 1]
                _merge(older, token)
                self._journal.top = older
            elif idx == len(self._jlevels) - 1:
                self._journal.top = None
            elif idx > 0:
                _merge(self._jlevels[idx - 1], token)
            # (the oldest checkpoint's journal leads to nothing older: dropped)
            token.alive = False
            del self._jlevels[idx]

    @faults.one_line
    def changes(self, token: _Level) -> Changes:  # type: ignore[override]
        """Keys added, modified and removed since ``token`` (``db:key`` strings)."""
        idx = self._jlevels.index(token)
        added, modified, removed = set(), set(), set()
        with self._server.lock:
            dbs = self._dbs()
            # what a rollback to token would do, without doing it: tables that replace a database, then images
            tables: dict[int, dict[bytes, Any]] = {}
            images: dict[int, dict[bytes, Any]] = {}
            for level in reversed(self._jlevels[idx:]):
                for index, (table, _) in level.cleared.items():
                    tables[index] = table
                    images[index] = {}
                for index, seen in level.before.items():
                    images.setdefault(index, {}).update(seen)
            clock = time.time()
            for index in set(tables) | set(images):
                current = dbs[index]._dict
                if index in tables:
                    then = {**tables[index], **images.get(index, {})}
                    keys: Iterable[bytes] = set(then) | set(current)
                else:
                    then = images[index]
                    keys = then
                for key in keys:
                    was, now = then.get(key), current.get(key)
                    was = None if was is None or _expired(was, clock) else was
                    now = None if now is None or _expired(now, clock) else now
                    name = f"{index}:{key.decode(errors='backslashreplace')}"
                    if was is None and now is not None:
                        added.add(name)
                    elif was is not None and now is None:
                        removed.add(name)
                    elif was is not None and now is not None and not _same(was, now):
                        modified.add(name)
        return Changes("redis", frozenset(added), frozenset(modified), frozenset(removed))

    def save_journal(self, path: Any) -> None:
        """As the snapshot strategy: the keys now (right after the first checkpoint, that is its state)."""
        from pathlib import Path

        from .redis_journal import KEYS_FILE, read_config, write_config, write_keys

        where = Path(path)
        write_config(where, read_config(self._redis_client(0)), self._owned)
        write_keys(where / KEYS_FILE, self._snapshot_keys())

    def close(self) -> None:
        with self._server.lock:
            if self._journal.owner is self:
                self._journal.top = None
                self._journal.owner = None
            self._jlevels.clear()
        super().close()


def _expired(item: Any, clock: float) -> bool:
    return item.expireat is not None and item.expireat < clock


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if a.expireat != b.expireat or type(a.value) is not type(b.value):
        return False
    try:
        # fakeredis's own types compare by identity: then by their pickles (what DUMP sends)
        return bool(a.value == b.value) or pickle.dumps(a.value) == pickle.dumps(b.value)
    except Exception:
        return False
