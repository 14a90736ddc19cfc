"""MongoDB on mongomock (in process): a journal of before-images on mongomock's own store.

mongomock keeps every database in a store object of this process: a server store
of database stores of collection stores, each with its documents (an ordered dict
keyed by ``_id``), its indexes and TTL indexes. The adapter gives those objects
subclasses of mongomock's own classes (``__class__`` swapped in place: every
client sharing the store keeps its objects) through which each change passes:

* A document's before-image (a deep copy; ``None`` if it was absent) is kept the
  first time it is inserted, replaced, updated, deleted or expired after a
  checkpoint. mongomock updates documents in place, from ``Collection._update``:
  the two methods that apply an update to a stored document are wrapped (once
  per process; inert on stores without a journal) to take the image first.
  Reads hand out copies (``find`` copies every document it returns), so reads
  are not touches and cost nothing.
* The first delete of a document that existed at the checkpoint also keeps the
  collection's key order (a list of references): the rollback puts the document
  back where it was, so ``find()`` returns documents in the same order as before.
* Dropping a collection (or its database: mongomock drops each collection) hands
  its whole document table to the journal, in O(1), and nothing more is recorded
  for it until the rollback puts that table back.
* Index changes, ``create_collection`` and drops keep the collection's indexes,
  TTL indexes and created flag; renames and collections made since (reading a
  collection makes an empty one in mongomock) keep which collection store was
  under each name, and the order of the names.

So a checkpoint costs nothing, and a rollback costs what the test wrote: the
documents it wrote, plus a few references per collection it created, dropped or
renamed. The journal lives in the adapter, never in the user's databases.

Where the installed mongomock lacks the layout this relies on (checked once,
when the adapter starts), the adapter falls back to the older strategy,
:class:`~pytest_rollback.adapters.mongomock_copy.CopyOnTouch`: each collection
touched after a checkpoint is copied whole.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import collections
import copy
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..api import Changes, Observation, RestoreReport, RollbackError
from .mongomock_copy import SYSTEM_DBS, CopyOnTouch, collection_changes, observe_store

NS = tuple[str, str]
#: a collection's indexes, TTL indexes and created flag
Meta = tuple[dict[str, Any], dict[str, Any], bool]
STRATEGIES = ("auto", "journal", "copy-on-touch")
#: methods of mongomock's ``Collection`` that change a stored document in place
UPDATERS = ("_apply_update_document", "_apply_update_pipeline")


class _Entry:
    """What one collection store was at a checkpoint, for what changed in it since."""

    __slots__ = ("coll", "docs", "table", "order", "meta")

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        #: each document written since: its image at the checkpoint (None: absent)
        self.docs: dict[Any, Any] = {}
        #: the document table a drop replaced (its images below still apply on top of it)
        self.table: collections.OrderedDict[Any, Any] | None = None
        #: the keys in order, kept at the first delete of a document that existed at the checkpoint
        self.order: list[Any] | None = None
        #: indexes, TTL indexes and created flag at the checkpoint (None: unchanged)
        self.meta: Meta | None = None


class _Level:
    """A checkpoint and the journal of what changed between it and the next one (or now)."""

    __slots__ = ("label", "alive", "entries", "names", "name_order", "failed")

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.alive = True
        #: per collection store written since (keyed by identity)
        self.entries: dict[int, _Entry] = {}
        #: per (db, name) whose collection store changed since: the store there at the checkpoint (None: none)
        self.names: dict[NS, Any] = {}
        #: per database whose names changed since: its names in order at the checkpoint
        self.name_order: dict[str, list[str]] = {}
        #: why a before-image could not be taken (the rollback then refuses to guess)
        self.failed: str | None = None

    def __repr__(self) -> str:
        return f"<mongo checkpoint {self.label!r}{'' if self.alive else ' (released)'}>"

    def size(self) -> int:
        """How many documents this level's journal holds before-images of."""
        return sum(len(entry.docs) for entry in self.entries.values())


