"""Elasticsearch: checkpoints made of server-side clones, restored only where a test wrote.

How it works:

* **A test that sent nothing** (the server's per-client request counts,
  ``_nodes/stats/http``, show only this adapter's requests since its last look,
  and at most one read from each other client, or only reads a client made with
  :meth:`ElasticsearchAdapter.node_class` saw answered) costs one round trip at its
  checkpoint and one at its rollback, whatever the number and size of indices:
  the indices are still in the state of the level last seen. No other signal
  that a document was written comes cheaper on noida-db 0.2.3: its index
  statistics (``_stats`` of any metric, ``_cat/indices``, ``_cat/shards``,
  ``_nodes/stats/indices``) read every document, and it neither sorts nor
  filters on ``_seq_no``.
* **Detecting what a test touched** otherwise costs two round trips whatever the data's
  size: the cluster state's ``version`` with every index's name, uuid and
  state (the version moves when a mapping, settings, aliases, a template or a
  cluster setting change; it is never trusted alone, as noida-db lowers it when
  several indices are deleted at once, while a deleted index's uuid never comes
  back) and the index statistics' per-shard ``max_seq_no`` with the index's
  uuid (every index, update and delete takes a sequence number when it is
  written, refreshed or not). An index whose uuid and sequence numbers are
  those of the checkpoint holds the same documents.
* **A checkpoint** keeps, for each index, a *snapshot*: a clone made on the
  server (``_clone`` needs the source write-blocked for a moment) under the
  reserved prefix ``.pytest-rollback-``, hidden and write-blocked. A snapshot is
  reused for as long as the index still matches it, so a test-level checkpoint
  of untouched indices clones nothing.
* **A rollback** deletes the indices the test created, and replaces each index
  the test wrote to (or deleted, or whose mapping changed) with a clone of its
  snapshot, then puts back its aliases and the settings the snapshot does not
  carry (replicas, hidden, write block). Settings or aliases changed without a
  write are put back in place. Index, component and legacy templates and
  cluster settings are read again only when the cluster state moved.
* **Documents put back one by one**: where the answers to a test's writes were
  noted (:meth:`ElasticsearchAdapter.note`), an index of one shard whose every
  sequence number since it equalled its snapshot is named by a note, and whose
  mapping did not change, gets back only those documents (``_mget`` of the
  snapshot, one ``_bulk``, refreshed) instead of a clone, when they are few
  enough to cost less than one; the bulk's sequence numbers are its new
  fingerprint. When every request of other clients since the last look was one
  a noting client saw answered (the request counts say) and the cluster state
  did not move, the sequence numbers come from the notes: the statistics are
  not read.

* **Blocks** a test put on an index (``index.blocks.read_only``, ``..._allow_delete``,
  ``read``, ``write``, ``metadata``: they refuse the deletes, clones and settings
  of a restore, and ``metadata`` even the reading of the index's definition) or
  on the cluster (``cluster.blocks.read_only``, ``..._allow_delete``) are lifted
  before anything else, when the cluster state moved; the checkpoint's own
  blocks are put back last, index blocks before cluster blocks.

After a checkpoint or rollback that failed, the next rollback restores every
index from its snapshot (a full restore).

Where a server's wildcards include hidden indices (noida-db), snapshots are
also closed, which takes them out of ``*`` searches; clones are made from the
closed snapshot.

An index closed at the checkpoint is cloned too where the server can (noida-db
write-blocks and clones a closed index, and gives its sequence numbers), and
closed again after its restore. What cannot be restored exactly is reported as
a :class:`RollbackWarning` naming the checkpoint and the object: on a server
that cannot clone a closed index, a mapping change to it or what was written
while a test had it open; data streams; a template or cluster setting the
server refused to put back.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from .. import faults
from ..api import Changes, Observation, RestoreReport, RollbackError, RollbackWarning, StoreFault
from ._http import ConnectionFailed, Http, HttpError, Pending

Fp = tuple[str, tuple[int, ...]]  # index uuid, max_seq_no per shard
#: what says the cluster's definitions have not moved: the cluster state's version and state uuid, and the name,
#: uuid and state of every index in the cluster (the version alone can repeat: noida-db lowers it when several
#: indices are deleted at once, and a later change brings it back to a number the adapter remembered)
Mark = tuple[int, str, frozenset[tuple[str, str, str]]]

#: settings that change with every copy of an index and say nothing about its contents
_VOLATILE = ("index.uuid", "index.creation_date", "index.provided_name", "index.history.uuid")
_VOLATILE_PREFIXES = ("index.version.", "index.resize.", "index.routing.allocation.initial_recovery.", "index.shrink.")
#: settings a snapshot has its own values for; a restore sets them back from the checkpoint
_OVERRIDDEN = ("index.hidden", "index.blocks.write", "index.number_of_replicas", "index.auto_expand_replicas")
#: index blocks by the id the cluster state gives them (4, a closed index, is not one a restore lifts)
_INDEX_BLOCKS = {
    5: "index.blocks.read_only",
    7: "index.blocks.read",
    8: "index.blocks.write",
    9: "index.blocks.metadata",
    12: "index.blocks.read_only_allow_delete",
}
_CLUSTER_BLOCKS = ("cluster.blocks.read_only", "cluster.blocks.read_only_allow_delete")
#: ``index.blocks`` as normalized settings show an empty group
_EMPTY_GROUP = "{}"


def normalize_settings(flat: dict[str, Any]) -> dict[str, str]:
    """An index's flat settings without what differs between equal copies (uuid, dates, defaults)."""
    out: dict[str, str] = {}
    for key, value in flat.items():
        if key in _VOLATILE or key.startswith(_VOLATILE_PREFIXES) or value is None:
            continue
        # kept as the server reports them, defaults and empty groups too: a user comparing get_settings()
        # before and after a restore sees every one (noida-db leaves ``index.blocks: {}`` after a block is lifted)
        out[key] = str(value).lower() if isinstance(value, bool) else value if isinstance(value, str) else repr(value)
    return out


def _core(settings: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in settings.items() if k not in _OVERRIDDEN}


def _overrides(settings: dict[str, str]) -> dict[str, str | None]:
    return {k: settings.get(k) for k in _OVERRIDDEN}


@dataclasses.dataclass(frozen=True)
class _Meta:
    """An index's definition as the server reports it."""

    mappings: Any
    settings: dict[str, str]
    aliases: dict[str, Any]
    closed: bool
    uuid: str


@dataclasses.dataclass(eq=False)
class _Snap:
    """A hidden, write-blocked clone of an index, and the definition it was cloned with."""

    index: str
    of: str
    mappings: Any
    settings: dict[str, str]  # without the overridden settings
    #: the source's max_seq_no per shard (a clone keeps them, so a restored index has them too)
    seqs: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class _State:
    """One index at a checkpoint."""

    snap: _Snap | None  # None: the index was closed, and this server cannot clone a closed index
    aliases: dict[str, Any]
    overrides: dict[str, str | None]
    uuid: str
    closed: bool = False
    #: a closed index without a snapshot: its mappings and settings (what a restore can compare and put back)
    mappings: Any = None
    settings: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class _Globals:
    """Templates and cluster settings."""

    templates: dict[tuple[str, str], Any]  # (kind, name) -> definition
    cluster: dict[str, dict[str, Any]] | None  # persistent/transient flat settings; None: not owned
    #: data streams: found and reported, never rolled back (their backing indices are the server's ``.ds-*``)
    streams: dict[str, Any] = dataclasses.field(default_factory=dict)


class _Level:
    __slots__ = ("label", "indices", "globals", "alive")

    def __init__(self, label: str | None, indices: dict[str, _State], globals_: _Globals) -> None:
        self.label, self.indices, self.globals, self.alive = label, indices, globals_, True


