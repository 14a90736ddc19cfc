"""MongoDB: checkpoints whose rollback costs what the test wrote.

Two strategies, chosen when the adapter starts:

``tracking`` needs a change stream (a replica set: SecantusDB, or mongod started
as a single-node replica set, as the docker and local providers do):

* One cluster-wide change stream (expanded events, so index and collection DDL
  are seen) marks touched documents and collections dirty.
* A barrier: the adapter bumps a counter in its own database and reads the
  stream until it sees that bump; every change made before it has then been
  read (the stream follows the oplog's order). A look at the stream starts with
  one ``serverStatus``: when the server's write counters moved by that reading
  only, nothing changed and no barrier is needed.
* The state at the newest checkpoint lives in this process's memory as raw BSON
  (types and field order exact), per collection with its options and indexes.
  A rollback replaces or deletes only the dirty documents, those of every
  collection in one client-level ``bulkWrite`` (MongoDB 8.0, SecantusDB; else
  one ``bulk_write`` per collection); a collection whose DDL changed (drop,
  rename, create, indexes, collMod) is rebuilt whole.
* A rollback writes no barrier after its own writes: the server's time read
  after them (the ``operationTime`` of the ``serverStatus`` that also gives the
  next quiet probe its counters) marks their events, which the next look at the
  stream skips. A test that wrote costs one barrier; one that wrote nothing,
  the ``serverStatus`` alone.
* Which collections exist is compared, not taken from the stream: at every
  checkpoint and rollback that is not quiet, one ``listCollections`` per owned
  database (an update that matches nothing makes a collection on SecantusDB,
  with no event), unless the server's counters show inserts, deletes and reads
  only since the last look, or updates that the noting clients account for: a
  client made with :meth:`MongoAdapter.listener` (the ``mongo_client``
  fixture's) tallies the ``update`` and ``findAndModify`` commands the server
  answered; when the counters moved by exactly that tally (each server's way of
  counting accepted only where it leaves no room for another client's write),
  each noted collection existed at the checkpoint and no DDL touched it, and
  no noted command was in flight while the counters were read, no collection
  can have been made.
* Capped collections (their natural order, and what they evicted), views (their
  definition) and time-series collections (``_id`` is not unique there) are
  restored whole, compared first.
* An invalidated or failing change stream is a gap: the next restore is a full
  one.

``counters`` is for a standalone server (no change streams): the ``top``
command's per-collection write counters, read in one round trip, and the list of
collections tell which collections moved since the checkpoint; those are
rebuilt whole from the snapshot in this process's memory, the others cost
nothing. A server without ``top`` (mongos, some hosted tiers) makes every
rollback a full one, which is exact but costs the data's size.

Restores write with ``bypassDocumentValidation``: a validator (added by
``collMod``, or one that documents seeded before it do not meet) never refuses
to put back what was there. A collection whose options changed is rebuilt with
the checkpoint's. A collection that still cannot be restored does not stop the
others: they are all restored, then the failures are reported together, and
the next rollback is a full one.

The adapter's own database (``__pytest_rollback__`` by default) is never one of
the user's, so ``list_collection_names()`` of theirs shows no trace.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, IndexModel, MongoClient, ReplaceOne, monitoring
from pymongo.errors import (
    ClientBulkWriteException,
    ConnectionFailure,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
)

from .. import faults
from ..api import Changes, Observation, RestoreReport, RollbackError, RollbackWarning, StoreFault
from ..masking import mask
from ._ahead import Ahead
from ._mongo_probe import ProbeSocket, eligible

NS = tuple[str, str]
Meta = tuple[dict[str, Any], list[dict[str, Any]]]  # collection options, index specs
SYSTEM_DBS = frozenset({"admin", "local", "config"})
_RAW = bson.CodecOptions(document_class=RawBSONDocument)
OUTSIDE_WRITES = (
    "pytest-rollback: mongo: while this test ran, {names} changed, in databases no xdist worker owns (by this "
    "test, or by one on another worker); they are put back at the end of the run, not after each test: use "
    "the mongo_db fixture's database, or run such tests without -n"
)
_SON = bson.CodecOptions(document_class=bson.SON)
#: Collections a rollback could not restore (after the others were).
NOT_RESTORED = "mongo at {where}: {count} collection(s) could not be restored: {failures}"
#: A view or time-series collection the server refused to create again (a RollbackWarning).
NOT_RESTORABLE = (
    "pytest-rollback: mongo: {label}: the {kind} {name} cannot be restored on this server ({error}); "
    "the next tests see it as this one left it"
)
#: The profiler of an owned database is on (a RollbackWarning, once per database).
PROFILER_ON = (
    "pytest-rollback: mongo: {label}: the profiler of database {db!r} is on (it has system.profile); the "
    "profiling level and system.profile are the server's diagnostics and are not rolled back"
)
#: The longest server error quoted per collection.
_MAX_ERROR = 200
#: Server error codes of credentials refused: AuthenticationFailed, and Unauthorized (none were given).
_AUTH_CODES = (18, 13)
#: The longest wait for a server to be found again after the connection to it failed.
SERVER_SELECTION_LIMIT = 5.0


#: the serverStatus opcounters that move with every write and DDL command
_OPS = ("insert", "update", "delete", "command")


def _idkey(doc_id: Any) -> bytes:
    return bson.encode({"_id": doc_id})


def _whole(meta: Meta) -> bool:
    """True for what is restored whole, never one document at a time: a view, a capped collection (its
    order), a time-series collection (``_id`` is not unique in one: several documents may share it)."""
    return "viewOn" in meta[0] or "timeseries" in meta[0] or bool(meta[0].get("capped"))


def _keyed(docs: Iterable[RawBSONDocument]) -> dict[bytes, RawBSONDocument]:
    """Documents by ``_id``, in their order; where an ``_id`` repeats (a time-series collection), the
    n-th document with it is keyed by ``{_id, n}``."""
    out: dict[bytes, RawBSONDocument] = {}
    for doc in docs:
        key = _idkey(doc["_id"])
        n = 0
        while key in out:
            n += 1
            key = bson.encode({"_id": doc["_id"], "n": n})
        out[key] = doc
    return out


def _special(options: dict[str, Any]) -> bool:
    """True for a view or a time-series collection (a server may refuse to create them again)."""
    return "viewOn" in options or "timeseries" in options


def _meta_key(meta: Meta) -> tuple[str, list[str]]:
    """A comparable form of a collection's options and index specifications."""
    options, indexes = meta
    return repr(sorted(options.items())), sorted(repr(sorted(spec.items())) for spec in indexes)


class _Level:
    __slots__ = ("label", "docs", "colls", "full", "alive")

    def __init__(self, label: str | None) -> None:
        self.label = label
        #: before-images of documents refreshed when this checkpoint was taken
        self.docs: dict[tuple[NS, bytes], RawBSONDocument | None] = {}
        #: before-images of whole collections (None: it did not exist)
        self.colls: dict[NS, tuple[Meta, dict[bytes, RawBSONDocument]] | None] = {}
        #: the whole snapshot before this checkpoint, when it was a full resync
        self.full: tuple[dict[NS, Meta], dict[NS, dict[bytes, RawBSONDocument]]] | None = None
        self.alive = True


