"""Keeping each ``branch_from`` tree on one pytest-xdist worker.

Workers resolve the trees at collection and write, to the run's shared
directory, which node ids belong to which tree. Under ``--dist load`` (what
``-n`` uses by default) the controller schedules with ``LoadBranchScheduling``:
xdist's scope scheduling where a tree is one unit of work and every other test
is a unit of its own, so it distributes like ``load`` otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GROUPS_FILE = "branch-groups-{worker}.json"


def write_groups(shared_dir: str, worker: str, groups: dict[str, str]) -> None:
    """Record (atomically) which node ids of this worker's collection form which tree."""
    path = Path(shared_dir) / GROUPS_FILE.format(worker=worker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, path)


def read_groups(shared_dir: str) -> dict[str, str]:
    """Every worker's recorded trees (they collect the same tests, so they agree)."""
    groups: dict[str, str] = {}
    for path in sorted(Path(shared_dir).glob(GROUPS_FILE.format(worker="*"))):
        groups.update(json.loads(path.read_text()))
    return groups


def make_scheduler(config: Any, log: Any, shared_dir: str) -> Any:
    """xdist's scope scheduling, with a ``branch_from`` tree as the only multi-test unit."""
    from xdist.scheduler import LoadScopeScheduling

    class LoadBranchScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """``--dist load``, except that each ``branch_from`` tree goes whole to one worker."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # workers wrote their files before reporting their collection
                self.groups = read_groups(shared_dir)
            return self.groups.get(nodeid, nodeid)

    return LoadBranchScheduling(config, log)
