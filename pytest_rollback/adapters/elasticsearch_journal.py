"""Elasticsearch's part of the crash journal: the cluster as it was before the run.

The documents of an index before the run are already kept on the server, in the
snapshot the adapter's first checkpoint cloned (``.pytest-rollback-<id>-<n>``,
hidden and write-blocked), as durable as the index itself; copying them to disk
would cost what the data weighs. The journal (``elasticsearch.json``, written by
``ElasticsearchAdapter.save_journal``) holds the rest: which snapshot holds which
index, the index's aliases, settings and fingerprint, the templates and cluster
settings, and the adapter's id, which names every index it made.

The id of every adapter of the run (its own, each xdist worker's) is written
before that adapter starts (``write_ident``), so a run killed while taking a
checkpoint still leaves the names of its leftovers. :func:`recover` clones the indices back from their snapshots (only
those that changed), puts back aliases, settings, templates and cluster
settings, and deletes every index the dead run made.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

JOURNAL_FILE = "elasticsearch.json"
IDENT_FILE = "elasticsearch-id"  # one file per adapter: elasticsearch-id.<who>


def write_ident(path: Path, ident: str, who: str = "run") -> None:
    """Record the id of an adapter about to start (it names its snapshots and its probe index).

    ``who`` tells adapters of one run apart: the run's own, and each xdist worker's.
    """
    (path / f"{IDENT_FILE}.{who}").write_text(ident)


def read_idents(path: Path) -> list[str]:
    """Every adapter id recorded in the journal at ``path``."""
    return sorted({p.read_text().strip() for p in path.glob(f"{IDENT_FILE}.*")} - {""})


def write(path: Path, data: dict[str, Any]) -> None:
    from ..services.state import write_json

    write_json(path / JOURNAL_FILE, data)


def recover(path: Path, url: str, restore_data: bool = True, timeout: float = 30.0) -> str:
    """Put the cluster at ``url`` back as the journal in ``path`` describes; return what was done, in words."""
    from .elasticsearch import ElasticsearchAdapter

    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((path / JOURNAL_FILE).read_text())
    idents = read_idents(path)
    ident = str(data.get("id") or (idents[0] if idents else ""))
    words: list[str] = []
    if not ident:
        return "nothing to put back"
    adapter = ElasticsearchAdapter(
        url,
        prefix=str(data.get("prefix") or ""),
        reserved=str(data.get("reserved") or ".pytest-rollback-"),
        park=str(data.get("park") or "hidden"),
        ident=ident,
        timeout=timeout,
    )
    try:
        if restore_data and data.get("indices") is not None:
            level = adapter.load_journal(data)
            report = adapter.rollback(level)
            words.append(f"{len(data['indices'])} indices ({report.restored} put back)")
        removed = adapter.remove_leftovers(idents)
        if removed:
            words.append(f"deleted {removed} snapshot indices")
    finally:
        adapter.close()
    return "; ".join(words) or "nothing to put back"
