"""The shared-record batch upsert: one fixed-shape statement through Django's cursor, whatever the batch size."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from starkeep_sync.adapters.orm import OrmDatabaseAdapter
from starkeep_sync.models import NodeCoverage, SharedRecord
from starkeep_sync.wire import record_from_wire

from .support import record

TABLE = SharedRecord._meta.db_table
COVERAGE = NodeCoverage._meta.db_table


def records(n: int, wall: int = 1) -> list[Any]:
    return [record_from_wire(record(f"r{i:04d}", wall + i, label=f"100% {i}"), "r") for i in range(n)]


@pytest.mark.django_db
def test_a_batch_upsert_is_one_statement_and_stores_the_same_rows_with_and_without_query_logging(alice: Any, bob: Any) -> None:
    batch = records(1200)
    assert OrmDatabaseAdapter(alice).merge(batch) == [True] * 1200
    with CaptureQueriesContext(connection) as logged:
        assert OrmDatabaseAdapter(bob).merge(batch) == [True] * 1200
    # One statement whatever the batch size (an array per column on PostgreSQL, one JSON array on SQLite).
    inserts = [q["sql"] for q in logged.captured_queries if f"INSERT INTO \"{TABLE}\"" in q["sql"]]
    assert len(inserts) == 1

    def stored(owner: Any) -> list[tuple[Any, ...]]:
        return list(SharedRecord.objects.filter(owner=owner).order_by("record_id").values_list(
            "record_id", "created_at", "updated_at", "deleted_at", "label", "node_id", "size_bytes"))

    assert stored(alice) == stored(bob)
    assert len(stored(alice)) == 1200 and stored(alice)[7][4] == "100% 7"
    # LWW: an older copy loses, a newer one wins.
    assert OrmDatabaseAdapter(alice).merge(records(2, wall=0)) == [False, False]
    assert OrmDatabaseAdapter(alice).merge(records(2, wall=50_000)) == [True, True]


@pytest.mark.nodb
def test_row_values_hold_each_stamp_serialized_and_refuse_what_serialize_hlc_refuses() -> None:
    from dataclasses import replace

    from starkeep_sync.adapters.orm import _record_values
    from starkeep_sync.hlc import HLCTimestamp, serialize_hlc

    fresh = records(1)[0]
    assert fresh.created_at == fresh.updated_at
    values = _record_values(fresh)
    assert values[3] == values[4] == serialize_hlc(fresh.updated_at)
    tombstone = replace(fresh, deleted_at=fresh.updated_at)
    assert _record_values(tombstone)[5] == serialize_hlc(fresh.updated_at)
    older = replace(fresh, created_at=HLCTimestamp(5, 1, "other"))
    assert _record_values(older)[3] == "000000000005:0001:other"
    # Equal as a tuple, but not an integer wall time: still refused, as serialize_hlc refuses it.
    floating = replace(fresh, created_at=HLCTimestamp(float(fresh.updated_at[0]), 0, fresh.updated_at[2]))
    with pytest.raises(ValueError):
        _record_values(floating)


class _RecordingRouter:
    """Sends everything to "default", remembering which models it was asked about for writes."""

    asked: list[str] = []

    def db_for_write(self, model: Any, **hints: Any) -> str:
        self.asked.append(model.__name__)
        return "default"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "default"


@pytest.mark.django_db
def test_the_orm_adapters_ask_the_database_routers_for_their_connection(settings: Any) -> None:
    from starkeep_sync.adapters.orm import OrmDatabaseAdapter
    from tests.factories import make_user

    settings.DATABASE_ROUTERS = [f"{__name__}._RecordingRouter"]
    _RecordingRouter.asked.clear()
    owner = make_user("routed")
    adapter = OrmDatabaseAdapter(owner)
    adapter.get_node_watermarks()
    assert "SharedRecord" in _RecordingRouter.asked
