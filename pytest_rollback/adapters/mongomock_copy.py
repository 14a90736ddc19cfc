"""MongoDB on mongomock (in process), the older strategy: collections copied when first touched.

``MongomockAdapter`` uses it where the installed mongomock's store does not have the
layout its journal needs (see :mod:`pytest_rollback.adapters.mongomock`), and
``strategy="copy-on-touch"`` asks for it (the benchmarks compare the two).

mongomock keeps every database in a store object of this process, and every
operation on a collection -- reads included -- fetches that collection's store
from its database's store first. The adapter hooks that fetch (and renames):

* A checkpoint costs nothing; the first time a collection is touched after it,
  the collection (documents, indexes, TTL indexes) is deep-copied into the
  checkpoint's level.
* A rollback puts back only the collections touched since the checkpoint, and
  removes those that did not exist then.

So untouched collections cost nothing; a touched one costs a copy of its size
in this process (no round trips). Reads count as touches: mongomock updates
documents in place, so a read and a write cannot be told apart at the store.
The snapshots live in the adapter, never in the user's databases.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import collections
import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..api import Changes, Observation, RestoreReport, RollbackError

NS = tuple[str, str]
#: documents, indexes, TTL indexes, force-created flag
Image = tuple[Any, dict[str, Any], dict[str, Any], bool]
SYSTEM_DBS = frozenset({"admin", "local", "config"})


def _copy_documents(documents: Any) -> Any:
    """A deep copy of a collection's documents; the ``_id`` keys are immutable and kept as they are."""
    return collections.OrderedDict((key, copy.deepcopy(doc)) for key, doc in documents.items())


class _Level:
    __slots__ = ("label", "images", "alive")

    def __init__(self, label: str | None) -> None:
        self.label = label
        #: the state at this checkpoint of each collection first touched after it (None: absent)
        self.images: dict[NS, Image | None] = {}
        self.alive = True


def observe_store(name: str, server: Any, owns: Callable[[str], bool]) -> Observation:
    """The whole state of the owned databases of a mongomock store (for ``verify``).

    Per collection its indexes, and every document (field order included),
    keyed by ``("db.coll", repr(_id))``; read from the store's own structures.
    """
    state: dict[Any, Any] = {}
    for db_name, db in sorted(server._databases.items()):
        if not owns(db_name):
            continue
        for coll_name, coll in sorted(db._collections.items()):
            if not coll.is_created:
                continue
            where = f"{db_name}.{coll_name}"
            state[(where, "(indexes)")] = repr(sorted(coll.indexes.items()))
            for doc_id, doc in coll._documents.items():
                state[(where, repr(doc_id))] = list(copy.deepcopy(doc).items())
    return Observation(name, state)


def collection_changes(
    base: str, was: tuple[Any, Any] | None, now: tuple[Any, Any] | None, keys: Iterable[Any] | None, into: Any
) -> None:
    """Add what differs in collection ``base`` to ``into`` (added, modified, removed sets).

    ``was`` and ``now`` are (documents by key, anything that stands for its indexes
    and options), or None where the collection does not exist; ``keys`` the only
    document keys that can differ (None: any). A removed collection is named
    alone; an added one with its documents.
    """
    added, modified, removed = into
    if was is None and now is None:
        return
    if now is None:
        removed.add(base)
        return
    if was is None:
        added.add(base)
    elif was[1] != now[1]:
        modified.add(base)
    before, after = (was[0] if was is not None else {}), now[0]
    for key in keys if keys is not None else set(before) | set(after):
        a, b = before.get(key), after.get(key)
        if a is None and b is not None:
            added.add(f"{base}:{key!r}")
        elif a is not None and b is None:
            removed.add(f"{base}:{key!r}")
        elif a is not None and b is not None and list(a.items()) != list(b.items()):
            modified.add(f"{base}:{key!r}")


def _tracked_classes(store_mod: Any) -> tuple[type, type]:
    """Subclasses of mongomock's server and database stores that report every collection touched."""

    class TrackedDatabaseStore(store_mod.DatabaseStore):  # type: ignore[misc]
        _rollback_name: str = ""
        _rollback_touch: Any = None

        def __getitem__(self, col_name: str) -> Any:
            for touch in self._rollback_touch or ():
                touch(self._rollback_name, col_name)
            return super().__getitem__(col_name)

        def rename(self, name: str, new_name: str) -> None:
            for touch in self._rollback_touch or ():
                touch(self._rollback_name, name)
                touch(self._rollback_name, new_name)
            super().rename(name, new_name)

    class TrackedServerStore(store_mod.ServerStore):  # type: ignore[misc]
        #: one touch function per adapter on this store (shared list)
        _rollback_touch: Any = None

        def __getitem__(self, db_name: str) -> Any:
            db = super().__getitem__(db_name)
            if not isinstance(db, TrackedDatabaseStore):
                db.__class__ = TrackedDatabaseStore
            db._rollback_name = db_name
            db._rollback_touch = self._rollback_touch
            return db

    return TrackedServerStore, TrackedDatabaseStore


