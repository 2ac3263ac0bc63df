"""``adapters.sql``: batch statements run with their placeholders converted once, and still behave as Django's."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.backends.sqlite3.base import SQLiteCursorWrapper
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from starkeep_sync.adapters import sql
from starkeep_sync.adapters.orm import OrmDatabaseAdapter
from starkeep_sync.core.wire import record_from_wire
from starkeep_sync.models import NodeCoverage, SharedRecord

from .support import record

TABLE = SharedRecord._meta.db_table
COVERAGE = NodeCoverage._meta.db_table


def records(n: int, wall: int = 1) -> list[Any]:
    return [record_from_wire(record(f"r{i:04d}", wall + i, label=f"100% {i}"), "r") for i in range(n)]


@pytest.mark.nodb
def test_qmark_converts_placeholders_as_djangos_sqlite_cursor_does() -> None:
    for text in ("SELECT %s, %s", "SELECT '%%s' || %s", "SELECT 1 WHERE a LIKE '5%%'", "SELECT %s%%"):
        assert sql.qmark(text) == SQLiteCursorWrapper.convert_query(None, text)  # type: ignore[arg-type]
    assert sql.placeholders(2, 3) == "(%s, %s), (%s, %s), (%s, %s)"


@pytest.mark.django_db
def test_a_batch_upsert_stores_the_same_rows_with_and_without_query_logging(alice: Any, bob: Any) -> None:
    batch = records(1200)  # more than one statement of UPSERT_BATCH rows
    assert OrmDatabaseAdapter(alice).merge(batch) == [True] * 1200
    with CaptureQueriesContext(connection) as logged:
        assert OrmDatabaseAdapter(bob).merge(batch) == [True] * 1200
    # With logging on, each statement went through Django's cursor and was recorded
    # (SQLite: one per 500 rows; PostgreSQL: one array statement).
    statements = 1 if connection.vendor == "postgresql" else 3
    assert sum(f"INSERT INTO \"{TABLE}\"" in q["sql"] for q in logged.captured_queries) == statements

    def stored(owner: Any) -> list[tuple[Any, ...]]:
        return list(SharedRecord.objects.filter(owner=owner).order_by("record_id").values_list(
            "record_id", "created_at", "updated_at", "deleted_at", "label", "node_id", "size_bytes"))

    assert stored(alice) == stored(bob)
    assert len(stored(alice)) == 1200 and stored(alice)[7][4] == "100% 7"
    # LWW through the unlogged statement: an older copy loses, a newer one wins.
    assert OrmDatabaseAdapter(alice).merge(records(2, wall=0)) == [False, False]
    assert OrmDatabaseAdapter(alice).merge(records(2, wall=50_000)) == [True, True]


@pytest.mark.django_db
def test_unlogged_statements_skip_djangos_per_call_rewrite_on_sqlite(alice: Any, monkeypatch: Any) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the placeholder rewrite is SQLite's; other backends go through Django's cursor as they are")
    calls: list[str] = []
    original = SQLiteCursorWrapper.convert_query

    def counting(self: Any, query: str, **kwargs: Any) -> str:
        calls.append(query)
        return original(self, query, **kwargs)

    monkeypatch.setattr(SQLiteCursorWrapper, "convert_query", counting)
    OrmDatabaseAdapter(alice).merge(records(600))
    assert not [q for q in calls if TABLE in q and q.startswith("INSERT")]
    with CaptureQueriesContext(connection):
        OrmDatabaseAdapter(alice).merge(records(3, wall=90_000))
    assert [q for q in calls if TABLE in q and q.startswith("INSERT")]  # logged: Django's own path


@pytest.mark.django_db(transaction=True)
def test_errors_are_djangos_and_a_broken_transaction_is_refused(alice: Any) -> None:
    insert = f"INSERT INTO \"{COVERAGE}\" (owner_id, scope, node_id, hlc) VALUES (%s, %s, %s, %s)"
    row = [alice.pk, "records", "dup", "0"]
    with connection.cursor() as cur:
        sql.execute(cur, insert, row)
        with pytest.raises(IntegrityError), transaction.atomic():
            sql.execute(cur, insert, row)
        with transaction.atomic():
            with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
                sql.execute(cur, insert, row)
            # Django marks the transaction broken; the next statement is refused, not run.
            with pytest.raises(TransactionManagementError):
                sql.execute(cur, insert, [alice.pk, "records", "other", "0"])
    assert list(NodeCoverage.objects.values_list("node_id", flat=True)) == ["dup"]


@pytest.mark.nodb
def test_row_values_hold_each_stamp_serialized_and_refuse_what_serialize_hlc_refuses() -> None:
    from msgspec.structs import replace

    from starkeep_sync.adapters.orm import _record_values
    from starkeep_sync.core.hlc import HLCTimestamp, serialize_hlc

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


@pytest.mark.django_db
def test_a_cursor_some_tool_wrapped_is_used_through_its_own_execute(alice: Any) -> None:
    class ToolCursor:
        """Like a profiling tool's wrapper: holds Django's cursor as ``cursor``."""

        def __init__(self, inner: Any) -> None:
            self.cursor, self.db, self.seen = inner, inner.db, []

        def execute(self, sql_text: str, params: Any) -> Any:
            self.seen.append(sql_text)
            return self.cursor.execute(sql_text, params)

    insert = f"INSERT INTO \"{COVERAGE}\" (owner_id, scope, node_id, hlc) VALUES (%s, %s, %s, %s)"
    with connection.cursor() as inner:
        tool = ToolCursor(inner)
        sql.execute(tool, insert, [alice.pk, "records", "n", "0"])
    assert tool.seen == [insert]
    assert NodeCoverage.objects.filter(owner=alice, node_id="n").exists()


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
