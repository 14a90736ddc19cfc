"""Keeping each ``branch_from`` tree on one pytest-xdist worker.

Workers resolve the trees at collection and write, to the run's shared
directory, the root of the tree of every test in one. The controller then
schedules with a subclass of xdist's own scheduling whose units of work keep a
tree whole:

* ``--dist load`` (what ``-n`` uses by default): xdist's scope scheduling where
  a tree is one unit and every other test is a unit of its own, so it
  distributes like ``load`` otherwise;
* ``--dist loadscope`` and ``--dist loadfile``: a tree joins the unit (class or
  module, file) of its root, so a child in another class or module goes with it;
* ``--dist loadgroup``: tests with the same ``xdist_group`` are one unit, as in
  xdist, and a tree joins its root's group (or is a unit of its own). The workers
  record each test's group too: pytest-xdist 3.8 on pytest 9.2 no longer gets
  it to the controller (it renames ``item._nodeid``, which pytest 9.2 ignores),
  and its own ``loadgroup`` splits groups.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

UNITS_FILE = "xdist-units-{worker}.units"  # JSON; not *.json, which the controller reads as servers


def group_name(item: Any) -> str | None:
    """The ``xdist_group`` of ``item`` as pytest-xdist names it (several: joined by ``_``), or ``None``."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) if names else None


def write_units(shared_dir: str, worker: str, roots: dict[str, str], groups: dict[str, str]) -> None:
    """Record (atomically) this worker's trees (node id -> root) and ``xdist_group`` names (node id -> group)."""
    path = Path(shared_dir) / UNITS_FILE.format(worker=worker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"roots": roots, "groups": groups}))
    os.replace(tmp, path)


def read_units(shared_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    """Every worker's records, merged (they collect the same tests, so they agree): roots, groups."""
    roots: dict[str, str] = {}
    groups: dict[str, str] = {}
    for path in sorted(Path(shared_dir).glob(UNITS_FILE.format(worker="*"))):
        data = json.loads(path.read_text())
        roots.update(data["roots"])
        groups.update(data["groups"])
    return roots, groups


def _plain(nodeid: str) -> str:
    """``nodeid`` without the ``@group`` suffix pytest-xdist adds where it can."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") else nodeid


def make_scheduler(config: Any, log: Any, shared_dir: str, dist: str) -> Any:
    """xdist's scheduling for ``dist`` (load, loadscope, loadfile, loadgroup), each ``branch_from`` tree in one unit."""
    from xdist.scheduler import LoadFileScheduling, LoadGroupScheduling, LoadScopeScheduling

    base = {"loadfile": LoadFileScheduling, "loadgroup": LoadGroupScheduling}.get(dist, LoadScopeScheduling)

    class BranchScheduling(base):  # type: ignore[misc, valid-type]
        """xdist's own scheduling, except that each ``branch_from`` tree goes whole to one worker."""

        units: tuple[dict[str, str], dict[str, str]] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # workers wrote their files before reporting their collection
                self.units = read_units(shared_dir)
            roots, groups = self.units
            plain = _plain(nodeid)
            root = roots.get(plain)
            if dist == "loadgroup":  # a tree joins its root's group, if it has one
                key = root if root is not None else plain
                if key in groups:
                    return f"{groups[key]} (xdist_group)"
                return f"{root} (branch tree)" if root is not None else str(super()._split_scope(nodeid))
            if dist == "load":
                return f"{root} (branch tree)" if root is not None else nodeid
            return str(super()._split_scope(root if root is not None else nodeid))

    return BranchScheduling(config, log)
