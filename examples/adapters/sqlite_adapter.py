"""An adapter for a SQLite database: a checkpoint is a SAVEPOINT, a rollback is ROLLBACK TO it."""

from __future__ import annotations

import itertools
import sqlite3

from pytest_rollback import Observation, RollbackError


class SqliteAdapter:
    """Checkpoints the database behind one connection with nested savepoints.

    The code under test must write through ``connection``: a savepoint belongs to
    the connection that made it. The connection must be in autocommit mode
    (``isolation_level=None``) so that the ``sqlite3`` module opens and commits no
    transaction of its own, and the code under test must not end the transaction
    (``commit()``, ``COMMIT``, ``executescript()``): that would drop every savepoint.
    """

    def __init__(self, name: str, connection: sqlite3.Connection) -> None:
        if connection.isolation_level is not None:
            raise ValueError("SqliteAdapter needs a connection opened with isolation_level=None")
        self.name = name
        self.connection = connection
        self._numbers = itertools.count(1)
        self._live: list[str] = []  # the savepoints, oldest first

    def checkpoint(self, label: str | None) -> str:
        self._check()
        name = f"pytest_rollback_{next(self._numbers)}"
        # Outside a transaction, the first SAVEPOINT begins one; the next ones nest in it.
        self.connection.execute(f"SAVEPOINT {name}")
        self._live.append(name)
        return name

    def rollback(self, token: str) -> None:
        self._check(token)
        # ROLLBACK TO undoes everything since the savepoint and keeps it: the same
        # token works again. The savepoints made after it are gone.
        self.connection.execute(f"ROLLBACK TO {token}")
        del self._live[self._live.index(token) + 1 :]

    def release(self, token: str) -> None:
        # The plugin releases the newest checkpoint first; RELEASE keeps every write.
        # Releasing the outermost savepoint commits the transaction.
        if token in self._live and self.connection.in_transaction:
            self.connection.execute(f"RELEASE {token}")
        if token in self._live:
            del self._live[self._live.index(token) :]

    def observe(self) -> Observation:
        state = {}
        for kind, name, sql in self.connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ):
            state[(kind, name)] = sql
            if kind == "table":
                rows = self.connection.execute(f'SELECT * FROM "{name.replace(chr(34), chr(34) * 2)}"')
                state[("rows", name)] = sorted(rows, key=repr)
        return Observation(self.name, state)

    def close(self) -> None:
        # Called once, after the plugin rolled back to the first checkpoint:
        # end the transaction, keeping the data as it is.
        if self._live:
            self.release(self._live[0])

    def _check(self, token: str | None = None) -> None:
        if self._live and not self.connection.in_transaction:
            raise RollbackError(
                f"pytest-rollback: {self.name}: the savepoints are gone: the code under test ended the "
                "transaction (commit(), COMMIT, ROLLBACK or executescript()); it must leave transactions "
                "to its caller, or be rolled back another way (a copy of the database with backup())"
            )
        if token is not None and token not in self._live:
            raise RollbackError(f"pytest-rollback: {self.name}: checkpoint {token} was released or rolled past")
