"""Keeping each ``branch_from`` tree on one pytest-xdist worker.

Workers resolve the trees at collection and write, to the run's shared
directory, the root of the tree of every test in one. The controller then
schedules with a subclass of xdist's own scheduling whose units of work keep a
tree whole:

* ``--dist load`` (what ``-n`` uses by default): xdist's scope scheduling where
  a tree is one unit and every other test is a unit of its own, so it
  distributes like ``load`` otherwise;
* ``--dist loadscope`` and ``--dist loadfile``: a tree joins the unit (class or
  module, file) of its root, so a child in another class or module goes with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOTS_FILE = "branch-roots-{worker}.tree"  # JSON; not *.json, which the controller reads as servers


def write_roots(shared_dir: str, worker: str, roots: dict[str, str]) -> None:
    """Record (atomically) the root of the tree of every test of this worker's collection in one."""
    path = Path(shared_dir) / ROOTS_FILE.format(worker=worker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(roots))
    os.replace(tmp, path)


def read_roots(shared_dir: str) -> dict[str, str]:
    """Every worker's recorded trees, node id -> root node id (they collect the same tests, so they agree)."""
    roots: dict[str, str] = {}
    for path in sorted(Path(shared_dir).glob(ROOTS_FILE.format(worker="*"))):
        roots.update(json.loads(path.read_text()))
    return roots


def make_scheduler(config: Any, log: Any, shared_dir: str, dist: str) -> Any:
    """xdist's scheduling for ``dist`` (load, loadscope, loadfile), with every ``branch_from`` tree in one unit."""
    from xdist.scheduler import LoadFileScheduling, LoadScopeScheduling

    base = LoadFileScheduling if dist == "loadfile" else LoadScopeScheduling

    class BranchScheduling(base):  # type: ignore[misc, valid-type]
        """xdist's own scheduling, except that each ``branch_from`` tree goes whole to one worker."""

        roots: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.roots is None:  # workers wrote their files before reporting their collection
                self.roots = read_roots(shared_dir)
            root = self.roots.get(nodeid)
            if dist == "load":
                return f"{root} (branch tree)" if root is not None else nodeid
            return str(super()._split_scope(root if root is not None else nodeid))

    return BranchScheduling(config, log)