#: requests that write nothing whatever their method: searches, counts, gets of several documents
_READ_ENDPOINTS = ("_search", "_count", "_msearch", "_mget", "_field_caps", "_explain", "_validate/query",
                   "_search/template", "_msearch/template", "_termvectors", "_mtermvectors", "_rank_eval")


_DOCUMENT_ENDPOINTS = frozenset({"_doc", "_create", "_update", "_bulk", "_source"})


def _is_read(method: str, target: str) -> bool:
    """True for a request that writes nothing: a ``GET`` or ``HEAD``, or a search-like ``POST``."""
    if method in ("GET", "HEAD"):
        return True
    path = target.split("?", 1)[0].rstrip("/")
    segments = set(path.split("/"))
    # not a document whose id is such a word (POST /index/_doc/_search writes one)
    return method == "POST" and path.endswith(_READ_ENDPOINTS) and not segments & _DOCUMENT_ENDPOINTS


def _is_fault(exc: Exception) -> bool:
    """True for a server that cannot be reached, does not reply in time, or refuses the credentials (401)."""
    return isinstance(exc, ConnectionFailed) or (isinstance(exc, HttpError) and exc.status == 401)


#: the most documents put back one by one in an index (more: a clone, which costs one copy of it)
_MAX_NOTED = 10_000
#: documents a clone copies for the cost of one written back (noida-db: a 1,000-document bulk, refreshed,
#: about 150 ms; a 1,000-document clone about 6 ms): more documents to put back than the index holds
#: divided by this, and a clone is cheaper
_CLONED_PER_WRITTEN = 25

_TEMPLATE_PATHS = {"index_template": "/_index_template/", "component_template": "/_component_template/",
                   "template": "/_template/"}


#: where a one-node server counts the requests of each HTTP client
_REQUESTS_PATH = "/_nodes/stats/http"
#: the connections a server has opened, and per client id: agent, requests, last path, closed
_Counts = tuple[int, dict[Any, tuple[str, int, str, bool]]]
#: paths of requests that read only: one of them from another client since the last reading moves nothing
_READS = ("/_search", "/_count", "/_msearch", "/_mget", _REQUESTS_PATH)


