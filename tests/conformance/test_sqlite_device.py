"""The adapter contract on the stdlib-sqlite device store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from starkeep_sync.device.sqlite import SqliteAppSource, SqliteDatabaseAdapter, SqliteDeviceStore

from .contract import NOTES, AppSourceContract, BatchApplierContract, DatabaseAdapterContract

pytestmark = pytest.mark.nodb


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteDeviceStore]:
    s = SqliteDeviceStore(tmp_path / "device.db", namespaces=[NOTES])
    yield s
    s.close()


class TestSqliteDatabase(DatabaseAdapterContract):
    @pytest.fixture
    def database(self, store: SqliteDeviceStore) -> SqliteDatabaseAdapter:
        return store.database


class TestSqliteAppSource(AppSourceContract, BatchApplierContract):
    @pytest.fixture
    def app_source(self, store: SqliteDeviceStore) -> SqliteAppSource:
        return store.app_source

    @pytest.fixture
    def other_app_source(self, tmp_path: Path) -> Iterator[SqliteAppSource]:
        other = SqliteDeviceStore(tmp_path / "other.db", namespaces=[NOTES])
        yield other.app_source
        other.close()