def _merge(older: _Level, newer: _Level) -> _Level:
    """One level's before-images from before ``older`` to after ``newer`` (``newer`` is reused)."""
    if older.full is not None:
        newer.full, newer.docs, newer.colls = older.full, {}, {}
        return newer
    if newer.full is not None:
        meta, docs = newer.full
        for ns, before in older.colls.items():
            meta.pop(ns, None)
            docs.pop(ns, None)
            if before is not None:
                meta[ns], docs[ns] = before
        for (ns, idkey), doc in older.docs.items():
            if doc is None:
                docs.get(ns, {}).pop(idkey, None)
            else:
                docs.setdefault(ns, {})[idkey] = doc
        return newer
    if older.colls:  # a collection put back whole from ``older``'s image: none of its documents from ``newer``'s
        newer.docs = {key: doc for key, doc in newer.docs.items() if key[0] not in older.colls}
    newer.docs.update(older.docs)  # the older before-image wins
    newer.colls.update(older.colls)
    return newer


class _StreamLost(Exception):
    """The change stream can no longer be trusted to have shown every change."""


def _is_fault(exc: BaseException) -> bool:
    """True for the errors of a server that is gone, frozen or refuses the credentials (not of a command)."""
    if isinstance(exc, OperationFailure):
        return exc.code in _AUTH_CODES
    return isinstance(exc, ConnectionFailure)


def auth_reason(exc: PyMongoError) -> str | None:
    """Why the server refused the credentials (None: it did not): a wrong password, or none given."""
    code = exc.code if isinstance(exc, OperationFailure) else None
    if code == 13:
        return "the server wants credentials and the URL gives none"
    if code == 18 or "authentication failed" in str(exc).lower():  # a server selection repeats the refusal
        return "wrong user name, password or authSource"
    return None


#: the commands a noting client's listener tallies: they move the update counter (findAndModify: the
#: update counter on SecantusDB, the command counter on mongod), and may make a collection without an event
_NOTED = ("update", "findAndModify")


class _Tally:
    """What the noting clients sent between two readings of the server's counters: ``update`` commands
    and their statements, ``findAndModify`` commands, and the collections they named."""

    __slots__ = ("commands", "statements", "find_and_modify", "namespaces")

    def __init__(self) -> None:
        self.commands = self.statements = self.find_and_modify = 0
        self.namespaces: set[NS] = set()