def _key(doc: Any) -> Any:
    """The key of a document in mongomock's table (a dict ``_id`` is kept as a hashable dict)."""
    from mongomock import helpers

    doc_id = doc.get("_id")
    return helpers.hashdict(doc_id) if isinstance(doc_id, dict) else doc_id


def _meta(coll: Any) -> Meta:
    """A collection store's indexes, TTL indexes and created flag (its own objects: copy to keep)."""
    return coll.__dict__["indexes"], coll._ttl_indexes, bool(coll._is_force_created)


class _Hub:
    """On a mongomock server store: the journals (one per adapter) its changes are reported to."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.journals: list[_Journal] = []

    def doc(self, coll: Any, key: Any, deleting: bool = False) -> None:
        for journal in self.journals:
            journal.note_doc(coll, key, deleting)

    def meta(self, coll: Any, dropping: bool = False) -> None:
        for journal in self.journals:
            journal.note_meta(coll, dropping)

    def name(self, db: Any, name: str) -> None:
        for journal in self.journals:
            journal.note_name(db, name)


def supported() -> str | None:
    """Why the installed mongomock cannot be journaled (None: it can)."""
    try:
        import mongomock.collection as collection_mod
        import mongomock.store as store_mod
    except ImportError as exc:  # pragma: no cover - mongomock is what this adapter is for
        return f"mongomock cannot be imported ({exc})"
    coll = store_mod.CollectionStore("probe")  # type: ignore[no-untyped-call]
    wanted = ("_documents", "indexes", "_ttl_indexes", "_is_force_created")
    missing = [name for name in wanted if name not in vars(coll)]
    missing += [name for name in UPDATERS if not hasattr(collection_mod.Collection, name)]
    missing += [name for name in ("_databases",) if name not in vars(store_mod.ServerStore())]  # type: ignore[no-untyped-call]
    missing += [name for name in ("_collections",) if name not in vars(store_mod.DatabaseStore())]  # type: ignore[no-untyped-call]
    return f"mongomock's store has no {', '.join(missing)}" if missing else None


def _journaled_classes(store_mod: Any) -> tuple[type, type, type]:
    """Subclasses of mongomock's server, database and collection stores that report every change first."""

    class JournaledCollectionStore(store_mod.CollectionStore):  # type: ignore[misc]
        _rollback_hub: _Hub | None = None
        _rollback_db: str = ""

        # ``indexes`` is assigned whole by drop_indexes(): a property sees it (instances keep the value)
        @property
        def indexes(self) -> Any:
            return self.__dict__["indexes"]

        @indexes.setter
        def indexes(self, value: Any) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.meta(self)
            self.__dict__["indexes"] = value

        def __setitem__(self, key: Any, val: Any) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.doc(self, key)
            super().__setitem__(key, val)

        def __delitem__(self, key: Any) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.doc(self, key, deleting=True)
            super().__delitem__(key)

        def create(self) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.meta(self)
            super().create()

        def drop(self) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.meta(self, dropping=True)
            super().drop()

        def create_index(self, index_name: str, index_dict: Any) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.meta(self)
            super().create_index(index_name, index_dict)

        def drop_index(self, index_name: str) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.meta(self)
            super().drop_index(index_name)

    class JournaledDatabaseStore(store_mod.DatabaseStore):  # type: ignore[misc]
        _rollback_hub: _Hub | None = None
        _rollback_name: str = ""

        def adopt(self, coll: Any) -> Any:
            if not isinstance(coll, JournaledCollectionStore):
                coll.__class__ = JournaledCollectionStore
            coll._rollback_hub = self._rollback_hub
            coll._rollback_db = self._rollback_name
            return coll

        def __getitem__(self, col_name: str) -> Any:
            coll = self._collections.get(col_name)
            if coll is None:  # mongomock makes a collection store on every first access, reads included
                if self._rollback_hub is not None:
                    self._rollback_hub.name(self, col_name)
                coll = self._collections[col_name] = self.adopt(store_mod.CollectionStore(col_name))
            return coll

        def rename(self, name: str, new_name: str) -> None:
            if self._rollback_hub is not None:
                self._rollback_hub.name(self, name)
                self._rollback_hub.name(self, new_name)
            super().rename(name, new_name)
            self.adopt(self._collections[new_name])

    class JournaledServerStore(store_mod.ServerStore):  # type: ignore[misc]
        _rollback_hub: _Hub | None = None

        def adopt(self, name: str, db: Any) -> Any:
            if not isinstance(db, JournaledDatabaseStore):
                db.__class__ = JournaledDatabaseStore
            db._rollback_hub = self._rollback_hub
            db._rollback_name = name
            for coll in db._collections.values():
                db.adopt(coll)
            return db

        def __getitem__(self, db_name: str) -> Any:
            db = self._databases.get(db_name)
            if db is None:
                db = self._databases[db_name] = self.adopt(db_name, store_mod.DatabaseStore())
            return db

    return JournaledServerStore, JournaledDatabaseStore, JournaledCollectionStore