class CopyOnTouch:
    """The copy-on-touch strategy of ``MongomockAdapter`` (same parameters): touched collections copied whole."""

    name = "mongo"
    strategy = "copy-on-touch"

    def __init__(self, client: Any, *, dbs: Iterable[str] | None = None) -> None:
        import mongomock.store as store_mod

        self.client = client
        self._owned = frozenset(dbs) if dbs is not None else None
        self._levels: list[_Level] = []
        self._lock = threading.RLock()
        self._busy = False
        server = client._store
        if getattr(server, "_rollback_touch", None) is None:
            server_cls, _ = _tracked_classes(store_mod)
            server.__class__ = server_cls
            server._rollback_touch = []
        server._rollback_touch.append(self._touch)
        for name in list(server._databases):
            server[name]  # tracks the databases that exist already
        self._server = server

    def _owns(self, db: str) -> bool:
        return db not in SYSTEM_DBS and (self._owned is None or db in self._owned)

    # -- collection images -------------------------------------------------------
    def _image(self, ns: NS) -> Image | None:
        db = self._server._databases.get(ns[0])
        coll = db._collections.get(ns[1]) if db is not None else None
        if coll is None or not coll.is_created:
            return None
        return (
            _copy_documents(coll._documents),
            copy.deepcopy(coll.indexes),
            copy.deepcopy(coll._ttl_indexes),
            bool(coll._is_force_created),
        )

    def _put(self, ns: NS, image: Image | None) -> None:
        import mongomock.store as store_mod

        db = self._server[ns[0]]
        if image is None:
            db._collections.pop(ns[1], None)
            return
        coll = store_mod.CollectionStore(ns[1])  # type: ignore[no-untyped-call]
        coll._documents, coll.indexes, coll._ttl_indexes, coll._is_force_created = (
            _copy_documents(image[0]),
            copy.deepcopy(image[1]),
            copy.deepcopy(image[2]),
            image[3],
        )
        db._collections[ns[1]] = coll

    def _touch(self, db: str, coll: str) -> None:
        if self._busy or not self._levels or not self._owns(db):
            return
        ns = (db, coll)
        top = self._levels[-1]
        if ns not in top.images:
            with self._lock:
                if ns not in top.images:
                    self._busy = True
                    try:
                        top.images[ns] = self._image(ns)
                    finally:
                        self._busy = False

    def _at(self, token: _Level) -> dict[NS, Image | None]:
        """The state at ``token`` of every collection touched since."""
        if not token.alive or token not in self._levels:
            raise RollbackError(f"mongo: checkpoint {token.label!r} was released or rolled past")
        idx = self._levels.index(token)
        out: dict[NS, Image | None] = {}
        for level in self._levels[idx:]:
            for ns, image in level.images.items():
                out.setdefault(ns, image)  # the oldest level's image is the state at token
        return out

    # -- the adapter protocol ------------------------------------------------------
    def checkpoint(self, label: str | None = None) -> _Level:
        """Mark the current state; costs nothing until a collection is touched."""
        level = _Level(label)
        with self._lock:
            self._levels.append(level)
        return level

    def rollback(self, token: _Level) -> RestoreReport:
        """Put back the collections touched since ``token``; ``token`` stays valid."""
        import time

        start = time.perf_counter()
        with self._lock:
            targets = self._at(token)
            self._busy = True
            try:
                restored = 0
                for ns, image in targets.items():
                    if self._image(ns) != image:
                        self._put(ns, image)
                        restored += 1
            finally:
                self._busy = False
            idx = self._levels.index(token)
            for level in self._levels[idx + 1 :]:
                level.alive = False
            del self._levels[idx + 1 :]
            token.images = {}
        mode = "incremental" if restored else "none"
        return RestoreReport("mongo", token.label, time.perf_counter() - start, mode, restored)

    def release(self, token: _Level) -> None:
        """Forget ``token``; rolling back to older checkpoints stays exact."""
        with self._lock:
            if not token.alive or token not in self._levels:
                return
            idx = self._levels.index(token)
            if idx > 0:
                older = self._levels[idx - 1]
                for ns, image in token.images.items():
                    older.images.setdefault(ns, image)
            token.alive = False
            del self._levels[idx]

    def changes(self, token: _Level) -> Changes:
        """Collections (``"db.coll"``) and documents (``"db.coll:<_id repr>"``) changed since ``token``."""
        added: set[str] = set()
        modified: set[str] = set()
        removed: set[str] = set()
        with self._lock:
            targets = self._at(token)
            self._busy = True
            try:
                for ns, then in targets.items():
                    now = self._image(ns)
                    collection_changes(
                        f"{ns[0]}.{ns[1]}",
                        (then[0], then[1:]) if then is not None else None,
                        (now[0], now[1:]) if now is not None else None,
                        None,
                        (added, modified, removed),
                    )
            finally:
                self._busy = False
        return Changes("mongo", frozenset(added), frozenset(modified), frozenset(removed))

    def observe(self) -> Observation:
        """The whole state of the databases this adapter owns (for ``verify``); read without counting as a touch."""
        with self._lock:
            return observe_store(self.name, self._server, self._owns)

    def close(self) -> None:
        """Stop tracking this store (other adapters on it keep theirs)."""
        hooks = self._server._rollback_touch
        if self._touch in hooks:
            hooks.remove(self._touch)
