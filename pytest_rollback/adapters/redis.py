"""Redis: checkpoints whose rollback costs what the test wrote.

How it works (the ``tracking`` strategy, used on every real Redis 6.2+):

* One RESP3 connection is subscribed to keyspace notifications of every database
  (``__keyspace@*__:*``) and also runs the adapter's commands. Because replies and
  pushes share the connection, the reply to ``INFO commandstats`` is a barrier:
  every event the server published before it has been read. That barrier is the
  one round trip a checkpoint or a rollback of an untouched store costs.
* The adapter keeps, in this process's memory, a snapshot of every key as it was at
  the newest checkpoint (``DUMP`` payload and absolute expiry). Keys written since
  are known from the events; a checkpoint refreshes only those, a rollback restores
  only those (``RESTORE ... REPLACE ABSTTL`` or ``DEL``). Older checkpoints keep the
  before-images of the keys that later checkpoints refreshed, so nested checkpoints
  cost what was written between them.
* What events cannot show is detected and answered by an exact full restore:
  ``FLUSHDB``, ``FLUSHALL``, ``SWAPDB``, ``CONFIG SET``/``RESETSTAT`` and ``DEBUG``
  are seen in the command counters that the barrier reads; a killed or dropped
  connection (``CLIENT KILL``, a subscriber over its output-buffer limit) breaks
  this connection, which never reconnects silently.

What a test leaves that would stop the restore itself is put back first:

* **Server settings.** Each checkpoint knows the server's whole configuration;
  ``CONFIG GET *`` is read again only when the counters show that ``CONFIG SET``
  ran. A rollback sets back every setting that differs, before it writes any
  data (a lowered ``maxmemory`` is raised again first; a raised one is lowered
  again, and an evicting ``maxmemory-policy`` put back, only once the data is
  back, so that nothing is evicted on the way).
* **A script still running** (``BUSY``): ``SCRIPT KILL`` (``FUNCTION KILL`` for a
  function), wait until the server answers, retry. A script that has already
  written cannot be killed (``UNKILLABLE``): the rollback fails and says so.
* **CLIENT PAUSE** (seen in the counters): ``CLIENT UNPAUSE``. A pause of all
  commands holds the adapter's commands too (even ``CLIENT UNPAUSE``, on Redis
  7.0): the rollback then waits for it to end.
* **Memory.** Keys the test added are deleted before changed keys are restored,
  and a key whose restore is refused for memory (``OOM``: the test made it
  bigger) is deleted first and restored again.

After a rollback or checkpoint that failed, the next rollback is a full one.

Nothing is stored on the server, so ``KEYS *`` and ``DBSIZE`` see no trace, and the
Lua script cache is never touched.

Servers that cannot do this (no RESP3, no ``INFO``, no ``CONFIG SET``: fakeredis
reached by URL, some managed services) get the ``snapshot`` strategy: a full copy at
every checkpoint and a full comparison at every rollback. Exact, but its cost grows
with the data. fakeredis served from this process (the ``embedded`` provider) gets a
journal on its own databases instead: see ``redis_inprocess``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import faults
from ..api import Changes, Observation, RestoreReport, RollbackError, RollbackWarning, StoreFault
from ._resp3 import Arg, ConnectionLost, Push, ReplyError, Resp3Connection

Key = tuple[int, bytes]
#: A key's value at a checkpoint: its DUMP payload and absolute expiry in ms (-1: none).
Entry = tuple[bytes, int]

#: Commands whose effect keyspace events do not show (or that can stop the events).
GAP_COMMANDS = (
    "flushdb",
    "flushall",
    "swapdb",
    "config|set",
    "config|resetstat",
    "config",  # Redis 6.x counts CONFIG without subcommands
    "debug",
    "replicaof",
    "slaveof",
    "module|load",
    "module|loadex",
    "pfdebug",  # PFDEBUG TODENSE rewrites a HyperLogLog without an event
)
#: Commands that change a stream's consumer groups without any keyspace event
#: (XREADGROUP by a known consumer, XACK, XCLAIM, ...): when they ran, every
#: stream the adapter knows of is restored.
STREAM_SILENT_COMMANDS = ("xreadgroup", "xack", "xclaim", "xautoclaim")
#: A read that rewrites a HyperLogLog's stored bytes (its cached cardinality) without any keyspace
#: event: when it ran, the HyperLogLogs whose header changed are restored (or read again at a checkpoint).
HLL_SILENT_COMMANDS = ("pfcount",)
#: Commands that change the server's functions (Redis 7) or ACL users, which keyspace events do not
#: show: when they ran, the rollback puts back the functions (FUNCTION RESTORE) or users (ACL SETUSER).
FUNCTION_COMMANDS = ("function|load", "function|delete", "function|flush", "function|restore")
ACL_COMMANDS = ("acl|setuser", "acl|deluser", "acl|load", "acl")  # Redis 6 counts every ACL in "acl"
#: A test that ran it may have left the server paused: the next rollback unpauses it.
PAUSE_COMMAND = "client|pause"
#: Redis 6 counts every CLIENT subcommand in one counter: when it moved, the next rollback unpauses too.
_CLIENT_COUNTER = "client"
#: Counters that say the server's settings may have changed (the next checkpoint or rollback reads them).
_CONFIG_COUNTERS = frozenset({"config|set", "config", "config|resetstat"})
_GAP_MARKERS = tuple(
    (name, b"\ncmdstat_" + name.encode() + b":calls=")
    for name in GAP_COMMANDS + STREAM_SILENT_COMMANDS + HLL_SILENT_COMMANDS + FUNCTION_COMMANDS + ACL_COMMANDS
    + (PAUSE_COMMAND, _CLIENT_COUNTER)
)
#: Counters that only say what to read again (not a gap in the events).
_SIDE_COUNTERS = frozenset(STREAM_SILENT_COMMANDS + HLL_SILENT_COMMANDS + FUNCTION_COMMANDS + ACL_COMMANDS)
#: INFO's own counter: it only grows (every reading follows the previous INFO), unless
#: CONFIG RESETSTAT zeroed the counters, which could bring the ones above back to the
#: very values last read and hide a FLUSHALL or SWAPDB.
_INFO_MARKER = b"\ncmdstat_info:calls="
#: Events after which a key may be a stream (x* events, and keys copied, moved, renamed or restored).
_MAYBE_STREAM = (b"rename_to", b"move_to", b"copy_to", b"restore")
#: Events after which a key may be a HyperLogLog (a string whose bytes begin with HYLL).
_MAYBE_HLL = (b"pfadd", b"set", b"setrange", b"append", *_MAYBE_STREAM)
_HLL_MAGIC = b"HYLL"
#: A HyperLogLog's header: the magic, its encoding, and the cached count PFCOUNT writes (8 bytes).
_HLL_HEADER = 16
_NEEDED_FLAGS = "KA"
_EVENT_PATTERN = b"__keyspace@*__:*"
_BATCH = 2000
#: at most this many keys written outside a shared server's databases are kept per database, for the warning
_OUTSIDE_KEPT = 100
OUTSIDE_WRITES = (
    "pytest-rollback: redis: while this test ran, keys changed in database(s) {dbs}, which no xdist worker owns "
    "(by this test, or by one on another worker): {keys}; they are put back at the end of the run, not after "
    "each test: use the database of redis_service.url, or run such tests without -n"
)
SHARED_GAP = (
    "pytest-rollback: redis: {what} on the server the xdist workers share while this test ran (by this test, "
    "or by one on another worker): each worker put its own database back whole, the others are put back at "
    "the end of the run, and tests running meanwhile on other workers may have failed because of it"
)
#: Settings the adapter manages itself: a rollback sets them back widened.
_FLAGS_SETTING = b"notify-keyspace-events"
#: How often one command is retried after ending a busy script, and how long a killed one may take to end.
_BUSY_RETRIES = 5
_KILL_WAIT = 10.0
#: A rollback that meets a script it cannot end.
SCRIPT_UNKILLABLE = (
    "redis at {where}: a script that has already written is still running, and Redis cannot kill it "
    "(UNKILLABLE); nothing can be restored until it ends"
)
#: ACL users a rollback could not make exactly as they were.
ACL_NOT_PUT_BACK = (
    "pytest-rollback: redis: ACL users changed by this test cannot be put back exactly ({users}): "
    "ACL SETUSER cannot undo that rule"
)
#: Server settings a rollback could not set back.
CONFIG_NOT_PUT_BACK = "redis at {where}: server settings could not be put back: {settings}"
#: How a reply refusing the connection's credentials begins (a HELLO without AUTH, a bad password).
_AUTH_ERRORS = ("WRONGPASS", "NOAUTH", "HELLO must be called with the client already authenticated")
#: What the server's refusal means, by a word of it (RESP3 and redis-py word them differently).
_AUTH_REASONS = (
    ("WRONGPASS", "wrong user name or password"),
    ("invalid username-password pair", "wrong user name or password"),
    ("NOAUTH", "the server wants a password and the URL gives none"),
    ("HELLO must be called", "the server wants a password and the URL gives none"),
    ("Authentication required", "the server wants a password and the URL gives none"),
)


#: Redis < 7 has no PEXPIRETIME: each key's absolute expiry (ms; -1 none, -2 no key) read on the server's
#: own clock, PTTL between two readings of TIME in the same millisecond (PTTL counts from that clock).
EXPIRY_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local before, after, ttl
  repeat
    local t1 = redis.call('TIME')
    ttl = redis.call('PTTL', key)
    local t2 = redis.call('TIME')
    before = tonumber(t1[1]) * 1000 + math.floor(tonumber(t1[2]) / 1000)
    after = tonumber(t2[1]) * 1000 + math.floor(tonumber(t2[2]) / 1000)
  until before == after
  if ttl < 0 then out[i] = ttl else out[i] = before + ttl end
end
return out
"""