def _wrap_updater(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._apply_update_*``, taking the stored document's before-image before changing it."""

    def apply(self: Any, existing_document: Any, *args: Any, **kwargs: Any) -> Any:
        coll = self._store
        hub = getattr(coll, "_rollback_hub", None)
        if hub is not None:
            key = _key(existing_document)
            if coll._documents.get(key) is existing_document:  # an upsert's new document is not stored yet
                hub.doc(coll, key)
        return original(self, existing_document, *args, **kwargs)

    apply._rollback_original = original  # type: ignore[attr-defined]
    apply.__name__ = original.__name__
    apply.__doc__ = original.__doc__
    return apply


def install(server: Any) -> _Hub:
    """Put the journal's hooks on ``server`` (a mongomock ``ServerStore``) and its databases and collections."""
    hub = getattr(server, "_rollback_hub", None)
    if isinstance(hub, _Hub):
        return hub
    import mongomock.collection as collection_mod
    import mongomock.store as store_mod

    for name in UPDATERS:  # once per process: inert where a store has no hub
        method = getattr(collection_mod.Collection, name)
        if not hasattr(method, "_rollback_original"):
            setattr(collection_mod.Collection, name, _wrap_updater(method))
    server_cls, _, _ = _journaled_classes(store_mod)
    hub = _Hub(server)
    server.__class__ = server_cls
    server._rollback_hub = hub
    for name, db in list(server._databases.items()):
        server.adopt(name, db)
    return hub


def _merge(older: _Level, newer: _Level) -> None:
    """Fold ``newer``'s journal into ``older``'s: ``older`` then leads from now back to its checkpoint."""
    older.failed = older.failed or newer.failed
    for ident, theirs in newer.entries.items():
        mine = older.entries.get(ident)
        if mine is None:
            older.entries[ident] = theirs
            continue
        if mine.meta is None:
            mine.meta = theirs.meta
        if mine.table is not None:
            continue  # older's table and images say it all
        mine.table = theirs.table  # (None, or the table older's images apply on top of)
        if mine.order is None:
            mine.order = theirs.order
        for key, image in theirs.docs.items():
            mine.docs.setdefault(key, image)  # older wins: it is the image at its checkpoint
    for ns, coll in newer.names.items():
        older.names.setdefault(ns, coll)
    for db, order in newer.name_order.items():
        older.name_order.setdefault(db, order)


class _Journal:
    """The journal strategy of :class:`MongomockAdapter`."""

    strategy = "journal"

    def __init__(self, name: str, client: Any, owns: Callable[[str], bool]) -> None:
        self.name = name
        self._owns = owns
        self._levels: list[_Level] = []
        self._top: _Level | None = None
        self._lock = threading.RLock()
        #: the thread that is undoing (its changes to the store are not recorded)
        self._undoing: int | None = None
        self._server = client._store
        self._hub = install(self._server)
        self._hub.journals.append(self)
        #: how many document before-images were taken (what the journal cost, for tests and benchmarks)
        self.images = 0

    # -- recording (called by the store's hooks, on the thread that changes it) ---------------------
    def _entry(self, coll: Any) -> _Entry | None:
        """The top level's entry for ``coll`` (made if needed), or None where nothing is to be recorded."""
        level = self._top
        if level is None or self._undoing == threading.get_ident() or not self._owns(coll._rollback_db):
            return None
        entry = level.entries.get(id(coll))
        if entry is None:
            entry = level.entries[id(coll)] = _Entry(coll)
        return entry

    def note_doc(self, coll: Any, key: Any, deleting: bool) -> None:
        level = self._top
        entry = level.entries.get(id(coll)) if level is not None else None
        try:
            if entry is not None and (entry.table is not None or (key in entry.docs and not deleting)):
                return  # the common case, without the lock: already recorded
        except TypeError:  # an unhashable key: mongomock refuses it itself
            return
        with self._lock:
            entry = self._entry(coll)
            if entry is None or entry.table is not None:
                return
            if key not in entry.docs:
                doc = coll._documents.get(key)
                try:
                    entry.docs[key] = None if doc is None else copy.deepcopy(doc)
                except Exception as exc:  # never break the write that is running: the rollback will say it
                    top = self._top
                    if top is not None:
                        top.failed = top.failed or f"document {key!r} could not be copied ({exc!r})"
                    return
                self.images += 1
            if deleting and entry.order is None and entry.docs[key] is not None:
                entry.order = list(coll._documents)  # the order at the checkpoint, but for documents added since

    def note_meta(self, coll: Any, dropping: bool) -> None:
        with self._lock:
            entry = self._entry(coll)
            if entry is None:
                return
            if entry.meta is None:
                entry.meta = copy.deepcopy(_meta(coll))
            if dropping and entry.table is None:
                entry.table = coll._documents  # mongomock gives the collection a new table: keep this one whole

    def note_name(self, db: Any, name: str) -> None:
        with self._lock:
            level = self._top
            if level is None or self._undoing == threading.get_ident() or not self._owns(db._rollback_name):
                return
            ns = (db._rollback_name, name)
            if ns not in level.names:
                level.name_order.setdefault(ns[0], list(db._collections))
                level.names[ns] = db._collections.get(name)

    # -- undoing -----------------------------------------------------------------------------------
    def _undo(self, level: _Level) -> tuple[int, int]:
        """Put back what ``level`` journaled: (documents put back, collections put back whole or moved)."""
        colls = 0
        for (db_name, name), coll in level.names.items():
            names = self._server[db_name]._collections
            if coll is None:
                gone = names.pop(name, None)
                colls += gone is not None and bool(gone.is_created)
            else:
                coll.name = name
                colls += names.get(name) is not coll
                names[name] = coll
        for db_name, order in level.name_order.items():
            names = self._server[db_name]._collections
            if list(names) != [name for name in order if name in names]:
                kept = [(name, names[name]) for name in order if name in names]
                names.clear()
                names.update(kept)
        docs = 0
        for entry in level.entries.values():
            coll = entry.coll
            if entry.table is not None:
                coll._documents = entry.table
                colls += 1
            table = coll._documents
            for key, image in entry.docs.items():
                if image is None:
                    table.pop(key, None)
                else:
                    table[key] = image
            if self._server[coll._rollback_db]._collections.get(coll.name) is coll:
                docs += len(entry.docs)  # (a collection made since is removed whole: counted above)
            if entry.order is not None:
                coll._documents = collections.OrderedDict((key, table[key]) for key in entry.order if key in table)
            if entry.meta is not None:
                if entry.table is None and entry.meta != _meta(coll):
                    colls += 1  # its indexes or created flag put back
                coll.__dict__["indexes"], coll._ttl_indexes, coll._is_force_created = entry.meta
        return docs, colls

    def _index(self, token: _Level) -> int:
        if not token.alive or token not in self._levels:
            raise RollbackError(f"mongo: checkpoint {token.label!r} was released or rolled past")
        return self._levels.index(token)

    # -- the adapter protocol ----------------------------------------------------------------------
    def checkpoint(self, label: str | None) -> _Level:
        level = _Level(label)
        with self._lock:
            self._levels.append(level)
            self._top = level
        return level

    def rollback(self, token: _Level) -> RestoreReport:
        start = time.perf_counter()
        with self._lock:
            idx = self._index(token)
            failed = [level.failed for level in self._levels[idx:] if level.failed]
            if failed:
                raise RollbackError(f"mongo (mongomock): cannot roll back exactly: {failed[0]}")
            self._undoing = threading.get_ident()
            try:
                docs = colls = 0
                for level in reversed(self._levels[idx:]):
                    d, c = self._undo(level)
                    docs, colls = docs + d, colls + c
                dropped = any(e.table is not None for level in self._levels[idx:] for e in level.entries.values())
            finally:
                self._undoing = None
            for level in self._levels[idx + 1 :]:
                level.alive = False
            del self._levels[idx + 1 :]
            token.entries, token.names, token.name_order, token.failed = {}, {}, {}, None
            self._top = token
        restored = docs + colls
        if dropped:
            mode, reason = "full", "a collection or database was dropped (its documents are put back whole, in O(1))"
        else:
            mode, reason = ("incremental" if restored else "none"), None
        return RestoreReport("mongo", token.label, time.perf_counter() - start, mode, restored, reason)

    def release(self, token: _Level) -> None:
        with self._lock:
            if not token.alive or token not in self._levels:
                return
            idx = self._levels.index(token)
            if idx > 0:
                _merge(self._levels[idx - 1], token)
            # (the oldest checkpoint's journal leads to nothing older: dropped)
            token.alive = False
            del self._levels[idx]
            self._top = self._levels[-1] if self._levels else None

    def _then(self, idx: int) -> tuple[dict[NS, Any], dict[int, tuple[Any, Any, dict[Any, Any], Meta | None]]]:
        """Without changing anything: the collection store under each changed name at the checkpoint, and
        for each changed collection store (by identity) the store, its table then, images and meta then."""
        names: dict[NS, Any] = {}
        colls: dict[int, tuple[Any, Any, dict[Any, Any], Meta | None]] = {}
        for level in self._levels[idx:]:  # oldest first: the first record of anything is its state at idx
            for ns, coll in level.names.items():
                names.setdefault(ns, coll)
            for ident, entry in level.entries.items():
                coll, table, images, meta = colls.get(ident, (entry.coll, None, {}, None))
                if table is None:
                    for key, image in entry.docs.items():
                        images.setdefault(key, image)
                    table = entry.table
                colls[ident] = (coll, table, images, meta if meta is not None else entry.meta)
        return names, colls

    def changes(self, token: _Level) -> Changes:
        added: set[str] = set()
        modified: set[str] = set()
        removed: set[str] = set()
        with self._lock:
            names, colls = self._then(self._index(token))
            spots = set(names) | {(c._rollback_db, c.name) for c, _, _, _ in colls.values()}
            for ns in spots:
                db = self._server._databases.get(ns[0])
                now = db._collections.get(ns[1]) if db is not None else None
                then = names[ns] if ns in names else now
                then_coll = colls.get(id(then))
                if then is now and then_coll is not None and then_coll[1] is None:
                    keys: Iterable[Any] | None = then_coll[2]  # only the documents journaled can differ
                else:
                    keys = None
                collection_changes(
                    f"{ns[0]}.{ns[1]}", _view(then, then_coll), _view(now, None), keys, (added, modified, removed)
                )
        return Changes("mongo", frozenset(added), frozenset(modified), frozenset(removed))

    def observe(self) -> Observation:
        with self._lock:
            return observe_store(self.name, self._server, self._owns)

    def close(self) -> None:
        with self._lock:
            if self in self._hub.journals:
                self._hub.journals.remove(self)
            self._levels.clear()
            self._top = None


class _Overlay(dict):  # type: ignore[type-arg]
    """A collection's documents at a checkpoint: its images over its table then (or now), read lazily."""

    def __init__(self, table: Any, images: dict[Any, Any]) -> None:
        super().__init__()
        self.table = table
        self.images = images

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self.images:
            image = self.images[key]
            return default if image is None else image
        return self.table.get(key, default)

    def __iter__(self) -> Any:
        for key in self.table:
            if self.images.get(key, True) is not None:
                yield key
        for key, image in self.images.items():
            if image is not None and key not in self.table:
                yield key


def _view(coll: Any, then: tuple[Any, Any, dict[Any, Any], Meta | None] | None) -> tuple[Any, Meta] | None:
    """A collection store's documents and meta (now, or at the checkpoint with ``then``); None if not created."""
    if coll is None:
        return None
    meta = _meta(coll)
    if then is None:
        return (coll._documents, meta) if coll.is_created else None
    _, table, images, was_meta = then
    docs = _Overlay(coll._documents if table is None else table, images)
    meta = was_meta if was_meta is not None else meta
    if not (any(True for _ in docs) or meta[0] or meta[2]):
        return None
    return docs, meta


class MongomockAdapter:
    """Checkpoint and roll back the databases of a ``mongomock.MongoClient`` (and every client sharing its store).

    :param client: the mongomock client whose store the code under test uses.
    :param dbs: the databases this adapter owns; ``None`` means every database
        but ``admin``, ``local`` and ``config``.
    :param strategy: ``"journal"`` (before-images of what each test writes),
        ``"copy-on-touch"`` (each collection touched copied whole, the older
        strategy), or ``"auto"``: the journal where the installed mongomock has
        the store layout it needs (mongomock 4.x), else copy-on-touch.
    """

    name = "mongo"

    def __init__(self, client: Any, *, dbs: Iterable[str] | None = None, strategy: str = "auto") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"mongo (mongomock): strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        self.client = client
        self._owned = frozenset(dbs) if dbs is not None else None
        why = supported() if strategy != "copy-on-touch" else "copy-on-touch was asked for"
        store = client._store
        if why is None and getattr(store, "_rollback_touch", None) is not None:
            why = "another adapter already copies this store on touch"  # one strategy per store
        elif why is not None and isinstance(getattr(store, "_rollback_hub", None), _Hub):
            raise RollbackError("mongo (mongomock): another adapter already keeps a journal of this store")
        if why is not None and strategy == "journal":
            raise RollbackError(f"mongo (mongomock): the journal cannot run here: {why}")
        self._impl: Any = CopyOnTouch(client, dbs=dbs) if why else _Journal(self.name, client, self._owns)
        #: ``"journal"`` or ``"copy-on-touch"``: the strategy in use
        self.strategy: str = self._impl.strategy

    def _owns(self, db: str) -> bool:
        return db not in SYSTEM_DBS and (self._owned is None or db in self._owned)

    def checkpoint(self, label: str | None = None) -> Any:
        """Mark the current state: O(1), nothing is copied until something is written."""
        return self._impl.checkpoint(label)

    def rollback(self, token: Any) -> RestoreReport:
        """Put back what was written since ``token`` (``token`` stays valid); ``restored`` counts
        the documents put back and the collections put back whole, removed or renamed back."""
        return self._impl.rollback(token)  # type: ignore[no-any-return]

    def release(self, token: Any) -> None:
        """Forget ``token``; rolling back to older checkpoints stays exact."""
        self._impl.release(token)

    def changes(self, token: Any) -> Changes:
        """Collections (``"db.coll"``) and documents (``"db.coll:<_id repr>"``) changed since ``token``."""
        return self._impl.changes(token)  # type: ignore[no-any-return]

    def observe(self) -> Observation:
        """The whole state of the databases this adapter owns (for ``verify``).

        Per collection its indexes, and every document (field order included),
        keyed by ``("db.coll", repr(_id))``.
        """
        return self._impl.observe()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop recording for this adapter (other adapters on the same store keep theirs)."""
        self._impl.close()
