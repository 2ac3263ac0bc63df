"""The adapter contract on the in-memory adapters."""

from __future__ import annotations

import pytest

from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter

from .contract import NOTES, AppSourceContract, BatchApplierContract, DatabaseAdapterContract

pytestmark = pytest.mark.nodb


class TestMemoryDatabase(DatabaseAdapterContract):
    @pytest.fixture
    def database(self) -> MemoryDatabaseAdapter:
        return MemoryDatabaseAdapter()


class TestMemoryAppSource(AppSourceContract, BatchApplierContract):
    @pytest.fixture
    def app_source(self) -> MemoryAppSource:
        return MemoryAppSource([NOTES])

    @pytest.fixture
    def other_app_source(self) -> MemoryAppSource:
        return MemoryAppSource([NOTES])
