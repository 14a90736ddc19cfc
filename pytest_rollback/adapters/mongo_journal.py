"""MongoDB's part of the crash journal: the databases as they were before the run, on disk.

Written once, right after the run's first checkpoint of a server it did not
start (``MongoAdapter.save_journal``), from the snapshot the adapter already
holds in memory:

* ``mongo-collections.bson``: per collection, a header document (database,
  name, options, index specifications, number of documents) followed by its
  documents as raw BSON (types and field order exact);
* ``mongo.json``: which databases are the run's, and the adapter's own database.

:func:`recover` makes the databases equal to that again (a collection that is
still the same is patched document by document, others are rebuilt with their
options and indexes), and drops the adapter's own database, the run's leftover.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

COLLECTIONS_FILE = "mongo-collections.bson"
META_FILE = "mongo.json"
_RAW = bson.CodecOptions(document_class=RawBSONDocument)
_SON = bson.CodecOptions(document_class=bson.SON)

NS = tuple[str, str]
Meta = tuple[dict[str, Any], list[dict[str, Any]]]
Docs = dict[bytes, RawBSONDocument]


def write(
    path: Path, meta: Mapping[NS, Meta], docs: Mapping[NS, Docs], dbs: Iterable[str] | None, hidden_db: str
) -> None:
    """Write the snapshot (``meta`` and ``docs`` per collection) and what is ours to ``path``, durably."""
    from ..services.state import write_json

    tmp = path / (COLLECTIONS_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        for ns, (options, indexes) in meta.items():
            these = docs.get(ns, {})
            header = {"db": ns[0], "coll": ns[1], "options": options, "indexes": indexes, "count": len(these)}
            fh.write(bson.encode(header))
            fh.write(b"".join(doc.raw for doc in these.values()))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / COLLECTIONS_FILE)
    write_json(path / META_FILE, {"dbs": sorted(dbs) if dbs is not None else None, "hidden_db": hidden_db})


def read(path: Path) -> tuple[dict[NS, Meta], dict[NS, Docs]]:
    """The snapshot :func:`write` wrote."""
    from .mongo import _idkey

    meta: dict[NS, Meta] = {}
    docs: dict[NS, Docs] = {}
    with open(path / COLLECTIONS_FILE, "rb") as fh:
        items = bson.decode_file_iter(fh, codec_options=_RAW)
        for raw in items:
            header = bson.decode(raw.raw, codec_options=_SON)
            ns = (str(header["db"]), str(header["coll"]))
            meta[ns] = (dict(header["options"]), [dict(spec) for spec in header["indexes"]])
            these: Docs = {}
            for _ in range(int(header["count"])):
                doc = next(items)
                these[_idkey(doc["_id"])] = doc
            docs[ns] = these
    return meta, docs


def recover(path: Path, url: str, restore_data: bool = True, timeout: float = 30.0) -> str:
    """Put the databases at ``url`` back as the journal in ``path`` describes; return what was done, in words."""
    from pymongo import MongoClient

    from .mongo import MongoAdapter, _Level

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((path / META_FILE).read_text())
    hidden_db = str(info.get("hidden_db") or "__pytest_rollback__")
    words: list[str] = []
    if restore_data and (path / COLLECTIONS_FILE).exists():
        meta, docs = read(path)
        adapter = MongoAdapter(url, dbs=info.get("dbs"), hidden_db=hidden_db, strategy="counters", timeout=timeout)
        try:
            adapter._meta, adapter._docs = meta, docs
            adapter._gap = "recovering from the journal"
            level = _Level("the journal")
            adapter._levels.append(level)
            report = adapter.rollback(level)
        finally:
            adapter.close()
        count = sum(len(d) for d in docs.values())
        dbs = sorted({db for db, _ in meta})
        words.append(
            f"{count} documents in {len(meta)} collections of {', '.join(dbs) or 'no database'} "
            f"({report.restored} written)"
        )
    client: MongoClient[Any] = MongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000))
    try:
        if hidden_db in client.list_database_names():
            client.drop_database(hidden_db)
            words.append(f"dropped {hidden_db}")
    finally:
        client.close()
    return "; ".join(words) or "nothing to put back"