class ElasticsearchAdapter:
    """Checkpoint and roll back the indices of an Elasticsearch cluster.

    :param url: ``http://host:port`` of the cluster (credentials may be in the URL).
    :param prefix: only indices and templates whose names start with it are
        rolled back (a worker's share of a server shared under pytest-xdist);
        ``""`` (the default) means every index and template not starting with
        ``.``, and the cluster settings too.
    :param reserved: the name prefix of this adapter's snapshots.
    :param park: ``"hidden"`` (snapshots are hidden indices), ``"closed"`` (also
        closed, for servers whose wildcards match hidden indices) or ``"auto"``
        (find out with a probe index when the adapter starts).
    :param timeout: seconds to wait for each reply of the server (``--rollback-timeout``);
        a server that is gone, does not answer in time or refuses the URL's
        credentials raises :class:`~pytest_rollback.api.StoreFault` (one line).
    """

    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        reserved: str = ".pytest-rollback-",
        park: str = "auto",
        ident: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if park not in ("auto", "hidden", "closed"):
            raise ValueError(f"park must be auto, hidden or closed, not {park!r}")
        self.url = url
        self.timeout = timeout
        self._gone: str | None = None
        self.http = Http(url, timeout=timeout)
        self.prefix = prefix
        self.reserved = reserved
        #: names this adapter's snapshots (``<reserved><ident>-<n>``) and its probe index
        self._id = ident or uuid.uuid4().hex[:8]
        self._numbers = itertools.count(1)
        try:
            self.park = self._probe_park() if park == "auto" else park
        except (ConnectionFailed, HttpError) as exc:
            if not _is_fault(exc):
                raise
            self.http.close()
            raise self._fault(exc) from None
        self.strategy = "clone" if self.park == "hidden" else "clone (closed snapshots)"
        self._levels: list[_Level] = []
        #: the snapshot each live index equals, with the fingerprint it had when it did
        self._current: dict[str, tuple[_Snap, Fp]] = {}
        self._snaps: dict[str, _Snap] = {}
        #: the live definitions as of the cluster state ``_csv`` (after this adapter's last change)
        self._known: dict[str, _Meta] = {}
        self._known_globals = _Globals({}, None)
        self._csv: Mark | None = None
        #: False once the server refused ``index.routing_partition_size: null`` in a clone's settings
        self._clone_unsets_partition = True
        #: False once the server answered that it has no data streams
        self._has_streams = True
        #: False once the server refused ``index.blocks: null``
        self._unsets_block_group = True
        #: False once the server refused to clone a closed index (their writes are then only compared)
        self._clones_closed = True
        #: round trips of the last checkpoint or rollback (for the benchmark)
        self.last_round_trips = 0
        #: the server's HTTP request counts per client after the last look, and the level the indices
        #: were then known to equal: while only our own reading moved them, nothing changed
        self._requests: _Counts | None = None
        self._looked: _Level | None = None
        #: not under a prefix (a server shared by xdist workers): the others' requests would make every probe fail
        self._counts_requests = not prefix
        #: our requests so far, and when the counts were read last
        self._sent = self._sent_at = 0
        #: reads answered to a client made with :meth:`node_class` (searches, counts, gets...), and how many
        #: there were at the last reading of the counts: when every request other clients sent since is one
        #: of them, nothing was written
        self._noted_reads = self._noted_reads_at = 0
        #: answers to writes of such a client that named their sequence numbers (:meth:`note`), and how many at
        #: the last reading of the counts
        self._noted_writes = self._noted_writes_at = 0
        #: set by :meth:`_quiet` when every request of other clients since the last look was one a client of
        #: :meth:`node_class` saw answered, and some wrote: the indices are then those of the last look plus
        #: what the notes name, and the next look need not read the statistics (:meth:`_noted_fingerprints`)
        self._noted_since = False
        #: what answers to other clients' writes said (:meth:`note`): index -> sequence number -> document id,
        #: since the index's snapshot was taken or cloned back
        self._notes: dict[str, dict[int, str]] = {}
        #: each index's documents at the last reading of the statistics (which of a clone and a put-back costs less)
        self._sizes: dict[str, int] = {}
        #: the user agent of this adapter's requests, to tell them from others' in the server's counts
        self._agent = f"pytest-rollback/{self._id}"
        self.http.headers["user-agent"] = self._agent
        #: the rollback whose reading of the request counts was sent ahead (see prefetch), with its reply
        #: to come
        self._ahead: tuple[_Level, Pending] | None = None

    def _fault(self, exc: ConnectionFailed | HttpError) -> StoreFault:
        """The one line for a connection error: the server went away, stopped answering, or refuses us."""
        where = f"{self.http.host}:{self.http.port}"
        if isinstance(exc, HttpError):
            answer = faults.reason(exc).split(" answered ", 1)[-1]  # "401: missing authentication credentials ..."
            return faults.auth_failed("elasticsearch", where, answer)
        if exc.timed_out:
            return faults.not_answering("elasticsearch", where, self.timeout)
        return faults.gone("elasticsearch", where, str(exc))

    def _addresses(self) -> list[tuple[str, int]]:
        return [(self.http.host, self.http.port)]

    def _fault_of(self, exc: Exception) -> StoreFault | None:
        return self._fault(exc) if isinstance(exc, (ConnectionFailed, HttpError)) and _is_fault(exc) else None

    # -- what the server holds -------------------------------------------
    @property
    def _pattern(self) -> str:
        return f"{self.prefix}*" if self.prefix else "*,-.*"

    def owns(self, name: str) -> bool:
        """True for the indices and templates this adapter rolls back."""
        return not name.startswith(".") and name.startswith(self.prefix)

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (), **params: Any) -> Any:
        self.last_round_trips += 1
        self._sent += 1
        return self.http(method, path, body, ok, **params)

    def _probe_park(self) -> str:
        """``closed`` when a wildcard finds a hidden index (then hidden snapshots would show in searches)."""
        probe = f"pytest-rollback-probe-{self._id}"
        self.http("PUT", f"/{probe}", {"settings": {"index.hidden": True, "index.number_of_replicas": 0}})
        try:
            self.http("PUT", f"/{probe}/_doc/1", {}, refresh="true")
            count = self.http("GET", f"/{probe}*/_count", allow_no_indices="true").get("count", 0)
        finally:
            self.http("DELETE", f"/{probe}", ok=(404,))
        return "closed" if count else "hidden"

    def _mark(self) -> Mark:
        """The cluster state's version with every index's name, uuid and state: one round trip.

        An index deleted (the only change seen to lower noida-db's version) takes its uuid with it for
        good, so the version cannot come back to a remembered number with the same indices.
        """
        got = self._call(
            "GET", "/_cluster/state/version,metadata", expand_wildcards="all",
            filter_path="version,state_uuid,metadata.indices.*.state,metadata.indices.*.settings.index.uuid",
        ) or {}
        indices = ((got.get("metadata") or {}).get("indices") or {}).items()
        return (
            int(got.get("version", -1)),
            str(got.get("state_uuid", "")),
            frozenset(
                (name, str(((d.get("settings") or {}).get("index") or {}).get("uuid", "")), str(d.get("state", "")))
                for name, d in indices
            ),
        )

    def _fingerprints(self, pattern: str | None = None) -> dict[str, Fp]:
        body = self._call(
            "GET", f"/{pattern or self._pattern}/_stats", level="shards", expand_wildcards="all",
            allow_no_indices="true", ignore_unavailable="true",
            filter_path="indices.*.uuid,indices.*.shards.*.seq_no.max_seq_no,indices.*.shards.*.routing.primary,"
                        "indices.*.primaries.docs.count",
        ) or {}
        out: dict[str, Fp] = {}
        for name, data in (body.get("indices") or {}).items():
            if not self.owns(name):
                continue
            self._sizes[name] = int(((data.get("primaries") or {}).get("docs") or {}).get("count") or 0)
            seqs = []
            for _shard, copies in sorted((data.get("shards") or {}).items(), key=lambda kv: int(kv[0])):
                primary = [c for c in copies if (c.get("routing") or {}).get("primary")] or copies
                seqs.append(max(int((c.get("seq_no") or {}).get("max_seq_no", -1)) for c in primary))
            out[name] = (str(data.get("uuid", "")), tuple(seqs))
        return out

    def _request_counts(self, ahead: Pending | None = None) -> _Counts | None:
        """The connections a one-node server has opened, and per HTTP client it lists
        (``_nodes/stats/http``): its agent, requests, last path and whether it is closed (one round
        trip, or the reply to the reading sent ``ahead``); None where the server does not list them."""
        if not self._counts_requests:
            return None
        try:
            got = (ahead.result() if ahead is not None else self._call("GET", _REQUESTS_PATH)) or {}
        except HttpError:
            self._counts_requests = False
            return None
        nodes = list((got.get("nodes") or {}).values())
        http = (nodes[0].get("http") or {}) if len(nodes) == 1 else {}
        clients, opened = http.get("clients"), http.get("total_opened")
        if not isinstance(clients, list) or not isinstance(opened, int) or not all(
            isinstance(c.get("request_count"), int) and c.get("agent") for c in clients
        ):
            self._counts_requests = False
            return None
        return opened, {
            c.get("id"): (str(c["agent"]), int(c["request_count"]), str(c.get("last_uri", "")),
                          c.get("closed_time_millis") is not None)
            for c in clients
        }

    def _quiet(self, ahead: Pending | None = None) -> _Level | None:
        """The level the indices were known to equal at the last look, when they still do: since the
        last reading of the server's request counts it answered only our own requests and, from other
        clients, at most one read each (a search, a count, a reading of the counts) or only reads a
        client of :meth:`node_class` saw answered; else None.

        Reads the counts (one round trip, or the reply to the reading sent ``ahead``), which the next
        call compares with.
        """
        looked, self._looked, self._noted_since = self._looked, None, False
        before, sent_at = self._requests, self._sent_at
        reads_at, writes_at = self._noted_reads_at, self._noted_writes_at
        # before the reading: an answer noted after it is the next reading's
        reads, writes = self._noted_reads, self._noted_writes
        counts = self._request_counts(ahead)
        self._requests, self._sent_at, self._noted_reads_at, self._noted_writes_at = counts, self._sent, reads, writes
        if counts is None or before is None or looked is None:
            return None
        (opened, now), (opened_before, base) = counts, before
        # a client gone from the list since (the server keeps about the last 100) that was open then, or one
        # opened and gone since without being listed: what it sent is not known (one closed then sent nothing)
        if any(i not in now and not c[3] for i, c in base.items()) or len(now.keys() - base.keys()) != (
            opened - opened_before
        ):
            return None
        ours = theirs = 0
        one_read_each = True
        for ident, (agent, count, uri, _closed) in now.items():
            delta = count - (base[ident][1] if ident in base else 0)
            if agent == self._agent:
                ours += delta
            else:
                theirs += delta
                if delta and (delta != 1 or not uri.split("?", 1)[0].endswith(_READS)):
                    one_read_each = False
        if ours != self._sent - sent_at:  # our requests since the last reading, this one included
            return None
        # every other request is a read, by the last path each client sent, or by the reads a noting client
        # saw answered (a write, or a request of a client that notes nothing, makes the totals differ)
        if not one_read_each and theirs != reads - reads_at:
            # every other request was answered to a noting client, and some were writes it noted
            self._noted_since = writes > writes_at and theirs == reads - reads_at + writes - writes_at
            return None
        self._looked = looked
        return looked

    def _look(self) -> tuple[Mark, dict[str, Fp]]:
        """The cluster state's mark and every index's fingerprint (closed ones too where the server gives
        them): two round trips, or one when :meth:`_quiet` found only noted requests since the last look."""
        noted, self._noted_since = self._noted_since, False
        csv = self._mark()
        fps = self._noted_fingerprints() if noted and csv == self._csv else None
        return csv, fps if fps is not None else self._fingerprints()

    def _noted_fingerprints(self) -> dict[str, Fp] | None:
        """Every index's fingerprint without the statistics (which noida-db answers by reading every
        document), when the server answered other clients only what a client of :meth:`node_class`
        noted since the last look and the cluster state did not move: the fingerprints the indices had
        then (each equalled its snapshot), the sequence numbers moved to the last one noted. None where
        that is not certain: an index without a snapshot, a note of an index not known, an index of
        several shards that was written.

        A write no answer named (a sequence number a failed write took) is not seen here; putting the
        documents back finds it (its bulk's sequence numbers do not follow) and clones the index, and the
        next reading of the statistics sees what it left.
        """
        if set(self._current) != set(self._known) or not set(self._notes) <= set(self._current):
            return None
        fps: dict[str, Fp] = {}
        for name, (_snap, (index_uuid, seqs)) in self._current.items():
            later = [seq for seq in self._notes.get(name, ()) if seq > max(seqs, default=-1)]
            if later and len(seqs) != 1:
                return None
            fps[name] = (index_uuid, (max(later),)) if later else (index_uuid, seqs)
        return fps

    def _read_meta(self, pattern: str | None = None) -> dict[str, _Meta]:
        body = self._call("GET", f"/{pattern or self._pattern}", ok=(404,), expand_wildcards="all",
                          flat_settings="true", allow_no_indices="true", ignore_unavailable="true") or {}
        states = self._call("GET", "/_cluster/state/metadata", filter_path="metadata.indices.*.state") or {}
        closed = {n for n, d in ((states.get("metadata") or {}).get("indices") or {}).items()
                  if d.get("state") == "close"}
        out: dict[str, _Meta] = {}
        for name, data in body.items():
            if not self.owns(name):
                continue
            flat = data.get("settings") or {}
            out[name] = _Meta(
                mappings=data.get("mappings") or {},
                settings=normalize_settings(flat),
                aliases=data.get("aliases") or {},
                closed=name in closed,
                uuid=str(flat.get("index.uuid", "")),
            )
        return out

    def _read_globals(self) -> _Globals:
        templates: dict[tuple[str, str], Any] = {}
        got = self._call("GET", "/_index_template", ok=(404,)) or {}
        for item in got.get("index_templates", []):
            templates[("index_template", item["name"])] = item["index_template"]
        got = self._call("GET", "/_component_template", ok=(404,)) or {}
        for item in got.get("component_templates", []):
            templates[("component_template", item["name"])] = item["component_template"]
        got = self._call("GET", "/_template", ok=(404,)) or {}
        for name, body in got.items():
            templates[("template", name)] = body
        templates = {
            key: body for key, body in templates.items()
            if self.owns(key[1]) and (body.get("_meta") or {}).get("managed") is not True
        }
        cluster = None
        if not self.prefix:
            got = self._call("GET", "/_cluster/settings", flat_settings="true") or {}
            cluster = {"persistent": got.get("persistent") or {}, "transient": got.get("transient") or {}}
        streams: dict[str, Any] = {}
        if self._has_streams:
            got = self._call("GET", f"/_data_stream/{self.prefix}*", ok=(400, 404, 405), expand_wildcards="all")
            if got is None:  # noida-db has no data streams: a write to a data stream template's name makes an index
                self._has_streams = False
            for item in (got or {}).get("data_streams", []):
                if self.owns(item.get("name", "")):
                    streams[item["name"]] = {k: item.get(k) for k in ("template", "indices", "generation")}
        return _Globals(templates, cluster, streams)

    def _refresh_known(self) -> None:
        csv = self._mark()
        self._known = self._read_meta()
        self._known_globals = self._read_globals()
        self._csv = csv

    def _live_matches(self, csv: Mark, fps: dict[str, Fp]) -> bool:
        """True when the known definitions still describe the server (the mark holds every index's state)."""
        return csv == self._csv and set(fps) <= set(self._known)

    # -- snapshots ---------------------------------------------------------
    def _take(self, name: str, meta: _Meta, fp: Fp) -> _Snap:
        """Clone ``name`` into a new hidden, write-blocked snapshot."""
        number = next(self._numbers)
        self._notes.pop(name, None)  # a note before the snapshot says nothing of what comes after it
        snap = _Snap(f"{self.reserved}{self._id}-{number}", name, meta.mappings, _core(meta.settings), fp[1])
        blocked = meta.settings.get("index.blocks.write") == "true"
        if not blocked:
            self._call("PUT", f"/{name}/_block/write")
        settings: dict[str, Any] = {"index.hidden": True, "index.blocks.write": True, "index.number_of_replicas": 0}
        if "index.auto_expand_replicas" in meta.settings:
            settings["index.auto_expand_replicas"] = "false"
        # the source's other blocks stay off the snapshot (they would refuse its closing and deleting);
        # the snapshot's settings keep them, and a restore puts them back
        settings.update({k: None for k in _INDEX_BLOCKS.values() if k != "index.blocks.write" and k in meta.settings})
        try:
            self._clone(name, snap.index, settings, meta.settings)
        finally:
            if not blocked:
                self._unblock_write(name, meta)
        self._snaps[snap.index] = snap
        if self.park == "closed":
            self._call("POST", f"/{snap.index}/_close")
        return snap

    def _clone(self, source: str, target: str, settings: dict[str, Any], then: dict[str, str],
               aliases: dict[str, Any] | None = None) -> None:
        """Clone ``source`` into ``target`` with ``settings`` and ``aliases``, and the routing partition
        size of ``then`` (noida-db gives a clone ``index.routing_partition_size: 1`` where its source had
        none). The aliases go in the clone request: noida-db lets an index be made with an alias that
        names another index, but refuses to add one afterwards."""
        body = dict(settings)
        if self._clone_unsets_partition:
            body["index.routing_partition_size"] = then.get("index.routing_partition_size")
        after = {**then, **{k: v for k, v in settings.items() if v is not None}}
        extra = {"aliases": aliases} if aliases else {}
        try:
            self._call("POST", f"/{source}/_clone/{target}", {"settings": self._blockless(body, after), **extra})
        except HttpError as exc:
            if exc.status != 400 or not (self._clone_unsets_partition or self._unsets_block_group):
                raise
            # a server that refuses these nulls (then it does not leave what they take away either)
            self._clone_unsets_partition = self._unsets_block_group = False
            self._call("POST", f"/{source}/_clone/{target}", {"settings": settings, **extra})

    def _blockless(self, body: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """``body`` with its block nulls made one ``index.blocks: null`` when no block is left ``after`` it:
        noida-db keeps an empty ``index.blocks`` group (shown by ``GET /<index>``) once its last block is
        set to null one by one."""
        nulls = [k for k, v in body.items() if k.startswith("index.blocks.") and v is None]
        if not nulls or not self._unsets_block_group or after.get("index.blocks") == _EMPTY_GROUP or any(
            k.startswith("index.blocks.") and after.get(k) is not None and k not in nulls for k in after
        ):
            return body
        return {**{k: v for k, v in body.items() if k not in nulls}, "index.blocks": None}

    def _put_settings(self, name: str, body: dict[str, Any], after: dict[str, Any]) -> None:
        """PUT ``body`` as ``name``'s settings; ``after``: its settings once that is done.

        Blocks are lifted one by one (a read-only index refuses ``index.blocks: null``), then the group
        that may stay empty is dropped; an empty group wanted (``index.blocks: "{}"``, as a user's null
        leaves it on noida-db) is made so."""
        group = body.get("index.blocks", "")
        body = {k: v for k, v in body.items() if k != "index.blocks"}
        if body:
            self._call("PUT", f"/{name}/_settings", body)
        if group is None or (group == "" and self._blockless(body, after) is not body):
            if self._call("PUT", f"/{name}/_settings", {"index.blocks": None}, ok=(400,)) is None:
                self._unsets_block_group = False
        elif group == _EMPTY_GROUP:
            self._call("PUT", f"/{name}/_settings", {"index.blocks.write": None})

    def _unblock_write(self, name: str, meta: _Meta) -> None:
        """Put back ``name``'s own write block after a clone (noida-db leaves an empty ``index.blocks`` group
        on a closed index whose last block is lifted: the group goes as a whole then)."""
        self._put_settings(name, {"index.blocks.write": meta.settings.get("index.blocks.write")}, meta.settings)

    def _gc(self) -> bool:
        """Delete the snapshots no checkpoint and no live index needs any more."""
        used = {st.snap.index for lvl in self._levels for st in lvl.indices.values() if st.snap is not None}
        used |= {snap.index for snap, _ in self._current.values()}
        dead = [name for name in self._snaps if name not in used]
        self._delete(dead)
        for name in dead:
            del self._snaps[name]
        return bool(dead)

    def _delete(self, names: Iterable[str]) -> None:
        batch: list[str] = []
        for name in names:
            batch.append(name)
            if sum(len(n) + 1 for n in batch) > 3000:
                self._call("DELETE", "/" + ",".join(batch), ok=(404,), expand_wildcards="all")
                batch = []
        if batch:
            self._call("DELETE", "/" + ",".join(batch), ok=(404,), expand_wildcards="all")

    # -- the adapter protocol --------------------------------------------------
    @faults.one_line
    def checkpoint(self, label: str | None = None) -> _Level:
        """Mark the current state; clones only the indices that changed since their last snapshot."""
        self.last_round_trips = 0
        looked = None
        if self._requests is None:  # the first reading of the request counts, for the rollbacks to compare
            self._looked = None
            self._requests = self._request_counts()
            self._sent_at = self._sent
            self._noted_reads_at, self._noted_writes_at = self._noted_reads, self._noted_writes
        else:  # nothing happened since the last look: the indices are in the state of the level it saw
            looked = self._quiet()
        try:
            if looked is not None:
                level = _Level(label, dict(looked.indices), looked.globals)
                self._levels.append(level)
            else:
                level = self._checkpoint(label)
        except BaseException:
            self._failed()
            raise
        self._looked = level
        return level

    def _failed(self) -> None:
        """After a checkpoint or rollback that failed: the next rollback restores every index from its snapshot."""
        self._current.clear()
        self._notes.clear()
        self._csv = None
        self._looked = None
        self._noted_since = False

    def _checkpoint(self, label: str | None) -> _Level:
        csv, fps = self._look()
        if not self._live_matches(csv, fps):
            self._refresh_known()
        touched = [n for n, fp in fps.items() if n not in self._current or self._current[n][1] != fp]
        if touched and self._csv == csv:  # a write can extend a mapping without moving the cluster state
            fresh = self._read_meta(",".join(touched))
            self._known.update(fresh)
        indices: dict[str, _State] = {}
        took = False
        for name, meta in self._known.items():
            if name not in fps or (meta.closed and not self._clones_closed):
                self._current.pop(name, None)
                indices[name] = self._unsnapped(meta)
                continue
            cur = self._current.get(name)
            if cur is None or cur[1] != fps[name] or cur[0].mappings != meta.mappings or cur[0].settings != _core(
                meta.settings
            ):
                try:
                    snap = self._take(name, meta, fps[name])
                except HttpError:
                    if not meta.closed:
                        raise
                    self._clones_closed = False  # a server that cannot clone a closed index
                    self._current.pop(name, None)
                    indices[name] = self._unsnapped(meta)
                    took = True
                    continue
                self._current[name] = (snap, fps[name])
                took = True
            indices[name] = _State(
                self._current[name][0], meta.aliases, _overrides(meta.settings), meta.uuid, closed=meta.closed
            )
        for name in [n for n in self._current if n not in self._known]:
            del self._current[name]
        if took:
            self._csv = self._mark()
        level = _Level(label, indices, self._known_globals)
        self._levels.append(level)
        self._collect()
        return level

    def _unsnapped(self, meta: _Meta) -> _State:
        """A closed index this server cannot clone: its definition, to compare and put back what it can."""
        return _State(None, meta.aliases, _overrides(meta.settings), meta.uuid, closed=True,
                      mappings=meta.mappings, settings=_core(meta.settings))

    def _collect(self) -> None:
        """:meth:`_gc`, then the cluster state's mark again if it was current (deleting moves it)."""
        current = self._csv is not None
        if self._gc() and current:
            self._csv = self._mark()

    @contextlib.contextmanager
    def prefetch(self, token: _Level) -> Iterator[None]:
        """Write the reading of the request counts the rollback to ``token`` begins with (its quiet probe),
        and go on; the rollback in the block reads its reply (over ``https://``, it is read here).

        It counts among this adapter's requests as soon as it is written, so a reply no rollback read
        is dropped with its connection when the block ends: the next reading counts that request as
        ours, or, if the server has not counted it, finds one fewer than it expects and looks at the
        indices.
        """
        if not self._counts_requests or self._gone is not None or not token.alive:
            yield
            return
        self._sent += 1
        sent = self.http.send("GET", _REQUESTS_PATH)
        self._ahead = (token, sent)
        try:
            yield
        finally:
            self._ahead = None
            sent.drop()

    @faults.one_line
    def rollback(self, token: _Level) -> RestoreReport:
        """Make the indices, templates and cluster settings what they were at ``token``."""
        start = time.perf_counter()
        self.last_round_trips = 0
        if not token.alive or token not in self._levels:
            raise RollbackError(f"elasticsearch: checkpoint {token.label!r} was released or rolled past")
        idx = self._levels.index(token)
        for level in self._levels[idx + 1 :]:
            level.alive = False
        del self._levels[idx + 1 :]
        sent, self._ahead = self._ahead, None
        ahead = sent[1] if sent is not None and sent[0] is token else None
        self.last_round_trips += ahead is not None
        looked = self._quiet(ahead)
        if looked is not None and (
            looked is token or (looked.indices == token.indices and looked.globals == token.globals)
        ):
            self._looked = token
            return RestoreReport("elasticsearch", token.label, time.perf_counter() - start, "none", 0)
        try:
            try:
                report = self._rollback(token)
            except HttpError as exc:
                if exc.status != 403:
                    raise
                # a block the adapter did not know of refused a step: once more, every block lifted first
                self._csv = None
                report = self._rollback(token)
        except BaseException:
            self._failed()
            raise
        self._looked = token
        report.seconds = time.perf_counter() - start
        return report

    def _rollback(self, token: _Level) -> RestoreReport:
        try:
            csv, fps = self._look()
        except HttpError as exc:
            if exc.status != 403:
                raise
            self._lift_blocks()  # a server that refuses the statistics of a blocked index
            csv, fps = self._look()
        moved = not self._live_matches(csv, fps) or self._blocked_and_touched(token, fps)
        lifted: list[str] = []
        if moved:
            lifted = self._lift_blocks()
            self._refresh_known()
        restore: list[str] = []
        blocks: dict[str, dict[str, str | None]] = {}
        fix_settings: dict[str, dict[str, str | None]] = {}
        fix_aliases: list[str] = []
        close: list[str] = []
        wants: dict[str, dict[str, Any]] = {}  # the settings an index is given back
        docs: dict[str, list[str]] = {}  # indices whose changed documents are all known: their ids
        delete = [n for n in self._known if n not in token.indices]
        if not moved:  # a write can extend a mapping without moving the cluster state
            self._recheck_mappings(token, fps)
        for name, st in token.indices.items():
            live = self._known.get(name)
            if st.snap is None:
                self._closed_at_checkpoint(name, st, live, token, close, fix_settings, fix_aliases, wants)
                continue
            cur = self._current.get(name)
            if (
                live is None or live.closed != st.closed or cur is None or cur[0] is not st.snap
                or fps.get(name) != cur[1] or live.mappings != st.snap.mappings
            ):
                ids = self._noted_changes(name, st, live, cur, fps.get(name))
                if ids is None or live is None:
                    restore.append(name)
                    continue
                docs[name] = ids  # only documents moved: put back one by one, definitions compared below
            if live.aliases != st.aliases and any(
                alias in self._known or alias in token.indices
                for alias, spec in st.aliases.items() if live.aliases.get(alias) != spec
            ):  # an alias that names an index, which only a new index may be given (noida-db): a clone
                docs.pop(name, None)
                restore.append(name)
                continue
            wanted = {**st.snap.settings, **{k: v for k, v in st.overrides.items() if v is not None}}
            diff = {k: wanted.get(k) for k in set(wanted) | set(live.settings) if wanted.get(k) != live.settings.get(k)}
            wants[name] = wanted
            block_diff: dict[str, str | None] = {k: diff.pop(k) for k in _INDEX_BLOCKS.values() if k in diff}
            if block_diff:  # put back last: a block refuses the alias and settings changes before it
                blocks[name] = block_diff
            if diff:
                fix_settings[name] = diff
            if live.aliases != st.aliases:
                fix_aliases.append(name)
        for name, diff in fix_settings.items():
            try:
                self._put_settings(name, diff, wants[name])
            except HttpError:  # a static setting: only a fresh copy brings it back
                restore.append(name)
                if name in fix_aliases:
                    fix_aliases.remove(name)
        for name, ids in list(docs.items()):
            snap = token.indices[name].snap
            assert snap is not None
            if name in restore or not self._put_back(name, snap, ids, fps[name]):
                del docs[name]  # a static setting to put back, or a document refused: a fresh copy
                if name not in restore:
                    restore.append(name)
                if name in fix_aliases:
                    fix_aliases.remove(name)
        self._delete([*delete, *(n for n in restore if n in self._known)])
        for name in restore:
            st = token.indices[name]
            assert st.snap is not None
            self._clone(st.snap.index, name, st.overrides, st.snap.settings, st.aliases)
            if st.closed:
                close.append(name)
        actions: list[dict[str, Any]] = []
        for name in fix_aliases:
            live = self._known[name]
            actions += [{"remove": {"index": name, "alias": alias}} for alias in live.aliases]
        for name in fix_aliases:  # a clone has its aliases already
            kept = token.indices[name].aliases
            actions += [{"add": {"index": name, "alias": alias, **spec}} for alias, spec in kept.items()]
        if actions:
            self._call("POST", "/_aliases", {"actions": actions})
        for name in restore:  # a copy may lack a block of its checkpoint (the write block is in its overrides)
            snap = token.indices[name].snap
            assert snap is not None
            wanted_blocks = {k: v for k, v in snap.settings.items() if k in _INDEX_BLOCKS.values()}
            if wanted_blocks:
                blocks[name] = {**blocks.get(name, {}), **wanted_blocks}
                wants[name] = {**snap.settings, **token.indices[name].overrides}
        for name, block_diff in blocks.items():
            self._put_settings(name, block_diff, wants[name])
        if close:
            self._call("POST", f"/{','.join(close)}/_close")
        fixed_globals = self._restore_globals(token.globals)
        self._report_streams(token)
        for name in [n for n in self._current if n not in token.indices or n in delete]:
            del self._current[name]
        done = len(restore) + len(delete) + len(fix_settings) + len(fix_aliases) + len(close) + fixed_globals
        done += len(blocks) + len(lifted)
        if done:  # definitions changed (documents put back one by one change none)
            self._refresh_known()
        for name in [*restore, *delete]:  # what was noted of the index the test had is not of this one
            self._notes.pop(name, None)
        for name in restore:  # a clone has its snapshot's sequence numbers and a new uuid
            snap = token.indices[name].snap
            assert snap is not None
            restored = self._known.get(name)
            self._current[name] = (snap, (restored.uuid if restored else "", snap.seqs))
        self._collect()
        done += len(docs)
        mode = "incremental" if done else "none"
        return RestoreReport("elasticsearch", token.label, 0.0, mode, done)

    # -- documents put back one by one -----------------------------------------
    def _noted_changes(self, name: str, st: _State, live: _Meta | None, cur: tuple[_Snap, Fp] | None,
                       fp: Fp | None, mapping: bool = True) -> list[str] | None:
        """The ids of every document written to ``name`` since it equalled its snapshot, when the notes
        prove them complete (every sequence number taken since has a noted answer); else None.

        Only an open index of one shard (sequence numbers are per shard), the same index (its uuid) as
        when it equalled the snapshot, whose mapping did not change and needs no routing.
        """
        if live is None or cur is None or fp is None or cur[0] is not st.snap or st.snap is None:
            return None
        if live.closed or st.closed or live.uuid != cur[1][0] or fp[0] != cur[1][0] or len(fp[1]) != 1:
            return None
        if len(cur[1][1]) != 1 or (mapping and live.mappings != st.snap.mappings):
            return None
        if ((live.mappings.get("_routing") or {}) if isinstance(live.mappings, dict) else {}).get("required"):
            return None
        first, last = cur[1][1][0] + 1, fp[1][0]
        notes = self._notes.get(name, {})
        if last - first + 1 > _MAX_NOTED or not all(seq in notes for seq in range(first, last + 1)):
            return None
        ids = sorted({notes[seq] for seq in range(first, last + 1)})
        return ids if len(ids) * _CLONED_PER_WRITTEN <= self._sizes.get(name, 0) else None

    def _recheck_mappings(self, token: _Level, fps: dict[str, Fp]) -> None:
        """Read again the definitions of the indices whose documents moved (a write can extend a mapping
        without moving the cluster state, and such an index is not cloned when its notes are complete)."""
        moved = []
        for name, st in token.indices.items():
            cur, fp = self._current.get(name), fps.get(name)
            if name in self._notes and cur is not None and fp is not None and fp != cur[1] and self._noted_changes(
                name, st, self._known.get(name), cur, fp, mapping=False
            ) is not None:
                moved.append(name)
        if moved:
            self._known.update(self._read_meta(",".join(moved)))

    def _put_back(self, name: str, snap: _Snap, ids: list[str], fp: Fp) -> bool:
        """Write ``ids`` back as ``snap`` holds them (deleted where it has none), refreshed; False when a
        document could not be read or written (the index is then cloned back)."""
        got = self._call("POST", "/_mget", {"docs": [{"_index": snap.index, "_id": i} for i in ids]})
        lines: list[str] = []
        for doc_id, doc in zip(ids, (got or {}).get("docs") or [], strict=False):
            if doc.get("error") is not None or doc.get("_id") != doc_id:
                return False
            if doc.get("found"):
                if not isinstance(doc.get("_source"), dict):
                    return False  # a mapping without _source: nothing to write back
                meta = {"_index": name, "_id": doc_id, "routing": doc.get("_routing")}
                lines += [json.dumps({"index": {k: v for k, v in meta.items() if v is not None}}),
                          json.dumps(doc["_source"])]
            else:
                lines.append(json.dumps({"delete": {"_index": name, "_id": doc_id}}))
        if len((got or {}).get("docs") or []) != len(ids):
            return False
        answer = self._call("POST", "/_bulk", ("\n".join(lines) + "\n").encode(), refresh="true") or {}
        seqs = []
        for item in answer.get("items") or []:
            result: Any = next(iter(item.values()), {}) if isinstance(item, dict) else {}
            if result.get("error") is not None or not isinstance(result.get("_seq_no"), int):
                return False
            seqs.append(result["_seq_no"])
        if sorted(seqs) != list(range(fp[1][0] + 1, fp[1][0] + 1 + len(ids))):
            return False  # another client wrote meanwhile: the sequence numbers say nothing certain
        self._current[name] = (snap, (fp[0], (fp[1][0] + len(ids),)))
        self._notes.pop(name, None)
        return True

    # -- what other clients' answers say ----------------------------------------------
    def note(self, answer: Any) -> None:
        """Note what the server answered to a request of another client of it: each document the answer
        names with its index and sequence number (``_index``, ``_id``, ``_seq_no``: the answer to an
        index, create, update or delete, each item of a ``_bulk``).

        A rollback then puts back only the documents written to an index, from its snapshot, instead
        of cloning the whole index, when the notes account for every sequence number the index took
        since it equalled its snapshot (a write no note names, such as a ``delete_by_query``, a write
        of a client that notes nothing, or a mapping the writes extended, is restored by a clone as
        before). An answer of another server, or one that names no sequence number, proves nothing
        and does no harm. :meth:`node_class` makes a client that notes its answers.
        """
        if not isinstance(answer, dict):
            return
        items = answer.get("items")
        results = [next(iter(i.values()), None) for i in items if isinstance(i, dict) and i] \
            if isinstance(items, list) else [answer]
        for result in results:
            if not isinstance(result, dict):
                continue
            index, doc_id, seq = result.get("_index"), result.get("_id"), result.get("_seq_no")
            if isinstance(index, str) and isinstance(doc_id, str) and isinstance(seq, int) and self.owns(index):
                self._notes.setdefault(index, {})[seq] = doc_id

    def node_class(self) -> type[Any]:
        """An ``elastic_transport`` node class whose answers to writes this adapter notes (:meth:`note`),
        for an ``elasticsearch.Elasticsearch`` client of the same server::

            client = Elasticsearch(url, node_class=adapter.node_class())

        The client's writes are then rolled back document by document, and its reads (searches,
        counts, gets) leave the next look at one round trip however many there were.
        """
        from elastic_transport import Urllib3HttpNode

        adapter, where = self, (self.http.host, self.http.port)

        class NotingNode(Urllib3HttpNode):
            def perform_request(self, method: str, target: str, *args: Any, **kwargs: Any) -> Any:
                resp = super().perform_request(method, target, *args, **kwargs)
                if (self.config.host, self.config.port) != where:
                    return resp
                if _is_read(method, target):
                    adapter._noted_reads += 1
                elif b'"_seq_no"' in resp.body:
                    try:
                        adapter.note(json.loads(resp.body))
                    except ValueError:
                        pass
                    else:
                        adapter._noted_writes += 1
                return resp

        return NotingNode

    def _blocked_and_touched(self, token: _Level, fps: dict[str, Fp]) -> bool:
        """True when an index with a block differs from ``token`` in any way (a block refuses the delete,
        clone, settings or aliases a restore would send; one the checkpoint itself had, or one put while
        the cluster state was last read, moves nothing the adapter looks at): blocks must be lifted first."""
        for name, live in self._known.items():
            if not any(live.settings.get(k) == "true" for k in _INDEX_BLOCKS.values()):
                continue
            st, cur = token.indices.get(name), self._current.get(name)
            if st is None or st.snap is None or cur is None or cur[0] is not st.snap or fps.get(name) != cur[1]:
                return True
            if live.closed != st.closed or live.mappings != st.snap.mappings or live.aliases != st.aliases:
                return True
            if _core(live.settings) != st.snap.settings or _overrides(live.settings) != st.overrides:
                return True
        return False

    def _lift_blocks(self) -> list[str]:
        """Lift every block on this adapter's indices, and the cluster's read-only blocks when it owns
        the cluster settings; the restore puts back the checkpoint's. Returns the indices lifted."""
        state = self._call("GET", "/_cluster/state/blocks") or {}
        lifted: dict[str, dict[str, None]] = {}
        for name, ids in ((state.get("blocks") or {}).get("indices") or {}).items():
            settings: dict[str, None] = {
                _INDEX_BLOCKS[int(i)]: None for i in ids if str(i).isdigit() and int(i) in _INDEX_BLOCKS
            }
            if settings and self.owns(name):
                lifted[name] = settings
        if not self.prefix:  # a cluster block refuses every index change: lifted first
            got = self._call("GET", "/_cluster/settings", flat_settings="true") or {}
            body = {
                kind: dict.fromkeys(keys)
                for kind in ("persistent", "transient")
                if (keys := [k for k in _CLUSTER_BLOCKS if str((got.get(kind) or {}).get(k)).lower() == "true"])
            }
            if body:
                self._call("PUT", "/_cluster/settings", body)
        for name, settings in lifted.items():
            self._put_settings(name, settings, {})
        return list(lifted)

    def _closed_at_checkpoint(
        self, name: str, st: _State, live: _Meta | None, token: _Level, close: list[str],
        fix_settings: dict[str, dict[str, str | None]], fix_aliases: list[str], wants: dict[str, dict[str, Any]],
    ) -> None:
        """A closed index this server could not clone: put back its settings and aliases; warn of the rest."""
        if live is not None and live.uuid == st.uuid:
            wanted = {**(st.settings or {}), **{k: v for k, v in st.overrides.items() if v is not None}}
            diff = {k: wanted.get(k) for k in set(wanted) | set(live.settings) if wanted.get(k) != live.settings.get(k)}
            if diff:
                fix_settings[name] = diff
                wants[name] = wanted
            if live.aliases != st.aliases:
                fix_aliases.append(name)
        if live is not None and live.uuid == st.uuid and live.closed:
            if st.mappings is None or live.mappings == st.mappings:
                return
            what = "had its mapping changed by the test, which cannot be undone on a closed index"
        elif live is not None and live.uuid == st.uuid:
            close.append(name)
            what = "was opened by the test; it is closed again, but what was written to it while open stays"
        else:
            what = "was deleted or replaced by the test, and cannot be brought back"
        warnings.warn(
            RollbackWarning(
                f"pytest-rollback: elasticsearch: index {name!r} was closed at checkpoint {token.label!r} "
                f"(a closed index cannot be copied) and {what}; open it before the checkpoint to have it rolled back"
            ),
            stacklevel=2,
        )

    def _restore_globals(self, wanted: _Globals) -> int:
        now = self._known_globals
        fixed = 0
        order = {"index_template": 0, "template": 1, "component_template": 2}
        for key in sorted(set(now.templates) - set(wanted.templates), key=lambda k: order[k[0]]):
            self._call("DELETE", _TEMPLATE_PATHS[key[0]] + key[1], ok=(404,))
            fixed += 1
        for key in sorted(wanted.templates, key=lambda k: -order[k[0]]):
            if now.templates.get(key) != wanted.templates[key]:
                try:
                    self._call("PUT", _TEMPLATE_PATHS[key[0]] + key[1], wanted.templates[key])
                except HttpError as exc:
                    self._warn(f"{key[0].replace('_', ' ')} {key[1]!r} could not be put back ({exc})")
                fixed += 1
        if wanted.cluster is not None and now.cluster is not None and wanted.cluster != now.cluster:
            body = {
                kind: {k: wanted.cluster[kind].get(k) for k in set(wanted.cluster[kind]) | set(now.cluster[kind])
                       if wanted.cluster[kind].get(k) != now.cluster[kind].get(k)}
                for kind in ("persistent", "transient")
            }
            try:
                self._call("PUT", "/_cluster/settings", body)
            except HttpError as exc:
                keys = sorted(k for d in body.values() for k in d)
                self._warn(f"cluster settings {keys} could not be put back ({exc})")
            fixed += 1
        return fixed

    def _report_streams(self, token: _Level) -> None:
        """One warning per rollback while a data stream exists or existed at ``token``: they are not rolled back."""
        names = sorted(set(token.globals.streams) | set(self._known_globals.streams))
        if names:
            self._warn(
                f"data stream{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))} "
                f"(at checkpoint {token.label!r} or now) {'are' if len(names) > 1 else 'is'} not rolled back: "
                "what the test wrote to it, created or deleted stays; use an index (or an alias) instead"
            )

    def _warn(self, what: str) -> None:
        warnings.warn(RollbackWarning(f"pytest-rollback: elasticsearch: {what}"), stacklevel=3)

    @faults.one_line
    def release(self, token: _Level) -> None:
        """Forget ``token``; snapshots nothing else needs are deleted."""
        token.alive = False
        if token in self._levels:
            self._levels.remove(token)
            self._gc()

    def close(self) -> None:
        """Delete every snapshot of this adapter and drop the connections."""
        self._levels.clear()
        self._current.clear()
        try:
            self._gc()
        except ConnectionFailed:
            pass  # the server is gone or frozen (said when its restore failed): its snapshots cannot be deleted
        finally:
            self.http.close()

    # -- the crash journal -------------------------------------------------------
    def save_journal(self, path: str | os.PathLike[str]) -> None:
        """Write to the directory ``path`` what puts the cluster back as it was at the first checkpoint.

        The documents stay in the first checkpoint's snapshots on the server; the
        journal names them, with each index's aliases, settings and fingerprint,
        the templates and the cluster settings.
        """
        from pathlib import Path

        from . import elasticsearch_journal

        if not self._levels:
            raise RollbackError("elasticsearch: save_journal() needs a checkpoint first")
        root = self._levels[0]
        data = {
            "id": self._id,
            "prefix": self.prefix,
            "reserved": self.reserved,
            "park": self.park,
            "indices": {
                name: {
                    "snap": dataclasses.asdict(st.snap) if st.snap is not None else None,
                    "aliases": st.aliases,
                    "overrides": st.overrides,
                    "uuid": st.uuid,
                    "closed": st.closed,
                    "mappings": st.mappings,
                    "settings": st.settings,
                }
                for name, st in root.indices.items()
            },
            "current": {name: [snap.index, fp[0], list(fp[1])] for name, (snap, fp) in self._current.items()},
            "templates": [[kind, name, body] for (kind, name), body in root.globals.templates.items()],
            "cluster": root.globals.cluster,
        }
        elasticsearch_journal.write(Path(path), data)

    def load_journal(self, data: dict[str, Any]) -> _Level:
        """The first checkpoint of a run, from what :meth:`save_journal` wrote (for recovery)."""
        snaps: dict[str, _Snap] = {}
        indices: dict[str, _State] = {}
        for name, st in (data.get("indices") or {}).items():
            snap = None
            if st.get("snap"):
                raw = st["snap"]
                snap = _Snap(raw["index"], raw["of"], raw["mappings"], dict(raw["settings"]), tuple(raw["seqs"]))
                snaps[snap.index] = snap
            indices[name] = _State(
                snap, dict(st.get("aliases") or {}), dict(st.get("overrides") or {}), st["uuid"],
                closed=bool(st.get("closed", snap is None)), mappings=st.get("mappings"), settings=st.get("settings"),
            )
        for name, (index, index_uuid, seqs) in (data.get("current") or {}).items():
            if index in snaps:
                self._current[name] = (snaps[index], (index_uuid, tuple(seqs)))
        self._snaps.update(snaps)
        templates = {(kind, name): body for kind, name, body in data.get("templates") or []}
        level = _Level("the journal", indices, _Globals(templates, data.get("cluster")))
        self._levels.append(level)
        return level

    def remove_leftovers(self, idents: Iterable[str] = ()) -> int:
        """Delete every index named by this adapter's id or ``idents`` (snapshots, probes); return how many."""
        ids = sorted({self._id, *idents})
        patterns = ",".join(f"{self.reserved}{i}-*,pytest-rollback-probe-{i}" for i in ids)
        found = self._call("GET", f"/{patterns}", ok=(404,), expand_wildcards="all", allow_no_indices="true",
                           ignore_unavailable="true") or {}
        names = sorted(found)
        self._delete(names)
        for name in names:
            self._snaps.pop(name, None)
        return len(names)

    # -- reports ---------------------------------------------------------------
    def _documents(self, index: str, snapshot: bool = False) -> dict[str, Any]:
        """Every document of ``index``: id -> (source, routing). Refreshes it first."""
        reopen = snapshot and self.park == "closed"
        if reopen:
            self._call("POST", f"/{index}/_open")
        try:
            self._call("POST", f"/{index}/_refresh", ok=(403,), expand_wildcards="all")
            docs: dict[str, Any] = {}
            page = self._call("POST", f"/{index}/_search", {"size": 1000, "sort": ["_doc"]}, scroll="1m",
                             expand_wildcards="all")
            scroll_id = page.get("_scroll_id")
            try:
                while page["hits"]["hits"]:
                    for hit in page["hits"]["hits"]:
                        docs[hit["_id"]] = (hit.get("_source"), hit.get("_routing"))
                    page = self._call("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": scroll_id})
                    scroll_id = page.get("_scroll_id", scroll_id)
            finally:
                if scroll_id:
                    self._call("DELETE", "/_search/scroll", {"scroll_id": scroll_id}, ok=(404,))
            return docs
        finally:
            if reopen:
                self._call("POST", f"/{index}/_close")

    @faults.one_line
    def changes(self, token: _Level) -> Changes:
        """Indices and documents added, modified and removed since ``token``.

        Names: ``index`` for an index, ``index/<id>`` for a document,
        ``index (mapping)``, ``index (settings)``, ``index (aliases)`` for a
        definition, ``index_template <name>`` (and ``component_template``,
        ``template``) for a template, ``cluster settings``. Only indices whose
        sequence numbers moved are read document by document.
        """
        csv, fps = self._look()
        if not self._live_matches(csv, fps):
            self._refresh_known()
        added: set[str] = {n for n in self._known if n not in token.indices}
        modified: set[str] = set()
        removed: set[str] = set()
        for name, st in token.indices.items():
            live = self._known.get(name)
            if live is None:
                removed.add(name)
                continue
            if st.snap is None:
                remapped = st.mappings is not None and live.mappings != st.mappings
                if live.uuid != st.uuid or not live.closed or remapped:
                    modified.add(name)
                elif st.settings is not None and _core(live.settings) != st.settings:
                    modified.add(f"{name} (settings)")
                if live.uuid == st.uuid and live.aliases != st.aliases:
                    modified.add(f"{name} (aliases)")
                continue
            if live.mappings != st.snap.mappings:
                modified.add(f"{name} (mapping)")
            if _core(live.settings) != st.snap.settings or _overrides(live.settings) != st.overrides:
                modified.add(f"{name} (settings)")
            if live.aliases != st.aliases:
                modified.add(f"{name} (aliases)")
            cur = self._current.get(name)
            if cur is not None and cur[0] is st.snap and fps.get(name) == cur[1] and live.closed == st.closed:
                continue
            if live.closed or st.closed:  # a closed index's documents cannot be read
                modified.add(name)
                continue
            then, now = self._documents(st.snap.index, snapshot=True), self._documents(name)
            added |= {f"{name}/{i}" for i in now.keys() - then.keys()}
            removed |= {f"{name}/{i}" for i in then.keys() - now.keys()}
            modified |= {f"{name}/{i}" for i in now.keys() & then.keys() if now[i] != then[i]}
        now_globals = self._known_globals
        for key in set(token.globals.templates) | set(now_globals.templates):
            a, b = token.globals.templates.get(key), now_globals.templates.get(key)
            label = f"{key[0]} {key[1]}"
            if a is None and b is not None:
                added.add(label)
            elif b is None and a is not None:
                removed.add(label)
            elif a != b:
                modified.add(label)
        if token.globals.cluster != now_globals.cluster:
            modified.add("cluster settings")
        return Changes("elasticsearch", frozenset(added), frozenset(modified), frozenset(removed))

    @faults.one_line
    def observe(self) -> Observation:
        """The whole state: every owned index's definition and documents, templates, cluster settings."""
        meta = self._read_meta()
        state: dict[Any, Any] = {}
        for name, m in meta.items():
            state[("index", name)] = (m.mappings, m.settings, m.aliases, m.closed)
            if not m.closed:
                for doc_id, doc in self._documents(name).items():
                    state[("doc", name, doc_id)] = doc
        glob = self._read_globals()
        for key, body in glob.templates.items():
            state[key] = body
        if glob.cluster is not None:
            state[("cluster",)] = glob.cluster
        for name, body in glob.streams.items():
            state[("data_stream", name)] = body
        return Observation("elasticsearch", state)