def parse_url(url: str) -> dict[str, Any]:
    """Host, port, db, username and password of a ``redis://`` URL, as redis-py reads it.

    The query's ``db``, ``username`` and ``password`` count too (``db=`` wins over
    the path, credentials before the host win over the query's); the rest of the
    query (time-outs, pool sizes) is redis-py's business. Raises ``ValueError`` for
    a URL redis-py would refuse: another scheme, a database that is not a number.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", ""):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (use redis://host:port/db)")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if v}
    path = unquote(parts.path).strip("/")
    db = query.get("db", path)
    try:
        number = int(db) if db else None
    except ValueError:
        raise ValueError(f"the database {db!r} is not a number") from None
    username = unquote(parts.username) if parts.username else query.get("username")
    password = unquote(parts.password) if parts.password else query.get("password")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": number,
        "username": username or None,
        "password": password,
    }


class _Delta:
    """Before-images that take the snapshot from a newer point back to an older one."""

    __slots__ = ("before", "full_prev")

    def __init__(self) -> None:
        self.before: dict[Key, Entry | None] = {}
        #: The whole snapshot at the older point, when the newer one was a full resync.
        self.full_prev: dict[Key, Entry] | None = None


def _merge(older: _Delta, newer: _Delta) -> _Delta:
    """One delta from before ``older`` to after ``newer`` (consumes both)."""
    if older.full_prev is not None:
        return older
    if newer.full_prev is not None:
        for k, v in older.before.items():
            if v is None:
                newer.full_prev.pop(k, None)
            else:
                newer.full_prev[k] = v
        return newer
    if not newer.before:
        return older
    if not older.before:
        return newer
    if len(older.before) >= len(newer.before):
        for k, v in newer.before.items():
            older.before.setdefault(k, v)
        return older
    newer.before.update(older.before)
    return newer


class _Probe:
    """In a pipeline's bookkeeping: the reply that says whether ``key`` is a HyperLogLog."""

    __slots__ = ("key",)

    def __init__(self, key: Key) -> None:
        self.key = key


class _Level:
    __slots__ = ("label", "delta", "alive", "config", "functions", "users")

    def __init__(
        self,
        label: str | None,
        delta: _Delta,
        config: dict[bytes, bytes] | None = None,
        functions: bytes | None = None,
        users: dict[bytes, list[bytes]] | None = None,
    ) -> None:
        self.label = label
        self.delta = delta
        self.alive = True
        #: the server's settings (``CONFIG GET *``) at this point; shared with the levels around it while
        #: no ``CONFIG SET`` ran (None: the snapshot strategy does not keep them)
        self.config = config
        #: the server's functions (``FUNCTION DUMP``; None: Redis < 7) and ACL users (``ACL LIST``, by
        #: name), shared the same way while no FUNCTION or ACL command changed them
        self.functions = functions
        self.users = users

    def __repr__(self) -> str:
        return f"<redis checkpoint {self.label!r}{'' if self.alive else ' (released)'}>"


