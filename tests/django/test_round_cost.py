"""What a round costs the database: a converged round is a handful of statements and no transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from starkeep_sync import HLCClock, create_data_record
from starkeep_sync.adapters.orm import OrmAppSource, OrmDatabaseAdapter
from starkeep_sync.core.channel import ChannelView
from starkeep_sync.core.constants import FILE_RECORDS_TABLE
from starkeep_sync.core.records import AppSyncableRowEntry
from starkeep_sync.core.wire import entry_to_wire, record_to_wire

from .support import BASE_MS, bearer, body, entry, exchange, exchange_ok, record

# Outside a test transaction, as under a real server (no ATOMIC_REQUESTS).
pytestmark = pytest.mark.django_db(transaction=True)


def _round(api: APIClient, url: str, token: str, request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        data = exchange_ok(exchange(api, url, request, bearer(token)))
    return data, [q["sql"] for q in ctx.captured_queries]


@pytest.mark.parametrize("channel", ["drive", "notes"])
def test_a_converged_round_reads_coverage_once_and_opens_no_snapshot(
    api: APIClient, alice_token: str, notes_app: Any, channel: str
) -> None:
    url = "/sync/exchange" if channel == "drive" else "/apps/notes/sync/exchange"
    if channel == "drive":
        seed = body(records=[record(f"r{i}", BASE_MS + i) for i in range(50)])
    else:
        seed = body(rows=[entry("notes", "notes", f"n{i}", BASE_MS + i) for i in range(50)])
    exchange_ok(exchange(api, url, seed, bearer(alice_token)))
    exchange_ok(exchange(api, url, body(), bearer(alice_token)))  # creates the activity row

    # Behind: the answer reads rows, inside a read-only snapshot on PostgreSQL.
    data, behind = _round(api, url, alice_token, body())
    assert len(data["records"]) + len(data["appSyncableRows"]) == 50
    if connection.vendor == "postgresql":
        assert any("REPEATABLE READ" in q for q in behind)

    # Converged: the requester's vector is the responder's.
    data, queries = _round(api, url, alice_token, body(watermarks=data["responderWatermarks"]))
    assert data["records"] == [] and data["appSyncableRows"] == [] and data["hasMore"] is False
    coverage_reads = [q for q in queries if "starkeep_sync_nodecoverage" in q]
    assert len(coverage_reads) == 1, queries
    assert not any("REPEATABLE READ" in q for q in queries), queries
    # The token, the coverage, the activity counter; on a per-app channel also the app and its tables.
    assert len(queries) <= (3 if channel == "drive" else 5), "\n".join(q[:200] for q in queries)


def test_echoes_are_left_out_while_reading_and_has_more_stays_exact(api: APIClient, alice_token: str) -> None:
    theirs = [record(f"b{i}", BASE_MS + 1000 + i, "nodeB") for i in range(15)]
    exchange_ok(exchange(api, "/sync/exchange", body(records=theirs), bearer(alice_token)))
    # nodeA pushes 100 records, all older than nodeB's, asking for pages of 10.
    mine = [record(f"a{i}", BASE_MS + i, "nodeA") for i in range(100)]
    with CaptureQueriesContext(connection) as ctx:
        data = exchange_ok(exchange(api, "/sync/exchange", body(records=mine, limit=10), bearer(alice_token)))
    assert [r["id"] for r in data["records"]] == [f"b{i}" for i in range(10)]
    assert data["hasMore"] is True
    # nodeA's rows above the vector are all echoes, and its page is never read: two columns of them (at
    # most one more row than there are echoes) show it. nodeB's page is read straight into wire form: the
    # page and one more to learn hasMore. Room for echoes is made per node, and none of the echoes is nodeB's.
    reads = [q["sql"] for q in ctx.captured_queries if "starkeep_sync_sharedrecord" in q["sql"]
             and "ORDER BY" in q["sql"]]
    assert len(reads) == 2, [q[-160:] for q in reads]
    span, page = sorted(reads, key=lambda q: "'nodeB'" in q)
    assert "'nodeA'" in span and span.endswith("LIMIT 101") and span.count(" AS ") == 2
    assert "'nodeB'" in page and page.endswith("LIMIT 11")
    rest = exchange_ok(exchange(api, "/sync/exchange",
                                body(watermarks={"nodeA": mine[-1]["updatedAt"], "nodeB": theirs[9]["updatedAt"]}),
                                bearer(alice_token)))
    assert [r["id"] for r in rest["records"]] == [f"b{i}" for i in range(10, 15)] and rest["hasMore"] is False


def test_records_read_into_wire_form_equal_the_built_ones(alice: Any) -> None:
    clock = HLCClock("nodeA")
    plain = create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash="0" * 64,
                               object_storage_key="", size_bytes=0)
    full = create_data_record(clock, type="image/png", origin_app_id="photos", content_hash="a" * 64,
                              object_storage_key="shared/image/aa/" + "a" * 64, size_bytes=2**40, mime_type="image/png",
                              original_filename="ü.png", parent_id=plain.id, label="x" * 4096)
    db = OrmDatabaseAdapter(alice)
    db.merge([plain, full])
    db.delete(plain.id, clock.now())
    page = db.query_since({}, 10)
    wire, more = db.query_wire_since({}, 10)
    assert not more and len(page.records) == 2
    assert wire == [record_to_wire(r) for r in page.records]
    assert wire[0]["deletedAt"] is None and wire[1]["deletedAt"] is not None  # the tombstone is the later write
    assert db.query_wire_since({}, 1) == (wire[:1], True)
    assert db.query_wire_since({}, 10, exclude=[(full.id, full.updated_at)]) == (wire[1:], False)


def test_a_row_among_the_echoes_that_the_requester_lacks_is_still_sent(api: APIClient, alice_token: str) -> None:
    # A relay brought nodeA's a50 here first; nodeA now pushes a0..a99 without a50 (it lost it, say).
    relayed = record("a50", BASE_MS + 50, "nodeA")
    exchange_ok(exchange(api, "/sync/exchange", body(records=[relayed]), bearer(alice_token)))
    mine = [record(f"a{i}", BASE_MS + i, "nodeA") for i in range(100) if i != 50]
    data = exchange_ok(exchange(api, "/sync/exchange", body(records=mine, limit=10), bearer(alice_token)))
    assert [r["id"] for r in data["records"]] == ["a50"] and data["hasMore"] is False
    # A newer a7 arrives from elsewhere; the device pushes all hundred again. Every row up to its highest
    # push is an echo (a7's old version lost, so that row is above them now): only a7 comes back.
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record("a7", BASE_MS + 500, "nodeA")]),
                         bearer(alice_token)))
    every = [record(f"a{i}", BASE_MS + i, "nodeA") for i in range(100)]
    again = exchange_ok(exchange(api, "/sync/exchange", body(records=every, limit=10), bearer(alice_token)))
    assert [(r["id"], r["updatedAt"]["wallTime"]) for r in again["records"]] == [("a7", BASE_MS + 500)]
    assert again["hasMore"] is False


def test_app_rows_read_into_wire_form_equal_the_built_ones(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    clock = HLCClock("nodeA")
    applier = source.applier
    for i in range(3):
        applier.apply(AppSyncableRowEntry(clock.now(), "notes", "notes", "insert",
                                          {"id": f"n{i}", "body": f"ü {i}", "tags": ["a", {"b": None}]}, None))
        applier.apply(AppSyncableRowEntry(clock.now(), "notes", FILE_RECORDS_TABLE, "insert",
                                          {"id": f"f{i}", "content_hash": "0" * 64, "object_storage_key": "",
                                           "size_bytes": i, "mime_type": "text/plain", "extra": {"x": i}}, None))
    applier.apply(AppSyncableRowEntry(clock.now(), "notes", "notes", "delete", None, {"id": "n1"}))
    for table in ("notes", FILE_RECORDS_TABLE):
        built = [entry_to_wire(e) for e in applier.scan_since("notes", table, {}, 10).rows]
        wire, more = applier.scan_wire_since("notes", table, {}, 10)
        assert [w for _, w in wire] == built and not more and len(built) == 3
        assert [stamp for stamp, _ in wire] == sorted(stamp for stamp, _ in wire)

    # The channel merges the tables' streams in HLC order, as changes_since does.
    channel = ChannelView(database=None, app_source=source, sync_shared_records=False, app_id="notes")
    items, more = channel.changes_since({}, 4)
    encoded = channel.wire_changes_since({}, 4)
    assert encoded == ([entry_to_wire(i.entry) for i in items if i.entry is not None], more) and more
    everything = channel.wire_changes_since({}, 6)
    assert everything is not None and len(everything[0]) == 6 and everything[1] is False
    # An echo is left out and hasMore stays exact.
    first = items[0]
    assert channel.wire_changes_since({}, 5, exclude=[(first.identity, first.hlc)]) == (everything[0][1:], False)


def test_app_rows_encoded_by_the_database_equal_the_wire_form(alice: Any, notes_app: Any) -> None:
    import msgspec

    source = OrmAppSource(alice)
    clock = HLCClock("nodeA")
    applier = source.applier
    for i in range(3):
        applier.apply(AppSyncableRowEntry(clock.now(), "notes", "notes", "insert",
                                          {"id": f"n{i}", "body": f"ü \"{i}\"\\ \x01", "n": [1.5, 10**20, None]},
                                          None))
        applier.apply(AppSyncableRowEntry(clock.now(), "notes", FILE_RECORDS_TABLE, "insert",
                                          {"id": f"f{i}", "content_hash": "0" * 64, "object_storage_key": "",
                                           "size_bytes": 2**40 + i, "mime_type": None, "extra": {"x": i}}, None))
    applier.apply(AppSyncableRowEntry(clock.now(), "notes", "notes", "delete", None, {"id": "n1"}))
    applier.apply(AppSyncableRowEntry(clock.now(), "notes", FILE_RECORDS_TABLE, "delete", None, {"id": "f0"}))
    channel = ChannelView(database=None, app_source=source, sync_shared_records=False, app_id="notes")
    for table in ("notes", FILE_RECORDS_TABLE):
        encoded = applier.scan_json_since("notes", table, {}, 10)
        if connection.vendor not in ("postgresql", "sqlite"):
            assert encoded is None and channel.json_changes_since({}, 4) is None
            return
        wire, more = applier.scan_wire_since("notes", table, {}, 10)
        assert encoded is not None and encoded[1] is more is False
        assert [(stamp, msgspec.json.decode(raw)) for stamp, raw in encoded[0]] == wire
    everything = channel.wire_changes_since({}, 8)
    for limit in (4, 8):
        raw = channel.json_changes_since({}, limit)
        assert raw is not None and everything is not None
        assert ([msgspec.json.decode(r) for r in raw[0]], raw[1]) == (everything[0][:limit], limit < 8)


def _wire_records(ids_walls: list[tuple[str, int]], node: str = "nodeA") -> list[Any]:
    from starkeep_sync.core.wire import record_from_wire

    return [record_from_wire(record(rid, BASE_MS + wall, node), rid) for rid, wall in ids_walls]


def test_a_write_by_anyone_else_after_the_merge_makes_the_answer_read_the_echo_span(alice: Any) -> None:
    from django.db import transaction

    mine = _wire_records([(f"a{i}", i) for i in range(0, 40, 2)])
    with transaction.atomic():
        responder_db = OrmDatabaseAdapter(alice)
        responder_db.merge(mine)
        # Another writer on this connection stores a nodeA row among the echoes before the answer.
        OrmDatabaseAdapter(alice).merge(_wire_records([("relayed", 11)]))
        with responder_db.read_snapshot():
            wire, more = responder_db.query_wire_since({}, 10, exclude=[(r.id, r.updated_at) for r in mine])
    assert [w["id"] for w in wire] == ["relayed"] and more is False


def test_the_next_request_of_the_same_adapter_gets_what_an_earlier_one_stored(alice: Any) -> None:
    from django.db import transaction

    db = OrmDatabaseAdapter(alice)
    first = _wire_records([("a1", 1), ("a2", 2)])
    with transaction.atomic():
        db.merge(first)
        with db.read_snapshot():
            assert db.query_wire_since({}, 10, exclude=[(r.id, r.updated_at) for r in first]) == ([], False)
        # The next request of the same adapter: a1 and a2 are not its echoes.
        later = _wire_records([("a3", 3)])
        db.merge(later)
        with db.read_snapshot():
            wire, _ = db.query_wire_since({}, 10, exclude=[(r.id, r.updated_at) for r in later])
    assert [w["id"] for w in wire] == ["a1", "a2"]
