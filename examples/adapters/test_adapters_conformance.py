"""The two example adapters checked by pytest-rollback's conformance suite."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from memory_adapter import MemoryAdapter
from sqlite_adapter import SqliteAdapter

from pytest_rollback import RollbackError
from pytest_rollback.testing import AdapterConformance, MappingStore


class TestMemoryAdapter(AdapterConformance):
    @pytest.fixture
    def data(self) -> dict[str, Any]:
        return {}  # a clean store: an empty dict

    @pytest.fixture
    def store(self, data: dict[str, Any]) -> MappingStore:
        return MappingStore(data)

    @pytest.fixture
    def adapter(self, data: dict[str, Any]) -> MemoryAdapter:
        return MemoryAdapter("flags", data)


class SqliteStore:
    """The suite's keys and values as rows of a table ``kv``; the state is the schema and every row."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        connection.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def write(self, key: str, value: str) -> None:
        self.connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def delete(self, key: str) -> None:
        self.connection.execute("DELETE FROM kv WHERE key = ?", (key,))

    def read_all(self) -> dict[Any, Any]:
        state: dict[Any, Any] = {}
        for name, sql in self.connection.execute("SELECT name, sql FROM sqlite_master"):
            state[("schema", name)] = sql  # a table or index of the adapter's own would show here
        for key, value in self.connection.execute("SELECT key, value FROM kv"):
            state[key] = value
        return state


class TestSqliteAdapter(AdapterConformance):
    @pytest.fixture
    def store(self) -> Iterator[SqliteStore]:
        connection = sqlite3.connect(":memory:", isolation_level=None)
        yield SqliteStore(connection)
        connection.close()

    @pytest.fixture
    def adapter(self, store: SqliteStore) -> SqliteAdapter:
        return SqliteAdapter("sqlite", store.connection)


def test_sqlite_code_that_commits_gets_a_clear_error() -> None:
    """Beyond the suite: the adapter's own failure mode, checked like any other behaviour."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    adapter = SqliteAdapter("sqlite", connection)
    token = adapter.checkpoint("test")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()  # ends the transaction, and every savepoint with it
    with pytest.raises(RollbackError, match="the savepoints are gone: the code under test ended the transaction"):
        adapter.rollback(token)