class _Noter(monitoring.CommandListener):
    """Tallies the ``update`` and ``findAndModify`` commands a client sent to the adapter's server and the
    server answered (see :meth:`MongoAdapter.listener`); only those the server replied to are counted: it
    ran them."""

    def __init__(self, adapter: MongoAdapter) -> None:
        self._adapter = adapter
        self._started: dict[tuple[Any, int], tuple[str, NS, int]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in _NOTED or event.connection_id not in self._adapter._addresses():
            return
        cmd, notes = event.command, self._adapter._notes
        coll = cmd.get(event.command_name)
        statements = len(cmd.get("updates") or []) if event.command_name == "update" else 1
        with notes.lock:
            notes.events += 1
            if isinstance(coll, str):
                self._started[(event.connection_id, event.request_id)] = (
                    event.command_name, (event.database_name, coll), statements
                )
            else:  # a command the tally cannot name: no reading that sees it can skip the list
                notes.unknown += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._ended(event, True)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ended(event, False)

    def _ended(self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent, ok: bool) -> None:
        if event.command_name not in _NOTED:
            return
        notes = self._adapter._notes
        with notes.lock:
            sent = self._started.pop((event.connection_id, event.request_id), None)
            if sent is None:
                return
            notes.events += 1
            if not ok:  # the server may have counted it or not: the next window is not accounted for
                notes.unknown += 1
                return
            name, ns, statements = sent
            tally = notes.tally
            if name == "update":
                tally.commands += 1
                tally.statements += statements
            else:
                tally.find_and_modify += 1
            tally.namespaces.add(ns)


class _Notes:
    """The noting clients' tally since the last reading of the server's counters, and what tells whether a
    reading split a command (one in flight while it was read: the server may have counted it on either
    side)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tally = _Tally()
        #: starts and ends of noted commands, and those whose effect on the counters is not known
        self.events = self.unknown = 0
        self.listeners: list[_Noter] = []

    def before_reading(self) -> tuple[int, int] | None:
        """Called before the counters are read: a stamp of the noted commands, None when one is in flight."""
        with self.lock:
            if any(noter._started for noter in self.listeners):
                return None
            return self.events, self.unknown

    def after_reading(self, stamp: tuple[int, int] | None) -> _Reading:
        """Called after the counters were read: the tally since the last reading (a new one from now), and
        whether no noted command started or ended while they were read."""
        with self.lock:
            tally, self.tally = self.tally, _Tally()
            return _Reading(tally, stamp is not None and stamp == (self.events, self.unknown), self.unknown)


class _Reading:
    """What the noting clients did up to one reading of the counters: their tally since the reading
    before; ``exact`` when no noted command was in flight while it was read (each one then ran wholly
    before or wholly after it); ``unknown``, the commands noted so far whose effect is not known."""

    __slots__ = ("tally", "exact", "unknown")

    def __init__(self, tally: _Tally, exact: bool, unknown: int) -> None:
        self.tally, self.exact, self.unknown = tally, exact, unknown


class _Sent:
    """A quiet probe written ahead on the adapter's own socket: :meth:`result` reads its reply, with what
    the noting clients did up to it (as a future of the probe thread gives them)."""

    __slots__ = ("_probe", "_request_id", "_notes", "_stamp")

    def __init__(self, probe: ProbeSocket, notes: _Notes) -> None:
        self._probe, self._notes = probe, notes
        self._stamp = notes.before_reading()  # (before the request can reach the server)
        self._request_id = probe.send()

    def result(self) -> tuple[dict[str, Any], _Reading]:
        status = self._probe.receive(self._request_id)
        return status, self._notes.after_reading(self._stamp)


#: the reply of a quiet probe sent ahead: written on the adapter's socket, or sent by its thread
_Pending = _Sent | Future[tuple[dict[str, Any], _Reading]]


class MongoAdapter:
    """Checkpoint and roll back the user databases of a MongoDB deployment.

    :param url: a ``mongodb://`` URL of a replica set (or SecantusDB).
    :param dbs: the databases this adapter owns; ``None`` means every database
        but ``admin``, ``local``, ``config`` and the adapter's own.
    :param hidden_db: the adapter's own database (the change-stream barrier).
    :param strategy: ``"auto"`` (a change stream if the server has one, else
        write counters), ``"tracking"`` or ``"counters"``.
    :param timeout: seconds to wait for each reply of the server (``--rollback-timeout``);
        a server that is gone, does not answer in time or refuses the URL's
        credentials raises :class:`~pytest_rollback.api.StoreFault` (one line).
    """

    name = "mongo"
    #: seconds to wait for the barrier before the stream counts as lagging (a gap: full restore)
    lag_limit = 10.0

    def __init__(
        self,
        url: str,
        *,
        dbs: Iterable[str] | None = None,
        hidden_db: str = "__pytest_rollback__",
        strategy: str = "auto",
        others: Iterable[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._gone: str | None = None
        ms = int(timeout * 1000)
        self.client: MongoClient[Any] = MongoClient(
            url,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            serverSelectionTimeoutMS=int(min(timeout, SERVER_SELECTION_LIMIT) * 1000),
        )
        #: this adapter's barrier document (adapters of several xdist workers share a server)
        self._barrier_id = f"barrier-{uuid.uuid4().hex}"
        self.hidden_db = hidden_db
        self._owned = frozenset(dbs) if dbs is not None else None
        #: the databases of the other processes sharing the server (xdist workers); None: not shared
        self._others = frozenset(others) if others is not None else None
        #: collections written while the current test ran in databases that are nobody's (shared servers)
        self._outside: set[str] = set()
        self._meta: dict[NS, Meta] = {}
        self._docs: dict[NS, dict[bytes, RawBSONDocument]] = {}
        self._dirty_docs: set[tuple[NS, bytes]] = set()
        self._dirty_colls: set[NS] = set()
        self._levels: list[_Level] = []
        #: before-images between the newest checkpoint and the snapshot (released levels)
        self._pending = _Level(None)
        self._gap: str | None = "first checkpoint"
        self._stream: Any = None
        #: change streams of connections that failed (see _lost)
        self._abandoned: list[Any] = []
        self._sent = 0
        self._seen = 0
        #: counters strategy: per collection, the write counters of ``top`` at the last reading
        self._counters: dict[NS, tuple[int, ...]] = {}
        self._has_top = True
        #: collections whose writes no change stream shows (MongoDB's time-series): compared at every restore
        self._unseen: set[NS] = set()
        #: databases whose profiler was reported on (once each)
        self._profiled: set[str] = set()
        #: the server's write counters (serverStatus) after the last look at the stream: while they
        #: stay there (bar our own reading), nothing changed, and a look costs one round trip
        self._baseline: tuple[int, ...] | None = None
        #: not on a server shared by xdist workers: the others' commands would make every probe fail
        self._has_opcounters = others is None
        #: the last serverStatus reply
        self._status: dict[str, Any] | None = None
        #: the rollback whose serverStatus was sent ahead (see prefetch), with its reply to come, and the
        #: thread that sends it
        self._ahead: tuple[_Level, _Pending] | None = None
        self._sender = Ahead("mongo")
        #: the quiet probe's own socket (a deployment of one server, without credentials or TLS), else None
        self._probe: ProbeSocket | None = None
        self._lean = eligible(url)
        #: how far the counters of ``_baseline`` moved at the last probe that was not quiet (None: unknown)
        self._moved: tuple[int, ...] | None = None
        #: what clients made with :meth:`listener` sent this server (their updates and findAndModify)
        self._notes = _Notes()
        #: what they did up to the last reading of the counters (that of ``_baseline`` when there is one)
        self._last_reading: _Reading | None = None
        #: their tally between ``_baseline`` and the last probe, when each of their commands fell wholly in it
        self._window: _Tally | None = None
        #: the server's time after the adapter's own restore writes, not yet read back from the stream:
        #: events up to it are ours (a rollback's), and are skipped instead of marked dirty
        self._own_until: bson.Timestamp | None = None
        #: the server runs the client-level ``bulkWrite`` command (MongoDB 8.0): the documents of every
        #: collection are put back in one command
        self._client_bulk = True
        #: the label of the checkpoint being taken or restored (it names the test in warnings)
        self._restoring: str | None = None
        #: warnings of the restore under way, given when it ends
        self._warnings: list[str] = []
        if strategy not in ("auto", "tracking", "counters"):
            raise ValueError(f"mongo: unknown strategy {strategy!r}; use auto, tracking or counters")
        self.strategy = "tracking" if strategy in ("auto", "tracking") else "counters"
        if self.strategy == "tracking":
            try:
                self._open_stream()
            except StoreFault:
                self.client.close()
                raise
            except RollbackError:
                if strategy == "tracking":
                    raise
                self.strategy = "counters"
        if self.strategy == "counters":
            self._has_top = self._read_top() is not None

    # -- the change stream -----------------------------------------------------
    def _open_stream(self) -> None:
        dbs = [self.hidden_db, *self._owned] if self._owned is not None else None
        pipeline: list[dict[str, Any]] = []
        if self._others is not None:  # every database but the other workers': ours are restored, others reported
            pipeline = [{"$match": {"ns.db": {"$nin": sorted(self._others)}}}]
        elif dbs is not None:  # other workers' databases on a shared server are not ours to read
            pipeline = [
                {
                    "$match": {
                        "$or": [
                            {"ns.db": {"$in": dbs}},
                            {"to.db": {"$in": dbs}},
                            {"operationType": "invalidate"},
                        ]
                    }
                }
            ]
        try:
            self._stream = self.client.watch(pipeline, show_expanded_events=True, max_await_time_ms=20)
        except PyMongoError as exc:
            if _is_fault(exc):  # the server is gone, frozen or refuses us: not a question of replica sets
                raise self._fault(exc) from None
            raise RollbackError(
                f"pytest-rollback: mongo at {self._where()}: no change stream ({faults.reason(exc)}); "
                "start MongoDB as a replica set (the docker and local providers do) or use SecantusDB"
            ) from exc
        self._sent = self._seen = 0

    # -- connection faults -------------------------------------------------------
    def _where(self) -> str:
        """The server's address as ``host:port`` (several, comma-separated), else its URL, masked."""
        return ",".join(f"{host}:{port}" for host, port in self._addresses()) or mask(self.url)

    def _fault(self, exc: PyMongoError) -> StoreFault:
        """The one line for a connection error: the server went away, stopped answering, or refuses us."""
        refused = auth_reason(exc)
        if refused is not None:
            return faults.auth_failed("mongo", self._where(), refused)
        # a server selection that timed out says why: "timed out" (no reply) or "refused" (gone)
        if isinstance(exc, NetworkTimeout) or "timed out" in str(exc):
            return faults.not_answering("mongo", self._where(), self.timeout)
        return faults.gone("mongo", self._where(), _first_cause(exc))

    def _addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port in self.client.topology_description.server_descriptions() if port]

    def _fault_of(self, exc: Exception) -> StoreFault | None:
        return self._lost(exc) if isinstance(exc, PyMongoError) and _is_fault(exc) else None

    def _lost(self, exc: PyMongoError) -> StoreFault:
        """After a connection error: a gap (the next restore is a full one) and a new stream next time."""
        self._gap = f"the connection to the server failed ({exc.__class__.__name__})"
        if self._stream is not None:
            # not closed (that waits for the server), and kept until the client is closed: a stream
            # collected before that is killed by a background task, which logs a traceback when it fails
            self._abandoned.append(self._stream)
            self._stream = None
        return self._fault(exc)

    # -- write counters (standalone servers) -------------------------------------
    def _read_top(self) -> dict[NS, tuple[int, ...]] | None:
        try:
            totals = self.client.admin.command("top")["totals"]
        except PyMongoError:
            return None
        out: dict[NS, tuple[int, ...]] = {}
        for name, entry in totals.items():
            db, _, coll = name.partition(".")
            if not coll or not isinstance(entry, dict) or not self._owns(db):
                continue
            out[(db, coll)] = tuple(
                int(entry.get(k, {}).get("count", 0)) for k in ("writeLock", "insert", "update", "remove", "commands")
            )
        return out

    def _collect_counters(self) -> None:
        """Mark dirty every collection whose write counters moved, or that appeared or vanished."""
        top = self._read_top() if self._has_top else None
        views: dict[NS, dict[str, Any]] = {}
        present = self._namespaces(views)
        if top is None:
            self._dirty_colls.update(present | set(self._meta))
            return
        for ns in present | set(self._meta) | set(top):
            if top.get(ns) != self._counters.get(ns) or (ns in present) != (ns in self._meta):
                self._dirty_colls.add(ns)
        # a view has no counters: one dropped and made again (or made where a collection was) is told by
        # its definition, which the listing carries
        for ns in present & set(self._meta):
            was = self._meta[ns][0]
            if ("viewOn" in was or ns in views) and views.get(ns) != was:
                self._dirty_colls.add(ns)
        self._counters = top

    def _settle_counters(self) -> None:
        """After our own reads and writes: the counters they moved are not the next test's."""
        top = self._read_top() if self._has_top else None
        if top is not None:
            self._counters = top

    def _warn_profiler(self, dbs: list[str]) -> None:
        for db in dbs:
            if db not in self._profiled:
                self._profiled.add(db)
                warnings.warn(RollbackWarning(PROFILER_ON.format(label=self._restoring, db=db)), stacklevel=2)

    def _owns(self, db: str) -> bool:
        if db == self.hidden_db or db in SYSTEM_DBS:
            return False
        return self._owned is None or db in self._owned

    def _drain(
        self, discard: bool = False, settle: bool = True, ahead: _Pending | None = None
    ) -> None:
        """Read the stream up to a barrier written now; mark what changed dirty.

        With ``settle``, the server's counters are read at the end (the next quiet probe compares
        with them); a rollback that writes reads them after its writes instead. ``ahead``: the quiet
        probe's reply, sent ahead.
        """
        if self.strategy == "counters":
            if discard:
                self._settle_counters()
            else:
                self._collect_counters()
            return
        if not discard and self._quiet(ahead):
            return
        if self._stream is None:  # lost with the connection: a new one from now (the gap restores fully)
            self._open_stream()
        try:
            self._sent += 1
            self.client[self.hidden_db].barrier.update_one({"_id": self._barrier_id}, {"$inc": {"n": 1}}, upsert=True)
            deadline = time.monotonic() + self.lag_limit
            while self._seen < self._sent:
                if not self._stream.alive:
                    raise _StreamLost("the change stream was closed (its cursor is gone)")
                event = self._stream.try_next()
                if event is None:
                    if time.monotonic() > deadline:
                        raise _StreamLost(f"the change stream lagged more than {self.lag_limit:.0f} s behind")
                    continue
                if not discard and not self._ours(event):
                    self._note(event)
                elif self._is_barrier(event):
                    self._seen += 1
            self._own_until = None  # the barrier came after them: every event of ours is read
        except _StreamLost as exc:
            self._gap = str(exc)
            self._reopen()
        except PyMongoError as exc:
            if _is_fault(exc):
                raise self._lost(exc) from None
            self._gap = f"the change stream failed ({exc.__class__.__name__}: {exc})"
            self._reopen()
        if not discard and self._may_have_made_collections():
            self._compare_namespaces()
        if settle:
            self._baseline = self._opcounters() if self._gap is None and not self._unseen else None

    def _may_have_made_collections(self) -> bool:
        """False when the server's counters since the last look show inserts, deletes and reads only, and
        no command but our probe: an insert into a new collection has its change events, and nothing
        else that ran makes or drops a collection (an update that matches nothing, which makes one on
        SecantusDB without an event, moves the update counter; every DDL, ``findAndModify`` or
        transaction, the command counter); or when the updates the counters show are the noting
        clients' (:meth:`_accounted`). Else, or with no counters, the collections are listed."""
        moved = self._moved
        return moved is None or (moved[1] != 0 or moved[3] != 1) and not self._accounted(moved)

    def _accounted(self, moved: tuple[int, ...]) -> bool:
        """True when the noting clients' commands (:meth:`listener`) account for every update and command the
        counters show beside our probe, and each named a collection that exists: no collection was made.

        Servers count differently: SecantusDB one ``update`` per command and ``findAndModify`` as an
        update; mongod one per statement, and ``findAndModify`` as a command. Either count is accepted only
        where it leaves no room for another client's write: the per-command one with no command but the
        probe (mongod would then count at least as many updates as statements, and no findAndModify), the
        per-statement one where each update command had one statement (SecantusDB would then count a
        findAndModify twice over)."""
        tally = self._window
        if tally is None:
            return False
        for ns in tally.namespaces:  # it existed at the checkpoint, and nothing since dropped or renamed it
            if ns not in self._meta or ns in self._dirty_colls:
                return False
        updates, commands = moved[1], moved[3] - 1
        per_command = commands == 0 and updates == tally.commands + tally.find_and_modify
        per_statement = (
            tally.statements == tally.commands and commands == tally.find_and_modify and updates == tally.statements
        )
        return per_command or per_statement

    def _ours(self, event: dict[str, Any]) -> bool:
        """True for an event of the adapter's own restore writes (at or before the time read after them)."""
        at = event.get("clusterTime")
        return self._own_until is not None and isinstance(at, bson.Timestamp) and at <= self._own_until

    def _after_restore(self) -> None:
        """After the restore's writes: the server's time, so that the next look at the stream skips their
        events (no barrier now), and its counters, for the next quiet probe; both from one reply (a
        ``serverStatus``, else a ``ping``). A server whose replies carry no time gets a barrier."""
        if self.strategy == "counters":
            self._settle_counters()
            return
        self._baseline, status = None, None
        if self._gap is None and not self._unseen:
            self._baseline = self._opcounters()
            status = self._status
        if status is None:
            try:
                status = self.client.admin.command("ping")
            except PyMongoError as exc:
                if _is_fault(exc):
                    raise self._lost(exc) from None
                status = {}
        at = status.get("operationTime")
        if isinstance(at, bson.Timestamp) and self._stream is not None:
            self._own_until = at
        else:
            self._drain(discard=True)

    def _opcounters(self, ahead: _Pending | None = None) -> tuple[int, ...] | None:
        """insert, update, delete and command counts of the server, and its TTL deletions (one round trip,
        or the reply to the one sent ``ahead``); the whole reply is kept in ``_status``, and what the noting
        clients did up to it in ``_last_reading``."""
        self._status = self._last_reading = None
        if not self._has_opcounters:
            return None
        try:
            status, self._last_reading = ahead.result() if ahead is not None else self._server_status()
            self._status = status
        except PyMongoError as exc:
            if _is_fault(exc):
                raise self._lost(exc) from None
            self._has_opcounters = False
            return None
        ops = status.get("opcounters")
        if not isinstance(ops, dict) or not all(isinstance(ops.get(k), int) for k in _OPS):
            self._has_opcounters = False
            return None
        ttl = (status.get("metrics") or {}).get("ttl") or {}
        return (*(int(ops[k]) for k in _OPS), int(ttl.get("deletedDocuments", 0) or 0))

    def _server_status(self) -> tuple[dict[str, Any], _Reading]:
        """The server's ``serverStatus``, with what the noting clients did up to it (read around it)."""
        stamp = self._notes.before_reading()
        probe = self._probe_socket()
        status = probe.server_status() if probe is not None else self.client.admin.command("serverStatus")
        return status, self._notes.after_reading(stamp)

    def _probe_socket(self) -> ProbeSocket | None:
        """The quiet probe's own socket, to the one server of the deployment; None where pymongo sends it
        (several servers: the probe must follow the primary; credentials, TLS: pymongo's handshake)."""
        servers = self._addresses() if self._lean else []
        if len(servers) != 1:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
            return None
        if self._probe is None or self._probe.address != servers[0]:
            if self._probe is not None:
                self._probe.close()
            self._probe = ProbeSocket(servers[0], self.timeout)
        return self._probe

    def _can_be_quiet(self) -> bool:
        return not (
            self._baseline is None or self._gap is not None or self._unseen or self._dirty_docs or self._dirty_colls
        )

    def _quiet(self, ahead: _Pending | None = None) -> bool:
        """True when nothing can have changed since the last look at the stream: every write and DDL
        command moves the server's counters, and only our own ``serverStatus`` (sent ``ahead``, or now)
        moved them."""
        can = self._can_be_quiet()
        base, self._baseline, self._moved, self._window = self._baseline, None, None, None
        before = self._last_reading  # the reading of ``base``
        if base is None or not can:
            return False
        now = self._opcounters(ahead)
        if now is None:
            return False
        self._moved = tuple(n - b for n, b in zip(now, base, strict=True))
        after = self._last_reading
        if before is not None and after is not None and before.exact and after.exact:
            self._window = after.tally if before.unknown == after.unknown else None
        if now[:3] != base[:3] or now[3] != base[3] + 1 or now[4:] != base[4:]:
            return False
        self._baseline = now
        return True

    def _compare_namespaces(self) -> None:
        """Mark dirty every collection that exists now and not in the snapshot, or the other way round.

        What makes a collection (or a database) exist is part of the state, whether
        or not the stream announced it: an ``update`` that matches nothing creates an
        empty collection on some servers without an event. One ``listCollections``
        per owned database (and a ``listDatabases`` when the owned ones are not
        fixed) answers it. Collections whose writes no stream shows (time-series
        collections of MongoDB) are compared at every restore.
        """
        present = self._namespaces()
        self._dirty_colls.update(present.symmetric_difference(self._meta))
        self._dirty_colls.update(self._unseen)

    def _reopen(self) -> None:
        """After a gap: a new stream from now; what was missed is answered by a full restore."""
        try:
            self._stream.close()
        except PyMongoError:
            pass
        self._own_until = None
        self._open_stream()

    def _is_barrier(self, event: dict[str, Any]) -> bool:
        return (event.get("documentKey") or {}).get("_id") == self._barrier_id and (event.get("ns") or {}).get(
            "db"
        ) == self.hidden_db

    def _note(self, event: dict[str, Any]) -> None:
        op = event.get("operationType")
        ns = event.get("ns") or {}
        db, coll = ns.get("db"), ns.get("coll")
        if db == self.hidden_db:
            if self._is_barrier(event):
                self._seen += 1
            return
        if op == "invalidate":
            self._gap = "the change stream was invalidated"
            return
        if db is None or not self._owns(db):
            if db is not None and self._others is not None and db not in self._others and db not in SYSTEM_DBS:
                if len(self._outside) < 100:
                    self._outside.add(f"{db}.{coll}" if coll else db)
            return
        if op == "dropDatabase":
            self._dirty_colls.update(n for n in self._meta if n[0] == db)
            return
        if coll is None:
            return
        key = (db, coll)
        meta = self._meta.get(key)
        if op in ("insert", "update", "replace", "delete") and meta is not None and not _whole(meta):
            self._dirty_docs.add((key, _idkey(event["documentKey"]["_id"])))
            return
        self._dirty_colls.add(key)
        to = event.get("to")
        if op == "rename" and to:
            self._dirty_colls.add((to["db"], to["coll"]))

    # -- reading the server ------------------------------------------------------
    def _read_meta(self, ns: NS) -> Meta | None:
        infos = list(self.client[ns[0]].list_collections(filter={"name": ns[1]}))
        if not infos:
            return None
        options = dict(infos[0].get("options", {}))
        if "viewOn" in options:  # a view: its definition is all there is (no indexes, no documents of its own)
            return options, []
        indexes = [dict(spec) for spec in self.client[ns[0]][ns[1]].list_indexes()]
        return options, indexes

    def _read_coll(self, ns: NS) -> tuple[Meta, dict[bytes, RawBSONDocument]] | None:
        meta = self._read_meta(ns)
        if meta is None:
            return None
        if "viewOn" in meta[0]:
            return meta, {}
        coll = self.client[ns[0]].get_collection(ns[1], codec_options=_RAW)
        return meta, _keyed(coll.find({}))  # natural order: a capped collection's order

    def _owned_dbs(self) -> list[str]:
        if self._owned is not None:  # no listDatabases: a database with no collection is not listed anyway
            return sorted(self._owned)
        return [db for db in self.client.list_database_names() if self._owns(db)]

    def _namespaces(self, views: dict[NS, dict[str, Any]] | None = None) -> set[NS]:
        """The collections and views of the owned databases (``system.*`` left out: the server's own); with
        ``views``, the listing carries the collections' options, and each view's definition is put there."""
        out: set[NS] = set()
        profiled: list[str] = []
        unseen: set[NS] = set()
        for db in self._owned_dbs():
            for info in self.client[db].list_collections(nameOnly=views is None):
                name = info["name"]
                if name == "system.profile":
                    profiled.append(db)
                if name.startswith("system."):
                    continue
                out.add((db, name))
                if views is not None and "viewOn" in (info.get("options") or {}):
                    views[(db, name)] = dict(info["options"])
                if info.get("type") == "timeseries":  # MongoDB's: its writes go to system.buckets.*, unseen
                    unseen.add((db, name))
        self._unseen = unseen
        self._warn_profiler(profiled)
        return out

    # -- writing the server --------------------------------------------------------
    def _restore_coll(self, ns: NS) -> int:
        """Make one collection equal to the snapshot: patch it where its definition is unchanged, else rebuild.

        Patching reads the collection (raw BSON) and writes only the documents that
        differ; it costs a read of the collection instead of a rewrite. When a patch
        cannot be applied as it is (a unique index clash between documents swapped
        by the test, a capped collection), the collection is rebuilt.
        """
        target = self._meta.get(ns)
        if target is not None and _whole(target):
            # a view (its definition), a capped collection (its documents in their natural order: a capped
            # collection refuses no write here, but puts back what it evicted only by a rebuild), a
            # time-series collection (documents may share an _id: no document can be put back by it)
            now = self._read_meta(ns)
            if now is not None and _meta_key(now) == _meta_key(target):
                if "viewOn" in target[0]:
                    return 0
                coll = self.client[ns[0]].get_collection(ns[1], codec_options=_RAW)
                now_raw = [bytes(d.raw) for d in coll.find({})]
                wanted_raw = [bytes(d.raw) for d in self._docs.get(ns, {}).values()]
                if not target[0].get("capped"):  # a time-series collection: its order is the server's
                    now_raw, wanted_raw = sorted(now_raw), sorted(wanted_raw)
                if now_raw == wanted_raw:
                    return 0
        elif target is not None:
            now = self._read_meta(ns)
            if now is not None and _meta_key(now) == _meta_key(target):
                coll = self.client[ns[0]].get_collection(ns[1], codec_options=_RAW)
                current = {_idkey(d["_id"]): d for d in coll.find({})}
                wanted = self._docs.get(ns, {})
                ops: list[Any] = [DeleteOne({"_id": bson.decode(k)["_id"]}) for k in current.keys() - wanted.keys()]
                ops += [
                    ReplaceOne({"_id": bson.decode(k)["_id"]}, doc, upsert=True)
                    for k, doc in wanted.items()
                    if k not in current or current[k].raw != doc.raw
                ]
                if not ops:
                    return 0
                try:
                    coll.bulk_write(ops, ordered=True, bypass_document_validation=True)
                    return len(ops)
                except PyMongoError:
                    pass  # rebuild below
        return self._rebuild(ns)

    def _rebuild(self, ns: NS) -> int:
        db = self.client[ns[0]]
        db.drop_collection(ns[1])
        meta = self._meta.get(ns)
        if meta is None:
            return 1
        options, indexes = meta
        try:
            db.create_collection(ns[1], **options)
        except PyMongoError as exc:
            if not _special(options):
                raise
            self._not_restorable(ns, options, exc)
            return 1
        models = [
            IndexModel(list(spec["key"].items()), **{k: v for k, v in spec.items() if k not in ("key", "v", "ns")})
            for spec in indexes
            if spec.get("name") != "_id_"
        ]
        if models:
            db[ns[1]].create_indexes(models)
        docs = list(self._docs.get(ns, {}).values())
        if docs:  # in order: a capped collection's natural order is the order of its inserts
            db[ns[1]].insert_many(docs, ordered=bool(options.get("capped")), bypass_document_validation=True)
        return 1 + len(docs)

    def _not_restorable(self, ns: NS, options: dict[str, Any], exc: PyMongoError) -> None:
        """A view or time-series collection the server refuses to create again: one warning, no error."""
        kind = "view" if "viewOn" in options else "time-series collection"
        self._warnings.append(
            NOT_RESTORABLE.format(
                label=self._restoring, kind=kind, name=f"{ns[0]}.{ns[1]}", error=faults.reason(exc)[:_MAX_ERROR]
            )
        )

    def _restore_docs(self, ns: NS, idkeys: Iterable[bytes]) -> int:
        """Put back the documents ``idkeys`` of ``ns``: deletions first, so that a document the
        test added cannot hold a unique value a restored one needs; a collection where that is
        not enough (values swapped between documents) is restored whole."""
        deletes: list[Any] = []
        replaces: list[Any] = []
        for idkey in idkeys:
            doc_id = bson.decode(idkey)["_id"]
            doc = self._docs.get(ns, {}).get(idkey)
            if doc is None:
                deletes.append(DeleteOne({"_id": doc_id}))
            else:
                replaces.append(ReplaceOne({"_id": doc_id}, doc, upsert=True))
        coll = self.client[ns[0]][ns[1]]
        try:
            for ops in (deletes, replaces):
                if ops:
                    coll.bulk_write(ops, ordered=False, bypass_document_validation=True)
        except PyMongoError:
            return self._restore_coll(ns)
        return len(deletes) + len(replaces)

    def _restore_docs_at_once(self, by_ns: dict[NS, list[bytes]]) -> int | None:
        """Put back the documents of every collection in one client-level ``bulkWrite`` (MongoDB 8.0):
        the deletions of all collections first, then the replacements, in order; None when it could not
        (a unique clash, a server without the command): the caller restores collection by collection,
        which does again, harmlessly, what was done here."""
        deletes: list[Any] = []
        replaces: list[Any] = []
        for ns, idkeys in sorted(by_ns.items()):
            name, docs = f"{ns[0]}.{ns[1]}", self._docs.get(ns, {})
            for idkey in idkeys:
                doc_id, doc = bson.decode(idkey)["_id"], docs.get(idkey)
                if doc is None:
                    deletes.append(DeleteOne({"_id": doc_id}, namespace=name))
                else:
                    replaces.append(ReplaceOne({"_id": doc_id}, doc, upsert=True, namespace=name))
        try:
            self.client.bulk_write(deletes + replaces, ordered=True, bypass_document_validation=True)
        except PyMongoError as exc:
            # a write refused (error None: a unique clash) is this restore's; the command refused whole, or
            # a server pymongo knows to be older than 8.0 (InvalidOperation), is every restore's
            cause = exc.error if isinstance(exc, ClientBulkWriteException) else exc
            if cause is not None and not _is_fault(cause):
                self._client_bulk = False
            return None
        return len(deletes) + len(replaces)

    def _restore_all(self, colls: set[NS], doc_keys: set[tuple[NS, bytes]]) -> int:
        """Restore ``colls`` whole and the documents ``doc_keys`` elsewhere, one collection at a time.

        A collection that fails does not stop the others; the failures are raised
        together afterwards (RollbackError).
        """
        by_ns: dict[NS, list[bytes]] = {}
        for ns, idkey in doc_keys:
            if ns not in colls:
                by_ns.setdefault(ns, []).append(idkey)
        restored = 0
        if by_ns and self._client_bulk:
            done = self._restore_docs_at_once(by_ns)
            if done is not None:
                restored, by_ns = done, {}
        failures: list[str] = []
        for ns in sorted(colls | set(by_ns)):
            try:
                restored += self._restore_coll(ns) if ns in colls else self._restore_docs(ns, by_ns[ns])
            except PyMongoError as exc:
                text = " ".join(str(exc).split())
                failures.append(f"{ns[0]}.{ns[1]} ({text[:_MAX_ERROR]}{'...' if len(text) > _MAX_ERROR else ''})")
        if failures:
            raise RollbackError(
                NOT_RESTORED.format(where=self._where(), count=len(failures), failures="; ".join(failures))
            )
        return restored


    # -- the adapter protocol ------------------------------------------------------
    @faults.one_line
    def checkpoint(self, label: str | None = None) -> _Level:
        """Mark the current state: a barrier plus a read of what changed since the last mark."""
        level = _Level(label)
        self._restoring = label
        try:
            self._checkpoint(level)
        except BaseException:
            # the before-images taken so far stay on the way back to the older checkpoints
            self._pending = _merge(self._pending, level)
            self._gap = self._gap or "a checkpoint failed (the server's state is not known)"
            raise
        level = _merge(self._pending, level)
        level.label = label
        self._pending = _Level(None)
        self._levels.append(level)
        return level

    def _checkpoint(self, level: _Level) -> None:
        self._drain()
        if self._gap is not None:
            level.full = (self._meta, self._docs)
            self._meta, self._docs = {}, {}
            for ns in self._namespaces():
                got = self._read_coll(ns)
                if got is not None:
                    self._meta[ns], self._docs[ns] = got
            self._gap = None
        else:
            for ns in self._dirty_colls:
                old = (self._meta[ns], self._docs.get(ns, {})) if ns in self._meta else None
                level.colls[ns] = old
                got = self._read_coll(ns)
                self._meta.pop(ns, None)
                self._docs.pop(ns, None)
                if got is not None:
                    self._meta[ns], self._docs[ns] = got
            by_ns: dict[NS, list[bytes]] = {}
            for ns, idkey in self._dirty_docs:
                if ns not in self._dirty_colls:
                    by_ns.setdefault(ns, []).append(idkey)
            for ns, idkeys in by_ns.items():
                coll = self.client[ns[0]].get_collection(ns[1], codec_options=_RAW)
                ids = [bson.decode(k)["_id"] for k in idkeys]
                found = {_idkey(d["_id"]): d for d in coll.find({"_id": {"$in": ids}})}
                docs = self._docs.setdefault(ns, {})
                for idkey in idkeys:
                    level.docs.setdefault((ns, idkey), docs.get(idkey))
                    if idkey in found:
                        docs[idkey] = found[idkey]
                    else:
                        docs.pop(idkey, None)
        self._dirty_docs.clear()
        self._dirty_colls.clear()
        if self.strategy == "counters":
            self._settle_counters()  # our reads (listIndexes, ...) are not the test's writes

    @faults.one_line
    def rollback(self, token: _Level) -> RestoreReport:
        """Make the databases equal to ``token``'s state again; ``token`` stays valid."""
        start = time.perf_counter()
        if not token.alive or token not in self._levels:
            raise RollbackError(f"mongo: checkpoint {token.label!r} was released or rolled past")
        self._restoring, self._warnings = token.label, []
        try:
            report = self._rollback(token)
        except BaseException:
            self._gap = self._gap or "the previous rollback failed (the server's state is not known)"
            raise
        finally:
            for text in self._warnings:
                warnings.warn(RollbackWarning(text), stacklevel=3)
            self._warnings = []
        report.seconds = time.perf_counter() - start
        return report

    @contextlib.contextmanager
    def prefetch(self, token: _Level) -> Iterator[None]:
        """Send the ``serverStatus`` the rollback to ``token`` begins with (its quiet probe) from the
        adapter's own thread, and go on; the rollback in the block waits for its reply there.

        A reply no rollback used is dropped when the block ends: the command it counted makes the
        next probe see one command more than its own, so the next look writes a barrier.
        """
        if (
            self.strategy != "tracking" or not self._has_opcounters or self._gone is not None
            or not self._can_be_quiet() or not token.alive
        ):
            yield
            return
        probe = self._probe_socket()
        if probe is None:
            sent: _Pending = self._sender.submit(self._server_status)
        else:
            try:
                sent = _Sent(probe, self._notes)
            except PyMongoError:  # nothing was sent: the rollback probes itself, and says any fault
                yield
                return
        self._ahead = (token, sent)
        try:
            yield
        finally:
            self._ahead = None

    def _rollback(self, token: _Level) -> RestoreReport:
        sent, self._ahead = self._ahead, None
        ahead = sent[1] if sent is not None and sent[0] is token else None
        self._drain(settle=False, ahead=ahead)  # the counters are read once, after the restore's writes
        self._warn_shared()
        full = self._gap
        doc_keys = set(self._dirty_docs)
        colls = set(self._dirty_colls)
        idx = self._levels.index(token)
        for level in [self._pending, *reversed(self._levels[idx + 1 :])]:
            if level.full is not None:
                self._meta, self._docs = level.full
                full = full or "a later checkpoint was a full resync"
                continue
            for ns, before in level.colls.items():
                self._meta.pop(ns, None)
                self._docs.pop(ns, None)
                if before is not None:
                    self._meta[ns], self._docs[ns] = before
                colls.add(ns)
            for (ns, idkey), doc in level.docs.items():
                docs = self._docs.setdefault(ns, {})
                if doc is None:
                    docs.pop(idkey, None)
                else:
                    docs[idkey] = doc
                doc_keys.add((ns, idkey))
            level.alive = False
        del self._levels[idx + 1 :]
        self._pending = _Level(None)
        self._dirty_docs.clear()
        self._dirty_colls.clear()
        if full is not None:
            colls = self._namespaces() | set(self._meta)
        self._gap = None
        if not colls and not doc_keys and self.strategy == "tracking":  # nothing to write: the last look stands
            if self._baseline is None and self._gap is None and not self._unseen:
                self._baseline = self._opcounters()
            return RestoreReport("mongo", token.label, 0.0, "none", 0, None)
        try:
            restored = self._restore_all(colls, doc_keys)
        finally:
            self._after_restore()  # our own writes are not the next test's (a loss here is a new gap)
        mode = "full" if full else ("incremental" if restored else "none")
        return RestoreReport("mongo", token.label, 0.0, mode, restored, full)

    def _warn_shared(self) -> None:
        """On a server shared by xdist workers: say what this test's time saw beyond the worker's database."""
        if not self._outside:
            return
        names = sorted(self._outside)
        self._outside = set()
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.warn(RollbackWarning(OUTSIDE_WRITES.format(names=shown)), stacklevel=3)

    @faults.one_line
    def observe(self) -> Observation:
        """The whole state of the databases this adapter owns (for ``verify``).

        The databases that exist, per collection (and view) its options and index
        specifications, and every document (field order included), keyed by
        ``("db.coll", repr(_id))``; for a capped collection also the order of its
        documents. It reads everything: a check, not a strategy.
        """
        state: dict[Any, Any] = {}
        if self.strategy == "counters":
            self._collect_counters()  # the writes so far are marked before our reads move the counters
        namespaces = sorted(self._namespaces())
        state[("(databases)", "")] = sorted({db for db, _ in namespaces})
        for ns in namespaces:
            read = self._read_coll(ns)
            if read is None:
                continue
            meta, docs = read
            name = ".".join(ns)
            state[(name, "(options and indexes)")] = _meta_key(meta)
            if meta[0].get("capped"):
                state[(name, "(natural order)")] = [repr(bson.decode(k)["_id"]) for k in docs]
            for key, doc in docs.items():
                son = bson.decode(doc.raw, codec_options=_SON)
                n = bson.decode(key).get("n")  # the n-th document of a repeated _id (time-series)
                state[(name, repr(son["_id"]) + (f" #{n + 1}" if n else ""))] = son
        if self.strategy == "counters":
            self._settle_counters()  # our reads are not the test's writes
        return Observation(self.name, state)

    @faults.one_line
    def changes(self, token: _Level) -> Changes:
        """Documents and collections added, modified and removed since ``token``.

        Documents are named ``"db.collection:<_id repr>"``, collections
        ``"db.collection"`` (modified: its options or indexes changed). The
        documents of a dropped collection are not listed one by one.
        """
        if not token.alive or token not in self._levels:
            raise RollbackError(f"mongo: checkpoint {token.label!r} was released or rolled past")
        self._drain()
        # The state at ``token`` of what changed since: the snapshot (the newest
        # checkpoint) overlaid with the before-images of the newer levels, oldest
        # last, copying only the collections whose documents are overlaid.
        meta, docs = dict(self._meta), dict(self._docs)
        copied: set[NS] = set()
        colls, keys = set(self._dirty_colls), set(self._dirty_docs)
        full = self._gap is not None
        idx = self._levels.index(token)
        for level in [self._pending, *reversed(self._levels[idx + 1 :])]:
            if level.full is not None:
                meta, docs, copied, full = dict(level.full[0]), dict(level.full[1]), set(), True
                continue
            for ns, before in level.colls.items():
                meta.pop(ns, None)
                docs.pop(ns, None)
                copied.discard(ns)
                if before is not None:
                    meta[ns], docs[ns] = before
                colls.add(ns)
            for (ns, idkey), doc in level.docs.items():
                if ns not in copied:
                    docs[ns] = dict(docs.get(ns, {}))
                    copied.add(ns)
                if doc is None:
                    docs[ns].pop(idkey, None)
                else:
                    docs[ns][idkey] = doc
                keys.add((ns, idkey))
        if full:
            colls = self._namespaces() | set(meta)
        added: set[str] = set()
        modified: set[str] = set()
        removed: set[str] = set()

        def name(ns: NS, idkey: bytes | None = None) -> str:
            base = f"{ns[0]}.{ns[1]}"
            return base if idkey is None else f"{base}:{bson.decode(idkey)['_id']!r}"

        def compare(ns: NS, then: dict[bytes, RawBSONDocument], now: dict[bytes, RawBSONDocument]) -> None:
            added.update(name(ns, k) for k in now.keys() - then.keys())
            removed.update(name(ns, k) for k in then.keys() - now.keys())
            modified.update(name(ns, k) for k in now.keys() & then.keys() if now[k].raw != then[k].raw)

        for ns in colls:
            current = self._read_coll(ns)
            if ns not in meta:
                if current is not None:
                    added.add(name(ns))
                    compare(ns, {}, current[1])
            elif current is None:
                removed.add(name(ns))
            else:
                if _meta_key(meta[ns]) != _meta_key(current[0]):
                    modified.add(name(ns))
                compare(ns, docs.get(ns, {}), current[1])
        by_ns: dict[NS, list[bytes]] = {}
        for ns, idkey in keys:
            if ns not in colls:
                by_ns.setdefault(ns, []).append(idkey)
        for ns, idkeys in by_ns.items():
            coll = self.client[ns[0]].get_collection(ns[1], codec_options=_RAW)
            found = {_idkey(d["_id"]): d for d in coll.find({"_id": {"$in": [bson.decode(k)["_id"] for k in idkeys]}})}
            then = docs.get(ns, {})
            compare(ns, {k: then[k] for k in idkeys if k in then}, found)
        return Changes("mongo", frozenset(added), frozenset(modified), frozenset(removed))

    def release(self, token: _Level) -> None:
        """Forget ``token``; rolling back to older checkpoints stays exact."""
        if not token.alive or token not in self._levels:
            return
        idx = self._levels.index(token)
        if idx + 1 < len(self._levels):
            newer = self._levels[idx + 1]
            self._levels[idx + 1] = _merge(token, newer)
        else:
            self._pending = _merge(token, self._pending)
        token.alive = False
        self._levels.remove(token)

    def listener(self) -> monitoring.CommandListener:
        """A pymongo command listener for another client of this server, whose ``update`` and
        ``findAndModify`` commands the adapter then accounts for::

            client = MongoClient(url, event_listeners=[adapter.listener()])

        A rollback lists the collections after updates only when something it cannot account for ran:
        an update that matches nothing makes a collection on SecantusDB without any change event, so
        when the server's counters moved by exactly what noting clients sent, and each named a
        collection that existed, no list is needed. The ``mongo_client`` fixture is such a client.
        """
        noter = _Noter(self)
        self._notes.listeners.append(noter)
        return noter

    def save_journal(self, path: str | os.PathLike[str]) -> None:
        """Write to the directory ``path`` what puts the databases back as they were at the first checkpoint.

        Called once, right after that checkpoint, for a server the plugin did not
        start: every owned collection with its options, indexes and documents
        (raw BSON, from the snapshot already in memory).
        """
        from pathlib import Path

        from . import mongo_journal

        if not self._levels:
            raise RollbackError("mongo: save_journal() needs a checkpoint first")
        mongo_journal.write(Path(path), self._meta, self._docs, self._owned, self.hidden_db)

    def close(self) -> None:
        """Close the stream and leave no barrier behind (the hidden database goes when empty)."""
        try:
            if self._stream is not None:  # (None: counters, or the connection failed: nothing to tidy, or no way to)
                self._stream.close()
                barrier = self.client[self.hidden_db].barrier
                barrier.delete_one({"_id": self._barrier_id})
                if barrier.estimated_document_count() == 0:
                    self.client.drop_database(self.hidden_db)
        except PyMongoError:
            pass  # the server is gone already: nothing is left on it to tidy
        self._sender.close()
        if self._probe is not None:
            self._probe.close()
        self.client.close()
        self._abandoned.clear()


def _first_cause(exc: PyMongoError) -> str:
    """``connection refused`` (of a server selection's long message), else the error's first line."""
    text = str(exc)
    for cause in ("Connection refused", "connection closed", "Connection reset by peer"):
        if cause in text:
            return cause.lower()
    return faults.reason(exc).split(" (configured timeouts")[0]
