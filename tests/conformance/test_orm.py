"""The adapter contract on the Django ORM adapters (on whichever database the run uses: SQLite or PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from starkeep_sync.adapters.orm import OrmAppSource, OrmDatabaseAdapter
from tests.factories import make_user, register_app

from .contract import NOTES, AppSourceContract, BatchApplierContract, DatabaseAdapterContract, hlc, interleaved, row

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(db: None) -> Any:
    # Another owner holding the same ids, nodes and rows, newer: nothing of it may show through.
    other = make_user("someone-else")
    OrmDatabaseAdapter(other).merge([replace(r, updated_at=hlc(1000, r.updated_at[2])) for r in interleaved()])
    register_app(NOTES.app_id, {t.name: list(t.pk_columns) for t in NOTES.tables})
    theirs = OrmAppSource(other).applier
    for i in range(6):
        theirs.apply(row(f"n{i}", hlc(1000 + i, "alpha")))
    return make_user("owner")


class TestOrmDatabase(DatabaseAdapterContract):
    @pytest.fixture
    def database(self, owner: Any) -> OrmDatabaseAdapter:
        return OrmDatabaseAdapter(owner)


class TestOrmAppSource(AppSourceContract, BatchApplierContract):
    @pytest.fixture
    def app_source(self, owner: Any) -> OrmAppSource:
        register_app(NOTES.app_id, {t.name: list(t.pk_columns) for t in NOTES.tables})
        return OrmAppSource(owner)

    @pytest.fixture
    def other_app_source(self, app_source: OrmAppSource) -> OrmAppSource:
        return OrmAppSource(make_user("batch-owner"))