class RedisAdapter:
    """Checkpoint and roll back a whole Redis server (or the given databases).

    :param url: ``redis://[user:password@]host:port[/db]``.
    :param dbs: the database numbers this adapter owns; ``None`` means every
        database of the server (each pytest-xdist worker then has its own server).
    :param strategy: ``"auto"`` (tracking where the server allows it, else
        snapshot), ``"tracking"`` or ``"snapshot"``.
    :param others: the databases of the other processes sharing the server (pytest-xdist
        workers on one external Redis). Writes to any database that is neither this
        adapter's nor theirs, and commands that reach every database (``FLUSHALL``,
        ``SWAPDB``), are reported with a :class:`~pytest_rollback.RollbackWarning` when the
        test during which they happened is rolled back; those databases are put back
        by the run at its end, not after each test (another worker's test may be
        writing there).
    :param flags_record: for adapters in several processes on one server (pytest-xdist
        workers on an external Redis): a file they share. The first to change the
        server's ``notify-keyspace-events`` writes the flags it found there, and no
        adapter puts them back when it closes (one finishing early would switch
        off the events the others still track): :func:`put_back_flags` does, once
        every process is done.
    :param timeout: seconds to wait for each reply of the server (``--rollback-timeout``);
        a server that is gone, does not answer in time or refuses the URL's
        credentials raises :class:`~pytest_rollback.api.StoreFault` (one line).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        dbs: Iterable[int] | None = None,
        strategy: str = "auto",
        flags_record: str | None = None,
        others: Iterable[int] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if strategy not in ("auto", "tracking", "snapshot"):
            raise ValueError(f"strategy must be auto, tracking or snapshot, not {strategy!r}")
        self.url = url
        self.timeout = timeout
        self._gone: str | None = None
        self._params = parse_url(url)
        self._owned: frozenset[int] | None = frozenset(dbs) if dbs is not None else None
        #: the databases of the other processes sharing the server (xdist workers); None: not shared
        self._others: frozenset[int] | None = frozenset(others) if others is not None else None
        #: keys written while the current test ran in databases that are nobody's (shared servers only)
        self._outside: dict[int, set[bytes]] = {}
        self._conn: Resp3Connection | None = None
        self._db = -1
        self._snap: dict[Key, Entry] = {}
        self._dirty: set[Key] = set()
        #: Keys that are (or may be) streams; see STREAM_SILENT_COMMANDS.
        self._streams: set[Key] = set()
        #: Keys that are (or may be) HyperLogLogs; see HLL_SILENT_COMMANDS.
        self._hlls: set[Key] = set()
        #: the header (with the cached count) of each HyperLogLog as the snapshot holds it, where known
        self._hll_heads: dict[Key, bytes] = {}
        #: the server's functions and ACL users as last known, and whether a command may have changed them
        self._functions: bytes | None = None
        self._users: dict[bytes, list[bytes]] | None = None
        self._functions_stale = True
        self._users_stale = True
        #: the events' flags could not be checked (the test took CONFIG from the adapter's user): after the users
        self._flags_pending = False
        self._own_window: set[Key] | None = None
        self._levels: list[_Level] = []
        self._pending = _Delta()
        self._gap: str | None = "first checkpoint"
        self._counters: dict[str, int] = {}
        #: the server's settings as last known, and whether CONFIG SET may have changed them since
        self._config: dict[bytes, bytes] | None = None
        self._config_stale = True
        #: CLIENT PAUSE ran since the last rollback: the next one unpauses the server
        self._paused = False
        self._info_calls = -1
        #: the level whose rollback's ``INFO commandstats`` was sent ahead (see prefetch), reply not read yet
        self._ahead: _Level | None = None
        self._has_pexpiretime = True
        #: how the snapshot strategy reads expiries (see expiry_mode); the version in HELLO may be
        #: the server's own (fakeredis says 2.x): probed where it is used instead of guessed from it
        self._expiry_mode: str | None = None
        self._original_flags: str | None = None
        self._flags_record = flags_record
        self._clients: dict[int, Any] = {}
        self.last_report: RestoreReport | None = None
        self.strategy = strategy
        if strategy != "snapshot":
            try:
                self._connect()
                self.strategy = "tracking"
            except (ReplyError, ConnectionLost, OSError) as exc:
                if _is_fault(exc):  # not a server without tracking: one that is gone, frozen or refuses us
                    self._close_conn()
                    raise self._fault(exc) from None
                if strategy == "tracking":
                    raise RollbackError(
                        f"redis at {self._where()}: change tracking is not possible ({exc}); "
                        "use strategy='snapshot' or a Redis 6.2+ server that allows CONFIG SET"
                    ) from exc
                self._close_conn()
                self.strategy = "snapshot"

    # -- connection ----------------------------------------------------------
    def _where(self) -> str:
        return f"{self._params['host']}:{self._params['port']}"

    def _connect(self) -> None:
        p = self._params
        conn = Resp3Connection(
            p["host"],
            p["port"],
            username=p["username"],
            password=p["password"],
            timeout=self.timeout,
            on_push=self._on_push,
        )
        self._conn = conn
        self._db = -1
        info = conn.server_info
        version = info.get(b"version", b"0") if isinstance(info, dict) else b"0"
        major_minor = tuple(int(x) for x in version.split(b".")[:2])
        self._has_pexpiretime = major_minor >= (7, 0)
        self._ensure_flags()
        conn.send([("PSUBSCRIBE", _EVENT_PATTERN)])
        conn.call("PING")  # the subscription is confirmed by a push; PING's reply follows it
        self._counters = self._read_counters()

    def _ensure_flags(self) -> None:
        """Make the server publish the keyspace events tracking needs (keeping its own flags)."""
        try:
            import fcntl  # POSIX, like pytest-xdist's shared directory it serves
        except ImportError:
            fcntl = None  # type: ignore[assignment]
        if self._flags_record is None or fcntl is None:  # no lock to take: one process (xdist needs POSIX)
            self._widen_flags()
            return
        # one process at a time: a second one that read the flags before the first widened
        # them would widen them again, and that CONFIG SET forces a full restore on the first
        with open(f"{self._flags_record}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._widen_flags()

    def _widen_flags(self) -> None:
        assert self._conn is not None
        reply = self._conn.call("CONFIG", "GET", "notify-keyspace-events")
        current = ""
        if isinstance(reply, dict):
            current = next(iter(reply.values()), b"").decode()
        elif isinstance(reply, list) and len(reply) == 2:
            current = reply[1].decode()
        if self._original_flags is None:
            self._original_flags = current if self._flags_record is None else _first_flags(self._flags_record, current)
        expanded = current.replace("A", "g$lshzxetd")
        if not ("K" in expanded and all(f in expanded for f in "g$lshzxetd")):
            self._conn.call("CONFIG", "SET", "notify-keyspace-events", _union_flags(current, _NEEDED_FLAGS))
            # the settings last read are not the server's now: the next checkpoint reads them again (on
            # Redis 6, where one counter counts every CONFIG, a test's CONFIG SET back to those it read
            # would otherwise look like nothing changed, and its writes with the events off go unseen)
            self._config_stale = True

    def _close_conn(self) -> None:
        self._ahead = None  # no reply is due on the next connection
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _on_push(self, msg: Push) -> None:
        if len(msg) != 4 or msg[0] != b"pmessage":
            return
        channel = msg[2]
        end = channel.find(b"__:", 11)
        if end < 0:
            return
        db = int(channel[11:end])
        if self._owned is not None and db not in self._owned:
            if self._others is not None and db not in self._others:  # nobody's database: reported, not restored
                seen = self._outside.setdefault(db, set())
                if len(seen) < _OUTSIDE_KEPT:
                    seen.add(bytes(channel[end + 3 :]))
            return
        key = (db, bytes(channel[end + 3 :]))
        event = msg[3]
        if event[:1] == b"x" or event in _MAYBE_STREAM:
            self._streams.add(key)
        if event in _MAYBE_HLL:
            self._hlls.add(key)
        if self._own_window is not None and key in self._own_window:
            return
        self._dirty.add(key)

    def _read_counters(self, ahead: bool = False) -> dict[str, int]:
        """The counters of ``INFO commandstats``; with ``ahead``, from the reply to the one sent ahead."""
        assert self._conn is not None
        text = self._ahead_reply() if ahead else self._call("INFO", "commandstats")
        if not isinstance(text, bytes):
            raise ReplyError("INFO commandstats gave no text")
        counters: dict[str, int] = {}
        for name, marker in _GAP_MARKERS:  # a few C-level searches beat splitting every line
            at = text.find(marker)
            if at >= 0:
                start = at + len(marker)
                counters[name] = int(text[start : text.index(b",", start)])
        at = text.find(_INFO_MARKER)
        info_calls = int(text[at + len(_INFO_MARKER) : text.index(b",", at)]) if at >= 0 else 0
        if info_calls <= self._info_calls:  # the counters were reset since the last reading
            counters["config|resetstat"] = -1
        self._info_calls = info_calls
        return counters

    def _drain(self, ahead: bool = False) -> None:
        """Read every event published so far (one round trip; none more with ``ahead``, the reply to the
        ``INFO`` sent ahead being the barrier) and check for gaps."""
        try:
            if self._conn is None:
                raise ConnectionLost("not connected")
            if self._ahead is not None and not ahead:  # sent ahead for another rollback: read, not used
                self._ahead_reply()
            counters = self._read_counters(ahead)
        except ConnectionLost as exc:
            self._close_conn()
            self._gap = f"the adapter's connection was lost ({exc}); keyspace events may have been missed"
            self._config_stale = self._functions_stale = self._users_stale = True
            if exc.timed_out:  # a new connection would wait as long again: say so now
                raise self._fault(exc) from None
            self._reconnect()
            return
        if counters != self._counters:
            names = set(counters) | set(self._counters)
            changed = sorted(k for k in names if counters.get(k) != self._counters.get(k))
            if any(k in STREAM_SILENT_COMMANDS for k in changed):  # consumer groups changed: every stream is suspect
                self._dirty.update(self._streams)
            if any(k in HLL_SILENT_COMMANDS for k in changed):  # a HyperLogLog's cache may have been written
                self._hlls_counted()
            if any(k in FUNCTION_COMMANDS for k in changed):
                self._functions_stale = True
            if any(k in ACL_COMMANDS for k in changed):
                self._users_stale = True
            if PAUSE_COMMAND in changed or _CLIENT_COUNTER in changed:
                self._paused = True
            if _CONFIG_COUNTERS.intersection(changed):
                self._config_stale = True
            gaps = [k for k in changed if k not in _SIDE_COUNTERS and k not in (PAUSE_COMMAND, _CLIENT_COUNTER)]
            if "config" in gaps and "config|set" not in counters and self._config is not None:
                # Redis 6 counts every CONFIG (a GET too, by anyone) in one counter: a gap only
                # if a setting changed (one set and put back within the test is not seen there)
                known = self._config
                try:
                    now: dict[bytes, bytes] | None = self._read_config()  # takes the counter's new value
                    counters["config"] = self._counters["config"]
                except ReplyError as exc:  # the test took CONFIG from the adapter's user: a gap
                    if not str(exc).startswith("NOPERM") or not self._users_stale:
                        raise
                    now, self._config_stale = None, True
                if now is None:
                    pass
                elif now == known:
                    gaps.remove("config")
                    self._config = known  # the same object: levels that share it stay shared
                else:
                    self._config = now
            if not gaps:
                self._counters = counters
                return
            gap = ", ".join(k.upper() for k in gaps)
            self._gap = self._gap or f"{gap} ran (keyspace events do not show its effect)"
            # CONFIG SET may have switched the events off: switch them on before going on (once the
            # ACL users are back, if the test took CONFIG from the adapter's own user)
            try:
                self._ensure_flags()
            except ReplyError as exc:
                if not str(exc).startswith("NOPERM") or not self._users_stale:
                    raise
                self._flags_pending = True
            self._counters = self._read_counters()

    def _reconnect(self) -> None:
        try:
            self._connect()
        except (OSError, ConnectionLost, ReplyError) as exc:
            self._close_conn()
            raise self._fault(exc) from None

    def _fault(self, exc: BaseException) -> StoreFault:
        """The one line for a connection error: the server went away, stopped answering, or refuses us."""
        if _timed_out(exc):
            return faults.not_answering("redis", self._where(), self.timeout)
        if isinstance(exc, ReplyError) or type(exc).__name__ == "AuthenticationError":
            return faults.auth_failed("redis", self._where(), auth_reason(exc))
        return faults.gone("redis", self._where(), faults.reason(exc))

    def _addresses(self) -> list[tuple[str, int]]:
        return [(self._params["host"], self._params["port"])]

    def _fault_of(self, exc: Exception) -> StoreFault | None:
        return self._lost(exc) if _is_fault(exc) else None

    def _lost(self, exc: BaseException) -> StoreFault:
        """Drop the connection after ``exc`` (the next call reconnects and restores fully); its one line."""
        self._close_conn()
        for client in self._clients.values():
            client.close()
        self._gap = f"the adapter's connection was lost ({faults.reason(exc)})"
        return self._fault(exc)

    def _select(self, db: int, cmds: list[Sequence[Arg]]) -> None:
        if self._db != db:
            cmds.append(("SELECT", db))
            self._db = db

    def _run(self, cmds: list[Sequence[Arg]], db: int) -> list[object]:
        """Pipeline ``cmds`` in batches; ``db`` is the database selected before the first one.

        A batch that meets a busy script is sent again (after a ``SELECT`` of the
        database it started in) once the script is ended: every command the
        adapter pipelines can be repeated.
        """
        assert self._conn is not None
        replies: list[object] = []
        for i in range(0, len(cmds), _BATCH):
            batch = cmds[i : i + _BATCH]
            got = self._conn.pipeline(batch)
            for _ in range(_BUSY_RETRIES):
                if not any(_is_busy(r) for r in got):
                    break
                self._end_busy_script()
                prefix: list[Sequence[Arg]] = [("SELECT", db)] if db >= 0 else []
                got = self._conn.pipeline(prefix + batch)[len(prefix) :]
            replies += got
            for cmd in batch:
                if cmd[0] == "SELECT":
                    db = int(cmd[1])
        return replies

    def _call(self, *args: Arg) -> object:
        """One command; a script past busy-reply-threshold is ended first, then the command is sent again."""
        assert self._conn is not None
        for _ in range(_BUSY_RETRIES):
            try:
                return self._conn.call(*args)
            except ReplyError as exc:
                if not _is_busy(exc):
                    raise
            self._end_busy_script()
        return self._conn.call(*args)

    def _end_busy_script(self) -> None:
        """A script or function ran past busy-reply-threshold: kill it and wait until the server answers.

        ``SCRIPT KILL`` ends a script, ``FUNCTION KILL`` a function (Redis says which
        one runs). One that has already written cannot be killed: RollbackError.
        """
        assert self._conn is not None
        for kill in (("SCRIPT", "KILL"), ("FUNCTION", "KILL")):
            reply = self._conn.pipeline([kill])[0]
            if not isinstance(reply, ReplyError) or str(reply).startswith("NOTBUSY"):
                break
            if str(reply).startswith("UNKILLABLE"):
                raise RollbackError(SCRIPT_UNKILLABLE.format(where=self._where()))
            # "BUSY ... You can only call FUNCTION KILL": a function runs, not a script
        deadline = time.monotonic() + _KILL_WAIT
        while _is_busy(self._conn.pipeline([("PING",)])[0]):
            if time.monotonic() > deadline:
                raise RollbackError(
                    f"redis at {self._where()}: a busy script was killed but still ran {_KILL_WAIT:.0f} s later"
                )
            time.sleep(0.005)

    # -- HyperLogLogs ----------------------------------------------------------
    def _hll_seen(self, key: Key, head: object) -> None:
        """``head``, the first bytes of ``key`` (as the snapshot holds it), say whether it is a HyperLogLog."""
        if isinstance(head, bytes) and head.startswith(_HLL_MAGIC):
            self._hlls.add(key)
            self._hll_heads[key] = head
        else:
            self._hlls.discard(key)
            self._hll_heads.pop(key, None)

    def _hll_heads_now(self, keys: Iterable[Key]) -> dict[Key, object]:
        """The header of each of ``keys`` on the server (one round trip)."""
        order = sorted(keys)
        cmds: list[Sequence[Arg]] = []
        owners: list[Key | None] = []
        start = self._db
        for key in order:
            self._select(key[0], cmds)
            owners += [None] * (len(cmds) - len(owners))
            cmds.append(("GETRANGE", key[1], 0, _HLL_HEADER - 1))
            owners.append(key)
        replies = self._run(cmds, start) if cmds else []
        return {k: r for k, r in zip(owners, replies, strict=True) if k is not None}

    def _hlls_counted(self) -> None:
        """PFCOUNT ran: the HyperLogLogs whose header (cached count) is no longer the snapshot's are dirty.

        A key not written since the snapshot that is no HyperLogLog now was none then either
        (PFCOUNT makes none): it is forgotten. One whose snapshot header is not known is dirty.
        """
        for key, head in self._hll_heads_now(self._hlls - self._dirty).items():
            known = self._hll_heads.get(key)
            if known is None and not (isinstance(head, bytes) and head.startswith(_HLL_MAGIC)):
                self._hlls.discard(key)
            elif head != known:
                self._dirty.add(key)

    def _learn_hll_heads(self, keys: set[Key]) -> None:
        """Once ``keys`` are restored (the snapshot's bytes again): their headers, for _hlls_counted."""
        if keys:
            for key, head in self._hll_heads_now(keys).items():
                self._hll_seen(key, head)

    # -- reading and writing keys --------------------------------------------
    def _fetch(self, keys: Iterable[Key], probe: Iterable[Key] = ()) -> dict[Key, Entry | None]:
        """Each key's DUMP payload and absolute expiry (None: no such key).

        Redis 7 gives the absolute expiry (``PEXPIRETIME``); Redis 6.2 reads it on its
        own clock in one script per database (:data:`EXPIRY_SCRIPT`), so it is exact too.
        Each key of ``probe`` is also looked at (its first bytes) to know whether it is a
        HyperLogLog: ``self._hlls`` is updated.
        """
        probe = set(probe)
        by_db: dict[int, list[bytes]] = {}
        for db, name in keys:
            by_db.setdefault(db, []).append(name)
        cmds: list[Sequence[Arg]] = []
        #: per command: the key whose DUMP it is, a list of keys whose expiries it gives, a key's
        #: HyperLogLog probe, or None
        order: list[Key | list[Key] | _Probe | None] = []
        start = self._db
        for db, names in by_db.items():
            if self._db != db:
                cmds.append(("SELECT", db))
                order.append(None)
                self._db = db
            for name in names:
                cmds.append(("DUMP", name))
                order.append((db, name))
                if (db, name) in probe:
                    cmds.append(("GETRANGE", name, 0, _HLL_HEADER - 1))
                    order.append(_Probe((db, name)))
                if self._has_pexpiretime:
                    cmds.append(("PEXPIRETIME", name))
                    order.append([(db, name)])
            if not self._has_pexpiretime:
                for i in range(0, len(names), _BATCH):
                    chunk = names[i : i + _BATCH]
                    cmds.append(("EVAL", EXPIRY_SCRIPT, len(chunk), *chunk))
                    order.append([(db, name) for name in chunk])
        replies = self._run(cmds, start)
        payloads: dict[Key, bytes | None] = {}
        expiries: dict[Key, int] = {}
        for owner, reply in zip(order, replies, strict=True):
            if isinstance(owner, _Probe):  # WRONGTYPE: not a string, so no HyperLogLog
                self._hll_seen(owner.key, reply)
                continue
            if isinstance(reply, ReplyError):
                what = "DUMP" if isinstance(owner, tuple) else "reading an expiry" if owner else "SELECT"
                raise RollbackError(f"redis at {self._where()}: {what} failed: {reply}")
            if isinstance(owner, tuple):
                assert reply is None or isinstance(reply, bytes)
                payloads[owner] = reply
            elif owner is not None:
                got = reply if isinstance(reply, list) else [reply]
                for key, expiry in zip(owner, got, strict=True):
                    assert isinstance(expiry, int)
                    expiries[key] = expiry
        out: dict[Key, Entry | None] = {}
        for key, payload in payloads.items():
            expiry = expiries.get(key, -1)  # -2: the key expired between DUMP and the expiry's reading
            out[key] = None if payload is None or expiry == -2 else (payload, -1 if expiry < 0 else expiry)
        return out

    def _write(self, keys: Iterable[Key], snap: dict[Key, Entry]) -> int:
        """Make ``keys`` what ``snap`` holds: deletions first, so what the test added frees its memory
        before anything is restored. A key whose restore is refused for memory (the test made it
        bigger, and memory is still over ``maxmemory``) is deleted, then restored again."""
        keys = sorted(keys)
        errors = self._put(keys, snap, delete_first=False)
        oom = [k for k, err in errors.items() if err is not None and str(err).startswith("OOM")]
        if oom:
            errors.update(self._put(oom, snap, delete_first=True))
        failed = [err for err in errors.values() if err is not None]
        if failed:
            self._gap = "a restore command failed"
            raise RollbackError(f"redis at {self._where()}: restore failed: {failed[0]} ({len(failed)} errors)")
        return len(keys)

    def _put(self, keys: list[Key], snap: dict[Key, Entry], delete_first: bool) -> dict[Key, ReplyError | None]:
        """One pipelined pass over ``keys`` (DELs, then RESTOREs); each key's error, None where it went well.

        ``delete_first`` deletes every key before restoring it (else RESTORE ... REPLACE).
        """
        start = self._db
        cmds: list[Sequence[Arg]] = []
        order: list[Key | None] = []
        for key in keys:
            if delete_first or snap.get(key) is None:
                self._select(key[0], cmds)
                order += [None] * (len(cmds) - len(order))
                cmds.append(("DEL", key[1]))
                order.append(key if snap.get(key) is None else None)
        for key in keys:
            entry = snap.get(key)
            if entry is None:
                continue
            self._select(key[0], cmds)
            order += [None] * (len(cmds) - len(order))
            if entry[1] < 0:
                cmds.append(("RESTORE", key[1], 0, entry[0], "REPLACE"))
            else:
                cmds.append(("RESTORE", key[1], entry[1], entry[0], "REPLACE", "ABSTTL"))
            order.append(key)
        out: dict[Key, ReplyError | None] = {}
        for owner, reply in zip(order, self._run(cmds, start), strict=True):
            if owner is not None:
                out[owner] = reply if isinstance(reply, ReplyError) else None
            elif isinstance(reply, ReplyError):  # a SELECT, or the DEL before a RESTORE
                raise RollbackError(f"redis at {self._where()}: restore failed: {reply}")
        return out

    def _dbs_with_keys(self) -> set[int]:
        assert self._conn is not None
        text = self._call("INFO", "keyspace")
        dbs: set[int] = set()
        if isinstance(text, bytes):
            for line in text.split(b"\r\n"):
                if line.startswith(b"db") and b":" in line:
                    dbs.add(int(line[2 : line.index(b":")]))
        return dbs if self._owned is None else dbs & self._owned

    def _scan_all(self) -> set[Key]:
        assert self._conn is not None
        keys: set[Key] = set()
        for db in sorted(self._dbs_with_keys()):
            self._call("SELECT", db)
            self._db = db
            for kind in (None, "stream"):
                cursor: Any = b"0"
                while True:
                    args: list[Arg] = ["SCAN", cursor, "COUNT", 1000] + (["TYPE", kind] if kind else [])
                    reply = self._call(*args)
                    assert isinstance(reply, list)
                    cursor = reply[0]
                    found = {(db, k) for k in reply[1]}
                    (self._streams if kind else keys).update(found)
                    if cursor == b"0":
                        break
        return keys

    def _resync(self) -> _Delta:
        """Take a whole new snapshot (after a gap); the delta keeps the old one."""
        keys = self._scan_all()
        self._hlls.clear()
        self._hll_heads.clear()
        fetched = self._fetch(keys, probe=keys)
        self._settle()  # before the old snapshot is handed over: a failure here loses nothing
        delta = _Delta()
        delta.full_prev = self._snap
        self._snap = {k: v for k, v in fetched.items() if v is not None}
        return delta

    def _settle(self) -> None:
        """Forget events caused so far (ours), take fresh counters, clear the gap."""
        self._own_window = None
        self._dirty.clear()
        saved = self._on_push
        assert self._conn is not None
        self._conn.on_push = None
        try:
            self._counters = self._read_counters()
        finally:
            self._conn.on_push = saved
        self._gap = None

    # -- the adapter protocol ------------------------------------------------
    @faults.one_line
    def checkpoint(self, label: str | None = None) -> _Level:
        """Mark the current state; costs one round trip plus what changed since the last mark."""
        if self.strategy == "snapshot":
            return self._snapshot_checkpoint(label)
        try:
            return self._checkpoint(label)
        except BaseException:
            self._failed("a checkpoint failed")
            raise

    def _checkpoint(self, label: str | None) -> _Level:
        self._drain()
        if self._flags_pending:
            self._ensure_flags()
            self._flags_pending = False
        if self._config is None or self._config_stale:
            self._config = self._read_config()
        if self._gap is not None:
            delta = self._resync()
        else:
            delta = _Delta()
            if self._dirty:
                fresh = self._fetch(self._dirty, probe=self._dirty & self._hlls)
                for k, v in fresh.items():
                    delta.before[k] = self._snap.get(k)
                    if v is None:
                        self._snap.pop(k, None)
                    else:
                        self._snap[k] = v
                self._dirty.clear()
        delta = _merge(self._pending, delta)
        self._pending = _Delta()
        if self._functions_stale:
            self._functions = self._read_functions()
        if self._users_stale:
            self._users = self._read_users()
        level = _Level(label, delta, self._config, self._functions, self._users)
        self._levels.append(level)
        return level

    def _failed(self, what: str) -> None:
        """After a checkpoint or rollback that failed: the next rollback is a full one, settings are read again."""
        self._gap = self._gap or f"{what} (the server's state is not known)"
        self._config_stale = self._functions_stale = self._users_stale = True

    @faults.one_line
    def rollback(self, token: _Level) -> RestoreReport:
        """Make the server equal to ``token``'s state again; ``token`` stays valid."""
        start = time.perf_counter()
        if not token.alive or token not in self._levels:
            raise RollbackError(f"redis: checkpoint {token.label!r} was released or rolled past")
        if self.strategy == "snapshot":
            return self._snapshot_rollback(token, start)
        try:
            report = self._rollback(token, self._ahead is token)
        except BaseException:
            self._failed("the previous rollback failed")
            raise
        report.seconds = time.perf_counter() - start
        self.last_report = report
        return report

    def _rollback(self, token: _Level, ahead: bool = False) -> RestoreReport:
        self._drain(ahead)
        self._warn_shared(token)
        if self._paused:  # a test's CLIENT PAUSE would hold every write of the restore
            self._call("CLIENT", "UNPAUSE")
            self._paused = False
            if _CLIENT_COUNTER in self._counters:  # Redis 6 counts this one there too: not the test's
                self._counters[_CLIENT_COUNTER] += 1
        self._put_back_users(token.users)  # first: a test may have taken rights from the adapter's own user
        if self._flags_pending:
            self._ensure_flags()
            self._flags_pending = False
        self._put_back_functions(token.functions)
        early, late = self._config_changes(token.config)
        unset = self._set_config(early, token.config)
        keys = set(self._dirty)
        full = self._gap
        snap = self._snap
        idx = self._levels.index(token)
        for delta in [self._pending] + [lv.delta for lv in reversed(self._levels[idx + 1 :])]:
            if delta.full_prev is not None:
                snap = delta.full_prev
                full = full or "a checkpoint after this one was a full resync"
            else:
                for k, v in delta.before.items():
                    if v is None:
                        snap.pop(k, None)
                    else:
                        snap[k] = v
                    keys.add(k)
        for lv in self._levels[idx + 1 :]:
            lv.alive = False
        del self._levels[idx + 1 :]
        self._pending = _Delta()
        self._snap = snap
        self._dirty.clear()
        if full is not None:
            restored = self._full_restore()
            report = RestoreReport("redis", token.label, 0.0, "full", restored, full)
        elif keys:
            self._own_window = keys
            try:
                restored = self._write(keys, snap)
            finally:
                self._own_window = None
            self._hlls.difference_update(k for k in keys if k not in snap)  # deleted: no HyperLogLog
            self._learn_hll_heads(keys & self._hll_heads.keys())  # those restored to an older header
            report = RestoreReport("redis", token.label, 0.0, "incremental", restored)
        else:
            report = RestoreReport("redis", token.label, 0.0, "none", 0)
        unset += self._set_config(late, token.config)
        if unset:
            raise RollbackError(CONFIG_NOT_PUT_BACK.format(where=self._where(), settings="; ".join(unset)))
        if early or late:
            self._config = token.config
        return report

    # -- the probe sent ahead ------------------------------------------------
    @contextlib.contextmanager
    def prefetch(self, token: _Level) -> Iterator[None]:
        """Send the ``INFO commandstats`` the rollback to ``token`` begins with, without reading its reply.

        The rollback in the block reads it as its barrier (what comes before it on the connection
        is every event published until then). A reply no rollback read is read and dropped when the
        block ends; after an error or an interrupt, the connection is dropped instead (the next look
        reconnects and restores fully), so that it is never taken for the reply to a later command.
        """
        conn = self._conn
        if (
            self.strategy != "tracking" or conn is None or conn.closed or self._gone is not None
            or not token.alive or self._ahead is not None
        ):
            yield
            return
        try:
            conn.send([("INFO", "commandstats")])
        except ConnectionLost:  # closed by the send: the rollback reconnects or says the server is gone
            yield
            return
        self._ahead = token
        try:
            yield
        except BaseException:
            if self._ahead is not None:
                self._drop_ahead("a probe sent ahead was not read")
            raise
        if self._ahead is not None:
            try:
                self._ahead_reply()
            except (ConnectionLost, ReplyError) as exc:
                self._drop_ahead(f"a probe sent ahead failed ({exc})")

    def _ahead_reply(self) -> object:
        """The reply to the ``INFO commandstats`` sent ahead (events read on the way count as usual)."""
        assert self._conn is not None
        self._ahead = None
        reply = self._conn.read_reply()
        if isinstance(reply, ReplyError):
            if not _is_busy(reply):
                raise reply
            return self._call("INFO", "commandstats")  # the script is ended first, then it is asked again
        return reply

    def _drop_ahead(self, why: str) -> None:
        """Close the connection a reply is still due on: the next look reconnects and restores fully."""
        self._ahead = None
        self._close_conn()
        self._gap = self._gap or f"{why}; keyspace events may have been missed"
        self._config_stale = self._functions_stale = self._users_stale = True

    # -- server settings -----------------------------------------------------
    def _read_config(self) -> dict[bytes, bytes]:
        """Every server setting (``CONFIG GET *``)."""
        reply = self._call("CONFIG", "GET", "*")
        if isinstance(reply, dict):
            config = {bytes(k): bytes(v) for k, v in reply.items() if isinstance(k, bytes) and isinstance(v, bytes)}
        elif isinstance(reply, list):
            config = dict(zip(reply[::2], reply[1::2], strict=True))
        else:
            raise ReplyError(f"CONFIG GET * gave {reply!r}")
        if "config" in self._counters:  # Redis 6 counts CONFIG GET with CONFIG SET: not the test's
            self._absorb_config_counters()
        self._config_stale = False
        return config

    def _config_changes(self, target: dict[bytes, bytes] | None) -> tuple[list[bytes], list[bytes]]:
        """The settings that differ from ``target``: those to set before the data, and those after.

        Before: everything, a higher (or no) ``maxmemory`` first. After: a lower
        ``maxmemory`` and an evicting ``maxmemory-policy``, which with the test's
        data still there could evict keys the restore does not write.
        """
        if target is None:
            return [], []
        now = self._config if self._config is not None and not self._config_stale else self._read_config()
        self._config = now
        if now is target or now == target:
            self._config = target
            return [], []
        changed = sorted(k for k, v in target.items() if now.get(k) != v)
        late: list[bytes] = []
        limit_now, limit_then = _int(now.get(b"maxmemory")), _int(target.get(b"maxmemory"))
        if b"maxmemory" in changed and limit_then and (not limit_now or limit_then < limit_now):
            late.append(b"maxmemory")
        if b"maxmemory-policy" in changed and target[b"maxmemory-policy"] != b"noeviction":
            late.append(b"maxmemory-policy")
        first = [k for k in (b"maxmemory", b"maxmemory-policy") if k in changed and k not in late]
        early = first + [k for k in changed if k not in first and k not in late]
        return early, late

    def _set_config(self, names: list[bytes], target: dict[bytes, bytes] | None) -> list[str]:
        """``CONFIG SET`` each of ``names`` to its value in ``target``; the lines of those that failed."""
        if not names or target is None:
            return []
        cmds: list[Sequence[Arg]] = []
        for name in names:
            value = target[name]
            if name == _FLAGS_SETTING:  # the checkpoint's are widened already; never narrower than tracking needs
                value = _union_flags(value.decode(), _NEEDED_FLAGS).encode()
            cmds.append(("CONFIG", "SET", name, value))
        replies = self._run(cmds, self._db)
        self._absorb_config_counters()
        failed = [f"{n.decode()} {target[n].decode()!r} ({r})" for n, r in zip(names, replies, strict=True)
                  if isinstance(r, ReplyError)]
        if failed:
            self._config_stale = True
        return failed

    def _absorb_config_counters(self, names: Sequence[str] = ("config|set", "config")) -> None:
        """The adapter's own commands moved these counters: not a change the next barrier should see."""
        fresh = self._read_counters()
        for name in names:
            if name in fresh:
                self._counters[name] = fresh[name]

    # -- functions and ACL users -----------------------------------------------
    def _read_functions(self) -> bytes | None:
        """``FUNCTION DUMP`` (None: Redis < 7, which has no functions, or a server that refuses it)."""
        self._functions_stale = False
        if not self._has_pexpiretime:  # Redis 7 brought both
            return None
        try:
            reply = self._call("FUNCTION", "DUMP")
        except ReplyError:
            return None
        return reply if isinstance(reply, bytes) else None

    def _read_users(self) -> dict[bytes, list[bytes]] | None:
        """Every ACL user's rules (``ACL LIST``), by name (None: a server that refuses it)."""
        self._users_stale = False
        try:
            reply = self._call("ACL", "LIST")
        except ReplyError:
            return None
        if "acl" in self._counters:  # Redis 6 counts ACL LIST with ACL SETUSER: not the test's
            self._absorb_config_counters(("acl",))
        return users_of(reply)

    def _put_back_functions(self, target: bytes | None) -> None:
        """The functions of ``target`` again, if a FUNCTION command changed them (FUNCTION RESTORE ... FLUSH)."""
        if target is None or (not self._functions_stale and self._functions is target):
            return
        now = self._read_functions() if self._functions_stale else self._functions
        if now != target:
            reply = self._run([("FUNCTION", "RESTORE", target, "FLUSH")], self._db)[0]
            self._absorb_config_counters(FUNCTION_COMMANDS)
            if isinstance(reply, ReplyError):
                self._functions_stale = True
                raise RollbackError(f"redis at {self._where()}: the functions could not be put back: {reply}")
        self._functions = target

    def _put_back_users(self, target: dict[bytes, list[bytes]] | None) -> None:
        """The ACL users of ``target`` again, if an ACL command changed them: users the test added are
        deleted, those it changed or deleted set again (``ACL SETUSER name reset <their rules>``)."""
        if target is None or (not self._users_stale and self._users is target):
            return
        now = self._read_users() if self._users_stale else self._users
        if now is None:
            return
        cmds = user_commands(now, target, selectors=self._has_pexpiretime)
        if not cmds:
            self._users = target
            return
        replies = self._run(cmds, self._db)
        self._absorb_config_counters(ACL_COMMANDS)
        failed = [f"{c[2].decode(errors='replace')!r} ({r})"  # type: ignore[union-attr]
                  for c, r in zip(cmds, replies, strict=True) if isinstance(r, ReplyError)]
        if failed:
            self._users_stale = True
            raise RollbackError(f"redis at {self._where()}: ACL users could not be put back: {', '.join(failed)}")
        after = self._read_users() or {}
        _warn_users(after, target)
        self._users = after if after != target else target

    def _full_restore(self) -> int:
        assert self._conn is not None
        self._own_window = None
        self._hll_heads.clear()  # the snapshot may be an older one: unknown, so restored after a PFCOUNT
        stale: set[Key] = set()
        if self._others is None:
            dbs = self._dbs_with_keys() | {db for db, _ in self._snap}
            cmds: list[Sequence[Arg]] = []
            start = self._db
            for db in sorted(dbs):
                self._select(db, cmds)
                cmds.append(("FLUSHDB",))
            failed = [r for r in self._run(cmds, start) if isinstance(r, ReplyError)]
            if failed:
                raise RollbackError(f"redis at {self._where()}: restore failed: {failed[0]}")
        else:  # a FLUSHDB would make every other worker sharing the server restore in full, and so on
            stale = self._scan_all() - self._snap.keys()
        saved = self._conn.on_push
        self._conn.on_push = None
        try:
            n = self._write(stale | self._snap.keys(), self._snap)
        finally:
            self._conn.on_push = saved
        # the HyperLogLogs among the strings written back (a DUMP payload begins with its RDB type, 0 for a string)
        self._learn_hll_heads({k for k, (payload, _) in self._snap.items() if payload[:1] == b"\x00"})
        self._settle()
        return n

    def release(self, token: _Level) -> None:
        """Forget ``token``; its before-images move to the next newer point."""
        if not token.alive or token not in self._levels:
            return
        idx = self._levels.index(token)
        if self.strategy == "snapshot":
            pass  # each level holds its own full copy, not a delta: nothing to hand on
        elif idx == len(self._levels) - 1:
            self._pending = _merge(token.delta, self._pending)
        else:
            nxt = self._levels[idx + 1]
            nxt.delta = _merge(token.delta, nxt.delta)
        token.alive = False
        del self._levels[idx]

    @faults.one_line
    def changes(self, token: _Level) -> Changes:
        """Keys added, modified and removed since ``token`` (``db:key`` strings)."""
        if self.strategy == "snapshot":
            return self._snapshot_changes(token)
        self._drain()
        idx = self._levels.index(token)
        before: dict[Key, Entry | None] = {}
        complete = self._gap is None
        full_prev: dict[Key, Entry] | None = None
        for delta in [self._pending] + [lv.delta for lv in reversed(self._levels[idx + 1 :])]:
            if delta.full_prev is not None:
                complete, full_prev = False, delta.full_prev
            before.update(delta.before)
        touched = set(before) | self._dirty
        current = self._fetch(touched) if touched else {}
        added, modified, removed = set(), set(), set()
        for k in touched:
            old = before[k] if k in before else self._snap.get(k)
            if full_prev is not None and k not in before:
                old = full_prev.get(k)
            new = current.get(k)
            name = f"{k[0]}:{k[1].decode(errors='backslashreplace')}"
            if old is None and new is not None:
                added.add(name)
            elif old is not None and new is None:
                removed.add(name)
            elif old is not None and new is not None and (old[0] != new[0] or old[1] != new[1]):
                modified.add(name)
        return Changes("redis", frozenset(added), frozenset(modified), frozenset(removed), complete)

    @faults.one_line
    def observe(self) -> Observation:
        """The whole logical state: every key's type, value and absolute expiry; functions and ACL users."""
        state: dict[Any, Any] = redis_state(self._redis_client, self._owned, 1000)
        state.update(server_objects(self._redis_client(0)))
        return Observation("redis", state)

    def _redis_client(self, db: int) -> Any:
        client = self._clients.get(db)
        if client is None:
            import redis

            p = self._params
            client = redis.Redis(
                host=p["host"],
                port=p["port"],
                db=db,
                username=p["username"],
                password=p["password"],
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            self._clients[db] = client
        return client

    def close(self) -> None:
        """Drop the connection; put back the server's own notification flags (unless a shared record keeps them)."""
        if self._conn is not None and self._original_flags is not None and self._flags_record is None:
            try:
                self._conn.call("CONFIG", "SET", "notify-keyspace-events", self._original_flags)
            except (ConnectionLost, ReplyError):
                pass
        self._close_conn()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._levels.clear()
        self._snap = {}

    def _warn_shared(self, token: _Level) -> None:
        """On a server shared by xdist workers: say what this test's time saw beyond the worker's databases."""
        if self._others is None:
            return
        if self._outside:
            dbs = sorted(self._outside)
            names = sorted(f"{db}:{k.decode(errors='backslashreplace')}" for db in dbs for k in self._outside[db])
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            self._outside = {}
            warnings.warn(
                RollbackWarning(OUTSIDE_WRITES.format(dbs=", ".join(map(str, dbs)), keys=shown)), stacklevel=3
            )
        if self._gap and "ran (" in self._gap:
            warnings.warn(RollbackWarning(SHARED_GAP.format(what=self._gap.split(" (")[0])), stacklevel=3)

    # -- the crash journal ---------------------------------------------------
    def save_journal(self, path: str | os.PathLike[str]) -> None:
        """Write to the directory ``path`` what puts the server back as it was at this adapter's first checkpoint.

        Called once, right after that checkpoint, for a server the plugin did not
        start: the keys (from the snapshot already in memory), the configuration
        with the server's own notification flags, the functions and ACL users the
        checkpoint read, and the databases that are ours.
        """
        from pathlib import Path

        from .redis_journal import FLAGS_FILE, KEYS_FILE, read_config, write_config, write_keys, write_objects

        if not self._levels:
            raise RollbackError("redis: save_journal() needs a checkpoint first")
        where = Path(path)
        snapshot = self._snap if self.strategy == "tracking" else (self._levels[0].delta.full_prev or {})
        if self._conn is None:  # the snapshot strategy reads with redis-py
            config = read_config(self._redis_client(0))
        else:
            try:  # the settings this checkpoint read already, else one CONFIG GET on the adapter's connection
                raw = self._config if self._config is not None and not self._config_stale else self._read_config()
            except ReplyError:  # a server without CONFIG
                raw = {}
            config = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        if self._original_flags is not None:
            config["notify-keyspace-events"] = self._original_flags
        write_config(where, config, self._owned)
        first = self._levels[0]
        write_objects(where, first.functions, first.users)
        _first_flags(str(where / FLAGS_FILE), config.get("notify-keyspace-events", ""))
        write_keys(where / KEYS_FILE, snapshot)

    # -- the snapshot strategy -----------------------------------------------
    def _snapshot_keys(self) -> dict[Key, Entry]:
        state: dict[Key, Entry] = {}
        for db in self._snapshot_dbs():
            client = self._redis_client(db)
            if self._expiry_mode is None:
                self._expiry_mode = expiry_mode(client)
            names = list(client.scan_iter(count=1000))
            for i in range(0, len(names), _BATCH):
                chunk = names[i : i + _BATCH]
                pipe = client.pipeline(transaction=False)
                for name in chunk:
                    pipe.dump(name)
                queue_expiries(pipe, chunk, self._expiry_mode)
                replies = pipe.execute()
                expiries = take_expiries(replies[len(chunk) :], len(chunk), self._expiry_mode)
                for name, payload, expire in zip(chunk, replies[: len(chunk)], expiries, strict=True):
                    if payload is not None and expire != -2:
                        state[(db, name)] = (payload, -1 if expire < 0 else expire)
        return state

    def _snapshot_dbs(self) -> list[int]:
        if self._owned is not None:
            candidates = sorted(self._owned)
        else:
            try:
                return sorted(int(k[2:]) for k in self._redis_client(0).info("keyspace"))
            except Exception:  # servers without INFO (fakeredis): look at the usual 16
                candidates = list(range(16))
        return [db for db in candidates if self._redis_client(db).dbsize()]

    def _snapshot_checkpoint(self, label: str | None) -> _Level:
        delta = _Delta()
        delta.full_prev = self._snapshot_keys()
        functions, users = self._snapshot_objects()
        level = _Level(label, delta, functions=functions, users=users)
        self._levels.append(level)
        return level

    def _snapshot_objects(self) -> tuple[bytes | None, dict[bytes, list[bytes]] | None]:
        """The server's functions (``FUNCTION DUMP``) and ACL users, each None where the server has none."""
        client = self._redis_client(0)
        try:
            functions = client.execute_command("FUNCTION", "DUMP")
        except Exception:  # Redis < 7, fakeredis
            functions = None
        try:
            users: dict[bytes, list[bytes]] | None = users_of(client.execute_command("ACL", "LIST"))
        except Exception:
            users = None
        return (functions if isinstance(functions, bytes) else None), users or None

    def _snapshot_put_back_objects(self, token: _Level) -> None:
        functions, users = self._snapshot_objects()
        client = self._redis_client(0)
        if token.functions is not None and functions != token.functions:
            client.execute_command("FUNCTION", "RESTORE", token.functions, "FLUSH")
        if token.users is not None and users is not None and users != token.users:
            for cmd in user_commands(users, token.users, selectors=functions is not None):
                client.execute_command(*cmd)
            _warn_users(users_of(client.execute_command("ACL", "LIST")), token.users)

    def _snapshot_rollback(self, token: _Level, start: float) -> RestoreReport:
        self._snapshot_put_back_objects(token)
        target = token.delta.full_prev or {}
        current = self._snapshot_keys()
        count = 0
        by_db: dict[int, list[bytes]] = {}
        for db, name in set(current) | set(target):
            if current.get((db, name)) != target.get((db, name)):
                by_db.setdefault(db, []).append(name)
        for db, names in by_db.items():
            pipe = self._redis_client(db).pipeline(transaction=False)
            now = int(time.time() * 1000)
            for name in names:
                entry = target.get((db, name))
                if entry is None:
                    pipe.delete(name)
                elif entry[1] < 0:
                    pipe.restore(name, 0, entry[0], replace=True)
                elif entry[1] > now:  # RESTORE ... ABSTTL is not everywhere: set the exact expiry after
                    pipe.restore(name, 0, entry[0], replace=True)
                    pipe.pexpireat(name, entry[1])
                else:
                    pipe.delete(name)
                count += 1
            pipe.execute()
        for lv in self._levels[self._levels.index(token) + 1 :]:
            lv.alive = False
        del self._levels[self._levels.index(token) + 1 :]
        report = RestoreReport("redis", token.label, time.perf_counter() - start, "full", count, "snapshot strategy")
        self.last_report = report
        return report

    def _snapshot_changes(self, token: _Level) -> Changes:
        target = token.delta.full_prev or {}
        current = self._snapshot_keys()

        def fmt(k: Key) -> str:
            return f"{k[0]}:{k[1].decode(errors='backslashreplace')}"

        return Changes(
            "redis",
            frozenset(fmt(k) for k in current.keys() - target.keys()),
            frozenset(fmt(k) for k in current.keys() & target.keys() if current[k] != target[k]),  # value or expiry
            frozenset(fmt(k) for k in target.keys() - current.keys()),
        )


def auth_reason(exc: BaseException) -> str:
    """Why the server refused the credentials: a wrong password, or none given."""
    text = str(exc)
    return next((why for word, why in _AUTH_REASONS if word in text), faults.reason(exc))


def is_auth_error(exc: ReplyError) -> bool:
    """True when the server's error reply refuses the credentials (or wants some)."""
    return str(exc).startswith(_AUTH_ERRORS)


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or getattr(exc, "timed_out", False) or type(exc).__name__ == "TimeoutError"


def _is_fault(exc: BaseException) -> bool:
    """True for the errors of a server that is gone, frozen or refuses the credentials (not of a command)."""
    if isinstance(exc, ReplyError):
        return is_auth_error(exc)
    if isinstance(exc, (ConnectionLost, OSError)) or _timed_out(exc):
        return True
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, redis.ConnectionError)


def _first_flags(record: str, current: str) -> str:
    """The server's flags from before any process sharing ``record`` changed them (called under its lock).

    ``current`` becomes the record unless another process wrote it first.
    """
    try:
        with open(record) as fh:
            return fh.read()
    except FileNotFoundError:
        with os.fdopen(os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(current)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the flags are widened
        return current


def put_back_flags(record: str, url: str) -> None:
    """Set the ``notify-keyspace-events`` kept in ``record`` on the server at ``url``; remove the record and its lock.

    Raises ``OSError``, ``ConnectionLost`` or ``ReplyError`` when that fails.
    """
    with open(record) as fh:
        flags = fh.read()
    p = parse_url(url)
    conn = Resp3Connection(p["host"], p["port"], username=p["username"], password=p["password"])
    try:
        conn.call("CONFIG", "SET", "notify-keyspace-events", flags)
    finally:
        conn.close()
    os.unlink(record)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{record}.lock")


def users_of(reply: object) -> dict[bytes, list[bytes]]:
    """The rules of each ACL user, by name, from the reply to ``ACL LIST``."""
    users: dict[bytes, list[bytes]] = {}
    for line in reply if isinstance(reply, list) else []:
        words = acl_words(line if isinstance(line, bytes) else str(line).encode())
        if len(words) >= 2 and words[0] == b"user":
            users[words[1]] = words[2:]
    return users


def user_commands(
    now: dict[bytes, list[bytes]], target: dict[bytes, list[bytes]], selectors: bool
) -> list[Sequence[Arg]]:
    """The ACL commands that make the users ``now`` those of ``target``: DELUSER of the users added,
    SETUSER of the others that differ (their rules cleared first; ``selectors``: Redis 7 has them)."""
    cmds: list[Sequence[Arg]] = [("ACL", "DELUSER", name) for name in sorted(now.keys() - target.keys())]
    # not RESET: it also sets sanitize-payload, which the default user has not (nor its opposite)
    clear: tuple[str, ...] = ("resetpass", "resetkeys", "resetchannels", "off", "-@all")
    clear += ("clearselectors",) if selectors else ()
    cmds += [("ACL", "SETUSER", name, *clear, *rules) for name, rules in sorted(target.items())
             if now.get(name) != rules]
    return cmds


def _warn_users(after: dict[bytes, list[bytes]], target: dict[bytes, list[bytes]]) -> None:
    """A RollbackWarning naming the users still not as at the checkpoint (a rule no ACL SETUSER can take
    away: the default user's sanitize-payload)."""
    differ = sorted(name for name in set(after) | set(target) if after.get(name) != target.get(name))
    if not differ:
        return

    def rules(users: dict[bytes, list[bytes]], name: bytes) -> str:
        return repr(b" ".join(users[name]).decode(errors="replace")) if name in users else "absent"

    shown = "; ".join(
        f"{n.decode(errors='replace')!r}: {rules(target, n)} at the checkpoint, now {rules(after, n)}" for n in differ
    )
    warnings.warn(RollbackWarning(ACL_NOT_PUT_BACK.format(users=shown)), stacklevel=4)


def acl_words(line: bytes) -> list[bytes]:
    """The words of an ``ACL LIST`` line; a selector in parentheses (Redis 7) is one word."""
    words: list[bytes] = []
    depth = 0
    for part in line.split(b" "):
        if depth:
            words[-1] += b" " + part
        else:
            words.append(part)
        depth += part.count(b"(") - part.count(b")")
    return [w for w in words if w]


def _is_busy(reply: object) -> bool:
    """A ``BUSY`` error: a script or function has run past busy-reply-threshold (not ``BUSYKEY``)."""
    return isinstance(reply, ReplyError) and str(reply).startswith("BUSY ")


def _int(value: bytes | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _union_flags(current: str, needed: str) -> str:
    flags = current
    for f in needed:
        if f not in flags:
            flags += f
    return flags


def expiry_mode(client: Any) -> str:
    """How to read absolute expiries on ``client``'s server.

    ``"pexpiretime"`` (Redis 7), ``"script"`` (:data:`EXPIRY_SCRIPT`: Redis < 7, exact) or
    ``"pttl"`` (no Lua either: the server's clock plus ``PTTL``, which may be a millisecond off).
    """
    try:
        client.execute_command("PEXPIRETIME", "pytest-rollback:probe")
        return "pexpiretime"
    except Exception:
        pass
    try:
        client.eval(EXPIRY_SCRIPT, 1, "pytest-rollback:probe")
        return "script"
    except Exception:
        return "pttl"


def queue_expiries(pipe: Any, names: Sequence[bytes], mode: str) -> None:
    """Add to the redis-py pipeline ``pipe`` what reads the absolute expiry of each of ``names``."""
    if mode == "pexpiretime":
        for name in names:
            pipe.pexpiretime(name)
    elif mode == "script":
        if names:
            pipe.eval(EXPIRY_SCRIPT, len(names), *names)
    else:
        pipe.time()
        for name in names:
            pipe.pttl(name)


def take_expiries(replies: Sequence[Any], count: int, mode: str) -> list[int]:
    """The ``count`` absolute expiries (ms; -1 none, -2 no key) from the replies of :func:`queue_expiries`."""
    if mode == "pexpiretime":
        return [int(r) for r in replies[:count]]
    if mode == "script":
        return [int(r) for r in replies[0]] if count else []
    sec, usec = replies[0]
    now = int(sec) * 1000 + int(usec) // 1000
    return [int(r) if int(r) < 0 else now + int(r) for r in replies[1 : count + 1]]


def redis_state(
    client_for_db: Any, dbs: Iterable[int] | None = None, expiry_resolution_ms: int = 1
) -> dict[tuple[int, bytes], Any]:
    """The logical content of a Redis server, comparable with ``==``.

    Each key maps to ``(type, value, expiry)`` where the value is normalised per
    type (sets sorted, hashes as sorted items, streams with entries and consumer
    groups) and expiry is the absolute expiry in ms (or -1), exact on Redis 7
    (``PEXPIRETIME``) and 6.2 (:data:`EXPIRY_SCRIPT`). A server with neither
    (fakeredis without Lua) gives the server's clock plus ``PTTL``, a millisecond
    or so off: ``expiry_resolution_ms`` then coarsens it (in units of that many
    ms) so that two readings compare equal.
    """
    state: dict[tuple[int, bytes], Any] = {}
    if dbs is None:
        first = client_for_db(0)
        try:
            dbs = [int(k[2:]) for k in first.info("keyspace")]
        except Exception:
            dbs = list(range(16))
    for db in sorted(dbs):
        r = client_for_db(db)
        mode = expiry_mode(r)
        keys = list(dict.fromkeys(r.scan_iter(count=1000)))
        for i in range(0, len(keys), 500):  # a round trip per batch, not per key
            chunk = keys[i : i + 500]
            pipe = r.pipeline(transaction=False)
            for key in chunk:
                pipe.type(key)
            kinds = [k.decode() if isinstance(k, bytes) else k for k in pipe.execute()]
            pipe = r.pipeline(transaction=False)
            for key, kind in zip(chunk, kinds, strict=True):
                _read_value(pipe, key, kind)
            queue_expiries(pipe, chunk, mode)
            replies = pipe.execute(raise_on_error=False)
            at = 0
            values: list[list[Any]] = []
            for kind in kinds:
                width = 2 if kind == "stream" else 1
                values.append(replies[at : at + width])
                at += width
            expiries = take_expiries(replies[at:], len(chunk), mode)
            for key, kind, parts, expiry in zip(chunk, kinds, values, expiries, strict=True):
                if kind is None or kind == "none" or expiry == -2:
                    continue
                if mode == "pttl" and expiry >= 0 and expiry_resolution_ms > 1:
                    expiry = round(expiry / expiry_resolution_ms)
                state[(db, key)] = (kind, _normalise(kind, parts), expiry)
    return state


def server_objects(client: Any) -> dict[tuple[str, bytes], Any]:
    """What a Redis server holds beside its keys, comparable with ``==``: each function library
    (``("function library", name)``: engine, code, functions with their flags) and ACL user
    (``("acl user", name)``: the rules of ``ACL LIST``). A server without them gives none."""
    objects: dict[tuple[str, bytes], Any] = {}
    try:
        libraries = client.execute_command("FUNCTION", "LIST", "WITHCODE")
    except Exception:  # Redis < 7, fakeredis
        libraries = []
    for library in libraries:
        lib = _pairs(library)
        functions = tuple(sorted(
            (f[b"name"], f.get(b"description"), tuple(sorted(f.get(b"flags") or ())))
            for f in (_pairs(x) for x in lib.get(b"functions") or ())
        ))
        objects[("function library", lib[b"library_name"])] = (lib.get(b"engine"), lib.get(b"library_code"), functions)
    try:
        users = client.execute_command("ACL", "LIST")
    except Exception:  # a server without ACL, or a user not allowed to read it
        users = []
    for line in users:
        words = acl_words(line if isinstance(line, bytes) else str(line).encode())
        if len(words) >= 2:
            objects[("acl user", words[1])] = b" ".join(words[2:])
    return objects


def _pairs(reply: Any) -> dict[bytes, Any]:
    """A RESP2 list of alternating names and values (or a RESP3 map) as a dict."""
    if isinstance(reply, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in reply.items()}
    return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in zip(reply[::2], reply[1::2], strict=True)}


def _read_value(pipe: Any, key: bytes, kind: str) -> None:
    if kind == "string":
        pipe.get(key)
    elif kind == "list":
        pipe.lrange(key, 0, -1)
    elif kind == "set":
        pipe.smembers(key)
    elif kind == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == "hash":
        pipe.hgetall(key)
    elif kind == "stream":
        pipe.xrange(key)
        pipe.execute_command("XINFO", "STREAM", key, "FULL")
    else:
        pipe.dump(key)


def _normalise(kind: str, parts: list[Any]) -> Any:
    value = parts[0]
    if kind == "list":
        return tuple(value)
    if kind == "set":
        return tuple(sorted(value))
    if kind == "zset":
        return tuple(value)
    if kind == "hash":
        return tuple(sorted(value.items()))
    if kind == "stream":
        entries = tuple((i, tuple(sorted(f.items()))) for i, f in value)
        return (entries, None if isinstance(parts[1], Exception) else _stream_details(parts[1]))
    return value


#: What XINFO STREAM FULL shows that is not the stream's state: times (of delivery, of a consumer's
#: last command) and how the server lays the stream out in memory.
_STREAM_VOLATILE = frozenset({b"seen-time", b"active-time", b"radix-tree-keys", b"radix-tree-nodes", b"entries"})


def _stream_details(reply: Any) -> Any:
    """A stream's metadata (last id, counts), consumer groups, consumers and pending entries (without times)."""
    try:
        return _stream_parts(reply)
    except (TypeError, KeyError, ValueError, IndexError):  # a server that answers XINFO STREAM FULL otherwise
        return repr(reply)


def _stream_parts(reply: Any) -> Any:
    info = _pairs(reply)
    groups = []
    for group in info.get(b"groups") or ():
        g = _pairs(group)
        consumers = tuple(sorted(
            (c[b"name"], c.get(b"pel-count"), tuple((p[0], p[-1]) for p in c.get(b"pending") or ()))
            for c in (_pairs(x) for x in g.get(b"consumers") or ())
        ))
        pending = tuple((p[0], p[1], p[-1]) for p in g.get(b"pending") or ())  # id, consumer, deliveries
        rest = tuple(sorted((k, v) for k, v in g.items() if k not in {b"consumers", b"pending"} | _STREAM_VOLATILE))
        groups.append((rest, pending, consumers))
    meta = tuple(sorted((k, v) for k, v in info.items() if k != b"groups" and k not in _STREAM_VOLATILE))
    return (meta, tuple(sorted(groups)))
